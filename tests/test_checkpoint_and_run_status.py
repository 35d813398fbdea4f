"""Checkpoints that cannot run code and are checked before a resume, and a run status that tells the truth.

Driven in-process (real ClientApp, real Flower serialization, the real runner) on 8x8 digits.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from fedprune.client.app import app as client_app
from fedprune.server.checkpoint import CHECKPOINT_NAME, CheckpointError
from fedprune.server.results import RESULTS_NAME, format_progress
from fedprune.server.runner import RunFailedError, run_federation

from tests.inprocess_grid import InProcessGrid


def _run(settings, **grid_kwargs):
    grid = InProcessGrid(client_app, settings.num_clients, settings.to_run_config(), **grid_kwargs)
    return run_federation(grid, settings, progress=lambda line: None)


def _results(settings) -> dict:
    return json.loads((Path(settings.out) / RESULTS_NAME).read_text())


@pytest.fixture
def two_rounds(digits_settings):
    """A finished 2-round run whose checkpoint a test tampers with, and the settings to resume it to 3."""
    _run(digits_settings)
    return dataclasses.replace(digits_settings, rounds=3, resume=True)


def _rewrite(settings, edit) -> None:
    path = Path(settings.out) / CHECKPOINT_NAME
    payload = torch.load(path, weights_only=True)
    edit(payload)
    torch.save(payload, path)


class _Planted:
    """Unpickling this runs a command: what a hostile checkpoint would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _assert_refused(settings, needle: str) -> None:
    before = _results(settings)["rounds"]
    with pytest.raises(CheckpointError, match=needle):
        _run(settings)
    after = _results(settings)
    assert after["status"] == "failed" and after["error"].startswith("--resume: ")
    assert after["rounds"] == before  # nothing recorded is lost


def test_pickled_checkpoint_is_refused_without_running_anything(two_rounds, tmp_path):
    marker = tmp_path / "pwned"
    path = Path(two_rounds.out) / CHECKPOINT_NAME
    payload = torch.load(path, weights_only=True)
    payload["strategy_state"]["planted"] = _Planted(marker)
    with open(path, "wb") as handle:
        pickle.dump(payload, handle)  # torch.load reads a plain pickle too: the attack the issue describes
    _assert_refused(two_rounds, "not a readable fedprune checkpoint")
    assert not marker.exists()
    torch.save({"x": _Planted(marker)}, path)  # the same inside torch's zip format
    _assert_refused(two_rounds, "not a readable fedprune checkpoint")
    assert not marker.exists()


@pytest.mark.parametrize("cut", [0, 100, -100])
def test_truncated_checkpoint_is_one_clear_error(two_rounds, cut):
    path = Path(two_rounds.out) / CHECKPOINT_NAME
    data = path.read_bytes()
    path.write_bytes(data[:cut] if cut >= 0 else data[:cut])
    _assert_refused(two_rounds, "not a readable fedprune checkpoint")


def test_checkpoint_contents_are_checked(two_rounds):
    cases = {
        "holds NaN or Inf": lambda p: p["arrays"][next(iter(p["arrays"]))].fill_(float("nan")),
        "is torch.float32\\(3,\\)": lambda p: p["arrays"].__setitem__(next(iter(p["arrays"])), torch.zeros(3)),
        "more than --rounds 3": lambda p: p.__setitem__("round", 99),
        "not rounds 1..1": lambda p: p.__setitem__("round", 1),
        "different settings": lambda p: p["fingerprint"].__setitem__("lr", 0.5),
        "strategy state 'rejected' is malformed": lambda p: p["strategy_state"].__setitem__("rejected", {"1": [5]}),
    }
    path = Path(two_rounds.out) / CHECKPOINT_NAME
    good = path.read_bytes()
    for needle, edit in cases.items():
        path.write_bytes(good)
        _rewrite(two_rounds, edit)
        _assert_refused(two_rounds, needle)


def test_resume_with_fewer_rounds_than_done_is_refused(two_rounds):
    _assert_refused(dataclasses.replace(two_rounds, rounds=1), "holds 2 rounds, more than --rounds 1")


def test_hidenseek_state_is_checked_on_resume(digits_settings):
    settings = dataclasses.replace(digits_settings, strategy="hidenseek", density=0.3)
    _run(settings)
    resumed = dataclasses.replace(settings, rounds=3, resume=True)
    _rewrite(resumed, lambda p: p["strategy_state"]["sigma"][next(iter(p["strategy_state"]["sigma"]))]
             ["__numpy__"].fill_(0))
    _assert_refused(resumed, "values other than -1/\\+1")


