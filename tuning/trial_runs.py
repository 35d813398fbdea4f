"""One run of a trial: a real ``fedprune simulate`` process, and the figures read back from its results.json.

Each run is its own process (private SuperLink, Ray, measured bytes), so a crash, a leak or Ctrl-C stays
inside it; its console output goes to ``run.log`` beside its results.json.
"""

from __future__ import annotations

import math
import statistics
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedprune.server.results import client_round_bytes, read_results
from fedprune.tuning.search_space import OPTION_FIELDS


class TrialRunError(RuntimeError):
    """A trial's simulation did not complete; the message is the run's own reason."""


def simulate_arguments(options: Mapping[str, Any]) -> list[str]:
    """``fedprune simulate`` arguments for run options (booleans as flags, in the options' order)."""
    arguments: list[str] = []
    for key, value in options.items():
        if OPTION_FIELDS.get(key) is not None and OPTION_FIELDS[key].type == "bool":
            arguments += [f"--{key}"] if value else []
        else:
            arguments += [f"--{key}", str(value)]
    return arguments


def run_simulation_process(options: Mapping[str, Any], seed: int, out: Path, *, ray_address: str | None = None
                           ) -> dict[str, Any]:
    """Run ``fedprune simulate`` for one seed into ``out``; its results document, or ``TrialRunError``."""
    out.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "fedprune.cli", "simulate", *simulate_arguments(options),
               "--seed", str(seed), "--out", str(out)]
    if ray_address:
        command += ["--ray-address", ray_address]
    with open(out / "run.log", "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            code = process.wait()
        except BaseException as exc:
            _stop(process, already_signalled=isinstance(exc, KeyboardInterrupt))
            raise
    document = read_results(out / "results.json")
    if code != 0 or document is None or document.get("status") != "completed":
        raise TrialRunError(_last_error_line(out / "run.log") or f"simulate exited with code {code}")
    return document


def _stop(process: subprocess.Popen, already_signalled: bool) -> None:
    """Stop a run the tuner is leaving: Ctrl-C in a terminal reaches the child too (same process group), so
    give it a moment to stop on its own; otherwise (SIGTERM, or a signal sent to the tuner alone) terminate it —
    ``fedprune simulate`` stops its SuperLink and Ray on SIGTERM. Killed only if it hangs for a minute."""
    try:
        process.wait(timeout=5 if already_signalled else 0.01)
    except subprocess.TimeoutExpired:
        process.terminate()
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _last_error_line(log: Path) -> str:
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    failed = [line for line in lines if "simulate:" in line or "error" in line.lower()]
    return (failed or lines or [""])[-1][:300]


def run_figures(document: Mapping[str, Any]) -> dict[str, float]:
    """Per-run figures: last-5 accuracy, bytes per client-round each way (setup included), the largest
    training state a client reported (``client_train_state_bytes``; absent in older results), seconds."""
    rounds = document["rounds"]
    up, down = client_round_bytes(document)
    figures = {
        "accuracy": float(document["summary"]["final_accuracy_last5"]),
        "uplink_bytes": up,
        "downlink_bytes": down,
        "seconds": float(document.get("setup", {}).get("seconds", 0.0)) + sum(r["seconds"] for r in rounds),
    }
    reported = [r["client_train_state_bytes"] for r in rounds if r.get("client_train_state_bytes")]
    if reported:
        figures["measured_memory_bytes"] = float(max(reported))
    return figures


def mean_figures(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Figures of a trial over its seeds: means (the largest measured memory), and the accuracy's spread."""
    keys = set.intersection(*(set(r) for r in runs))
    out = {k: statistics.fmean(r[k] for r in runs) for k in keys if k != "measured_memory_bytes"}
    if "measured_memory_bytes" in keys:
        out["measured_memory_bytes"] = max(r["measured_memory_bytes"] for r in runs)
    accuracies = [r["accuracy"] for r in runs]
    out["accuracy_std"] = statistics.stdev(accuracies) if len(accuracies) > 1 else 0.0
    out["accuracy_min"], out["accuracy_max"] = min(accuracies), max(accuracies)
    out["total_bytes"] = out["uplink_bytes"] + out["downlink_bytes"]
    if any(math.isnan(v) for v in out.values()):
        raise TrialRunError("a run reported no accuracy")
    return out
