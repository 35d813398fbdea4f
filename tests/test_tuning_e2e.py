"""``fedprune tune`` for real: each trial a ``fedprune simulate`` process (private SuperLink, Ray, measured
bytes) on digits, 2 rounds. One study is interrupted with SIGTERM in the middle of a run and rerun: finished
trials are kept, the interrupted one is retried once, infeasible ones never start a SuperLink, and ``report``
and ``best`` work on the result."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from fedprune.tuning.study_storage import make_storage
from optuna.trial import TrialState

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent
SPACE = ROOT / "tests" / "tune_digits.toml"


def tune(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedprune.cli", "tune", *args]


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def orphaned_superlinks() -> set[int]:
    """SuperLink processes whose owner is gone (re-parented to init): what an interrupted run must not leave.
    Other runs on the machine (their SuperLinks have live parents) do not count."""
    found = subprocess.run(["pgrep", "-f", "flower-superlink"], capture_output=True, text=True).stdout.split()
    orphans = set()
    for pid in map(int, found):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == 1:
            orphans.add(pid)
    return orphans


def test_study_interrupted_and_rerun_completes_with_report_and_best(tmp_path):
    out = tmp_path / "study"
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1"}
    # Grid order: 0 fedavg (dense digits CNN, 2.3 MB: infeasible), 1 static-magnitude 0.1 (runs),
    # 2 static-magnitude 0.3 (dense-masked kernels, 2.1 MB: infeasible), 3 hidenseek 0.1 (interrupted), ...
    command = tune("run", "--study", "e2e", "--space", str(SPACE), "--trials", "4", "--sampler", "grid", "--out",
                   str(out), "--constraint", "memory_mb<=1")
    before = orphaned_superlinks()
    first = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log = out / "trials" / "0003" / "seed-0" / "run.log"
    wait_for(lambda: log.is_file() and "fedprune: hidenseek" in log.read_text(), 300, "trial 3's run to start")
    time.sleep(3)  # inside the run (its SuperLink, Ray and 2 rounds take ~20 s on 2 cores)
    first.send_signal(signal.SIGTERM)
    output, _ = first.communicate(timeout=120)
    assert first.returncode != 0, output
    time.sleep(5)
    assert orphaned_superlinks() <= before, "the interrupted run left its SuperLink behind"
    study = optuna.load_study(study_name="e2e", storage=make_storage(None, out))
    states = {t.number: t.state for t in study.trials}
    assert states[1] == TrialState.COMPLETE and states[3] == TrialState.FAIL
    assert states[0] == states[2] == TrialState.PRUNED
    kept = study.trials[1].values

    rerun = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]
    assert re.search(r"trial 3 was interrupted; retrying it as trial \d+", rerun.stdout + rerun.stderr)
    study = optuna.load_study(study_name="e2e", storage=make_storage(None, out))
    trials = {t.number: t for t in study.trials}
    assert trials[1].values == kept
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == 3]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 4
    for t in study.trials:
        folder = out / "trials" / f"{t.number:04d}"
        if t.state == TrialState.PRUNED:  # decided from its costs: no run, no SuperLink, no folder
            assert not folder.exists() and "memory_mb" in t.user_attrs["infeasible"]
        if t.state == TrialState.COMPLETE:
            results = [Path(p) for p in t.user_attrs["results"]]
            assert results and all(p.is_file() for p in results)
            figures = t.user_attrs["figures"]
            # the clients' measured training state never exceeds the cost the trial was admitted with
            assert figures["measured_memory_bytes"] <= t.user_attrs["estimated_memory_bytes"] <= 1e6
            assert 0 < figures["uplink_bytes"] and 0 < figures["downlink_bytes"]
    rows = list(csv.DictReader((out / "trials.csv").open()))
    assert len(rows) == len(study.trials)
    assert (out / "pareto.png").stat().st_size > 10_000 and "Pareto front" in (out / "front.md").read_text()

    best = subprocess.run(tune("best", "--study", "e2e", "--out", str(out), "--max-memory-mb", "1"), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert best.returncode == 0, best.stderr
    assert "fedprune simulate --dataset digits" in best.stdout
    report = subprocess.run(tune("report", "--study", "e2e", "--out", str(out)), cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert report.returncode == 0 and "pareto.png" in report.stdout