def test_a_good_checkpoint_still_resumes_exactly(digits_settings, tmp_path):
    from tests.inprocess_grid import full_and_resumed

    settings = dataclasses.replace(digits_settings, strategy="hidenseek", density=0.3, rounds=3)
    full, resumed = full_and_resumed(settings, 2, tmp_path)
    assert [r["accuracy"] for r in full["rounds"]] == [r["accuracy"] for r in resumed["rounds"]]
    assert resumed["status"] == "completed"


def test_a_run_whose_clients_all_fail_stops_as_failed_with_the_reason(digits_settings):
    settings = dataclasses.replace(digits_settings, rounds=6, max_failed_rounds=3)
    with pytest.raises(RunFailedError, match="rounds 1-3 had too few valid replies.*injected failure"):
        _run(settings, fail_nodes=lambda node, message: True)
    document = _results(settings)
    assert document["status"] == "failed" and "injected failure" in document["error"]
    assert len(document["rounds"]) == 3
    for entry in document["rounds"]:
        assert entry["failed"] and not entry["aggregated"]
        assert len(entry["failure_reasons"]) == settings.clients_per_round
        assert all("injected failure" in r["reason"] for r in entry["failure_reasons"])
    assert "ROUND FAILED" in format_progress(document["rounds"][0], settings.rounds)


def test_failed_rounds_below_the_limit_do_not_stop_the_run(digits_settings):
    """Rounds 1 and 2 fail (every node), round 3 works: the run completes, its failed rounds say why."""
    settings = dataclasses.replace(digits_settings, rounds=3, max_failed_rounds=3)
    doc = _run(settings, fail_nodes=lambda node, message: message.metadata.message_type == "train" and
               int(message.content.config_records["config"]["server-round"]) < 3)
    assert doc["status"] == "completed"
    assert [r["failed"] for r in doc["rounds"]] == [True, True, False]
    assert doc["rounds"][2]["server_peak_rss_bytes"] > 0


def test_nodes_that_never_answer_are_failure_reasons(digits_settings):
    class SilentGrid(InProcessGrid):
        def push_messages(self, messages):
            messages = list(messages)
            if messages and messages[0].metadata.message_type == "train":
                return [f"never-answered-{i}" for i in range(len(messages))]
            return super().push_messages(messages)

    settings = dataclasses.replace(digits_settings, rounds=2, max_failed_rounds=2, round_timeout=0.5)
    grid = SilentGrid(client_app, settings.num_clients, settings.to_run_config())
    with pytest.raises(RunFailedError, match="no reply within the round timeout"):
        run_federation(grid, settings, progress=lambda line: None)


def test_strategy_state_arrays_survive_the_safe_format(two_rounds):
    payload = torch.load(Path(two_rounds.out) / CHECKPOINT_NAME, weights_only=True)
    assert isinstance(payload["strategy_state"], dict)
    from fedprune.server.checkpoint import _restored, _storable

    state = {"a": np.arange(4, dtype=np.int8), "b": [np.float64(1.5), (1, "x")], "c": {"d": np.ones(2, bool)}}
    back = _restored(_storable(state))
    assert back["a"].dtype == np.int8 and np.array_equal(back["a"], state["a"])
    assert back["b"] == [1.5, (1, "x")] and back["c"]["d"].dtype == np.bool_


def test_error_reasons_are_one_line_from_ray_tracebacks():
    from fedprune.protos.flower_records import error_reason
    from flwr.app import Error, Message, RecordDict

    ray_style = ("<class 'ray.exceptions.RayTaskError(ClientAppException)'>:<'\x1b[36mray::ClientAppActor.run()"
                 "\x1b[39m (pid=9914, ip=192.0.2.2)\n  File \"x.py\", line 37, in train\n"
                 "    raise RuntimeError(\"no\")\n"
                 "RuntimeError: hostile client: refusing to train\n\nflwr.clientapp.client_app.ClientAppException: \n"
                 "Exception ClientAppException occurred. Message: hostile client: refusing to train'>")
    plain = "Traceback (most recent call last):\n  File \"a.py\"\nValueError: payload is relative to a mask\n"
    request = Message(RecordDict(), dst_node_id=1, message_type="train")
    assert error_reason(Message(Error(code=0, reason=ray_style), reply_to=request)) == \
        "hostile client: refusing to train"
    assert error_reason(Message(Error(code=0, reason=plain), reply_to=request)) == \
        "ValueError: payload is relative to a mask"
    assert error_reason(Message(Error(code=7, reason=""), reply_to=request)) == "error code 7"
