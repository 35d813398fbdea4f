"""Full rounds through the real strategy, runner and ClientApp, on an in-process Grid."""

import json
from pathlib import Path

import numpy as np
import pytest
from fedprune.client.app import app as client_app
from fedprune.protos.wire_size import content_bytes
from fedprune.server.checkpoint import CheckpointError, read_checkpoint
from fedprune.server.results import validate_results
from fedprune.server.runner import run_federation

from tests.inprocess_grid import InProcessGrid


def _run(settings, **grid_kwargs):
    grid = InProcessGrid(client_app, settings.num_clients, settings.to_run_config(), **grid_kwargs)
    return run_federation(grid, settings, progress=lambda line: None), grid


def test_one_round_trains_aggregates_and_measures_bytes(digits_settings):
    import dataclasses

    settings = dataclasses.replace(digits_settings, rounds=1)
    sent = []
    doc, _ = _run(settings, fail_nodes=lambda node, m: sent.append(content_bytes(m)) or False)
    validate_results(doc)
    (entry,) = doc["rounds"]
    assert entry["clients_sampled"] == 4 and entry["clients_failed"] == 0
    # Downlink as measured equals the serialized size of what the grid delivered (10 queries + 4 trains).
    assert entry["downlink_bytes"] == sum(sent[10:])
    per_client = {c["downlink_bytes"] for c in entry["clients"]}
    assert len(per_client) == 1 and per_client.pop() > 4 * doc["summary"]["param_count"]
    assert entry["uplink_bytes"] == sum(c["uplink_bytes"] for c in entry["clients"])
    on_disk = json.loads((settings.out and __import__("pathlib").Path(settings.out) / "results.json").read_text())
    assert on_disk["status"] == "completed" and on_disk["rounds"][0]["accuracy"] == entry["accuracy"]


def test_training_improves_on_digits(digits_settings):
    import dataclasses

    doc, _ = _run(dataclasses.replace(digits_settings, rounds=6, clients_per_round=5))
    accs = [r["accuracy"] for r in doc["rounds"]]
    assert accs[-1] > 0.5 and accs[-1] > accs[0]


def test_a_client_that_raises_is_counted_failed_and_run_completes(digits_settings):
    victims = set()

    def fail(node, message):
        if message.metadata.message_type == "train" and not victims:
            victims.add(node)
        return node in victims and message.metadata.message_type == "train"

    doc, _ = _run(digits_settings, fail_nodes=fail)
    assert doc["status"] == "completed"
    assert doc["rounds"][0]["clients_failed"] == 1
    failed = [c for c in doc["rounds"][0]["clients"] if c["failed"]]
    assert [c["node_id"] for c in failed] == list(victims)
    assert any("injected failure" in r["reason"] for r in doc["rounds"][0]["rejected_replies"])
    assert all(r["aggregated"] for r in doc["rounds"])


def test_resume_after_round_2_equals_uninterrupted_4_rounds(digits_settings, tmp_path):
    import dataclasses

    full = dataclasses.replace(digits_settings, rounds=4, out=str(tmp_path / "full"))
    doc_full, _ = _run(full)
    part = dataclasses.replace(full, rounds=2, out=str(tmp_path / "part"))
    _run(part)
    doc_resumed, _ = _run(dataclasses.replace(part, rounds=4, resume=True))
    keys = ("accuracy", "loss", "uplink_bytes", "downlink_bytes", "clients_sampled")
    for a, b in zip(doc_full["rounds"], doc_resumed["rounds"], strict=True):
        assert {k: a[k] for k in keys} == {k: b[k] for k in keys}
    ck_full = read_checkpoint(Path(tmp_path / "full" / "checkpoint.pt"))
    ck_res = read_checkpoint(Path(tmp_path / "part" / "checkpoint.pt"))
    assert ck_res["round"] == 4
    assert all(np.array_equal(ck_full["arrays"][k].numpy(), ck_res["arrays"][k].numpy()) for k in ck_full["arrays"])


def test_resume_refuses_a_checkpoint_from_other_settings(digits_settings):
    import dataclasses

    _run(digits_settings)
    with pytest.raises(CheckpointError, match="lr"):
        _run(dataclasses.replace(digits_settings, lr=0.1, rounds=3, resume=True))
