"""Hostile clients against the real server: a private SuperLink, Ray actors, `flwr run` of a wrapped ClientApp.

* One client's ~40-byte reply that declares 256 MiB of signs costs the server no memory: the round's
  peak is within 10% of the same round without it, and the reply is dropped with the node and reason.
* A run whose clients all fail stops as failed, with a non-zero exit code and the clients' reason.
"""

from __future__ import annotations

import functools
import json

import pytest
from fedprune.server.run_config import RunSettings
from fedprune.simulation.launcher import SimulationError, run_simulation

from fedprune import cli
from fedprune.cli import main
from tests.hostile_app import write_hostile_app

pytestmark = pytest.mark.slow


def _settings(out, mode: str) -> RunSettings:
    # Every node sampled every round, so partition 0 (the hostile one) answers in round 1.
    return RunSettings(strategy="static-magnitude", density=0.2, dataset="digits", model="digits-cnn",
                       partition="iid", num_clients=3, clients_per_round=3, rounds=1, out=str(out),
                       extra=(("hostile_mode", mode),))


def test_an_inflating_reply_costs_the_server_no_memory(tmp_path):
    app = write_hostile_app(tmp_path / "app")
    clean = run_simulation(_settings(tmp_path / "clean", "off"), app_dir=app, progress=lambda line: None)
    bomb = run_simulation(_settings(tmp_path / "bomb", "bomb"), app_dir=app, progress=lambda line: None)
    assert clean["status"] == bomb["status"] == "completed"
    (clean_round,), (bomb_round,) = clean["rounds"], bomb["rounds"]
    assert clean_round["rejected_replies"] == []
    (dropped,) = bomb_round["rejected_replies"]
    assert "tensor 'w': was not asked for" in dropped["reason"]
    assert bomb_round["aggregated"] and not bomb_round["failed"]  # the two honest replies still count
    peak_clean, peak_bomb = clean_round["server_peak_rss_bytes"], bomb_round["server_peak_rss_bytes"]
    print(f"server peak: clean {peak_clean / 2**20:.0f} MiB, with the inflating reply {peak_bomb / 2**20:.0f} MiB")
    assert peak_bomb <= 1.10 * peak_clean


def test_a_run_whose_clients_all_fail_exits_non_zero_with_the_reason(tmp_path, monkeypatch, capsys):
    app = write_hostile_app(tmp_path / "app", mode="raise")
    monkeypatch.setattr(cli, "run_simulation", functools.partial(run_simulation, app_dir=app))
    out = tmp_path / "run"
    code = main(["simulate", "--dataset", "digits", "--partition", "iid", "--num-clients", "3",
                 "--clients-per-round", "2", "--rounds", "5", "--max-failed-rounds", "2", "--out", str(out)])
    err = capsys.readouterr().err
    assert code != 0
    assert "rounds 1-2 had too few valid replies" in err and "refusing to train" in err
    document = json.loads((out / "results.json").read_text())
    assert document["status"] == "failed" and "refusing to train" in document["error"]
    assert [r["failed"] for r in document["rounds"]] == [True, True]


def test_a_server_app_that_fails_before_writing_results_says_why(tmp_path):
    """No results.json error to show: the launcher reads the run's own log and names the exception."""
    app = write_hostile_app(tmp_path / "app", broken_server=True)
    with pytest.raises(SimulationError, match="broken ServerApp for a test"):
        run_simulation(_settings(tmp_path / "run", "off"), app_dir=app, progress=lambda line: None)
