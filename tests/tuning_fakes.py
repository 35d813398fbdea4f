"""A stand-in for one ``fedprune simulate`` run in the tuner's fast tests: it writes a results.json whose
figures follow from the options (denser: more accurate and more bytes), and logs every call to a file so a
test can see which trials ran and how often. The real runner is exercised by the slow end-to-end tests."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedprune.tuning.search_space import load_space
from fedprune.tuning.study_worker import TunePlan, run_study

CALLS_ENV = "FEDPRUNE_FAKE_CALLS"


def fake_results(options: Mapping[str, Any], seed: int) -> dict[str, Any]:
    """A completed run's document with figures derived from ``options`` and ``seed``."""
    density = float(options.get("density", 1.0)) if options.get("strategy") != "fedavg" else 1.0
    bias = {"fedavg": 0.02, "static-magnitude": 0.0, "hidenseek": -0.01}.get(options.get("strategy"), 0.0)
    accuracy = min(0.99, 0.6 + 0.3 * density ** 0.5 + bias + 0.001 * seed)
    per_client = int(4 * 2_000 * density) + (0 if options.get("strategy") != "hidenseek" else -int(6_000 * density))
    rounds = [{"round": r, "accuracy": accuracy, "uplink_bytes": 3 * per_client + 300,
               "downlink_bytes": 3 * per_client + 900, "clients_sampled": 3, "seconds": 0.1}
              for r in range(1, int(options.get("rounds", 2)) + 1)]
    return {"status": "completed", "setup": {"uplink_bytes": 30, "downlink_bytes": 0, "seconds": 0.1},
            "rounds": rounds, "summary": {"final_accuracy_last5": accuracy}}


def fake_run(options: Mapping[str, Any], seed: int, out: Path) -> dict[str, Any]:
    """Write ``out/results.json`` and log the call (trial folder, seed) to ``$FEDPRUNE_FAKE_CALLS``."""
    out.mkdir(parents=True, exist_ok=True)
    document = fake_results(options, seed)
    (out / "results.json").write_text(json.dumps(document))
    calls = os.environ.get(CALLS_ENV)
    if calls:
        with open(calls, "a") as handle:
            handle.write(f"{out.parent.name} {seed} {json.dumps(dict(options), sort_keys=True)}\n")
    return document


def worker_main(study_dir: str, storage: str, trials: int, space: str) -> None:
    """One tuning worker process on a shared storage (the two-worker test starts two of these)."""
    plan = TunePlan("shared", Path(study_dir), storage, trials, load_space(path=space), "tpe")
    run_study(plan, run=fake_run, echo=lambda line: None)


if __name__ == "__main__":
    worker_main(*sys.argv[1:3], int(sys.argv[3]), sys.argv[4])
