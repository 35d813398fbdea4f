"""``results.json``: resolved config, environment, one entry per round, and a summary.

Written atomically after every round, so a reader (the CLI's progress printer,
a crashed run's user) always sees a complete file.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
from pathlib import Path
from typing import Any

from fedprune import __version__
from fedprune.atomic_file import write_atomically

RESULTS_NAME = "results.json"
ROUND_KEYS = {"round": int, "accuracy": float, "loss": float, "uplink_bytes": int, "downlink_bytes": int,
              "clients_sampled": int, "clients_failed": int, "seconds": float}
SUMMARY_KEYS = {"final_accuracy": float, "final_accuracy_last5": float, "best_accuracy": float,
                "total_uplink_bytes": int, "total_downlink_bytes": int, "median_round_seconds": float,
                "param_count": int}


def environment() -> dict[str, Any]:
    """Versions and machine facts a reader needs to compare runs."""
    import flwr
    import torch

    return {
        "fedprune": __version__,
        "flwr": flwr.__version__ if hasattr(flwr, "__version__") else _dist_version("flwr"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
    }


def _dist_version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def summarize(rounds: list[dict[str, Any]], param_count: int) -> dict[str, Any]:
    """The summary block: final/last-5/best accuracy, total bytes, median round time."""
    accuracies = [r["accuracy"] for r in rounds]
    last5 = accuracies[-5:]
    return {
        "final_accuracy": accuracies[-1] if accuracies else float("nan"),
        "final_accuracy_last5": sum(last5) / len(last5) if last5 else float("nan"),
        "best_accuracy": max(accuracies) if accuracies else float("nan"),
        "total_uplink_bytes": sum(r["uplink_bytes"] for r in rounds),
        "total_downlink_bytes": sum(r["downlink_bytes"] for r in rounds),
        "median_round_seconds": statistics.median(r["seconds"] for r in rounds) if rounds else float("nan"),
        "param_count": param_count,
    }


def write_results(out_dir: Path, document: dict[str, Any]) -> Path:
    """Atomically replace ``out_dir/results.json`` with ``document``."""

    def dump(tmp: str) -> None:
        with open(tmp, "w") as handle:
            json.dump(document, handle, indent=1)

    # 0644, not mkstemp's 0600: results are for everyone who can read the run dir
    return write_atomically(out_dir / RESULTS_NAME, dump, mode=0o644)


def read_results(path: Path) -> dict[str, Any] | None:
    """The results document at ``path``, or ``None`` if it is missing or not a JSON object."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return document if isinstance(document, dict) else None


def mark_failed(out_dir: Path, error: str) -> Path:
    """Mark ``out_dir/results.json`` failed with ``error``, keeping whatever it already recorded."""
    document = read_results(out_dir / RESULTS_NAME) or {"rounds": []}
    document["status"], document["error"] = "failed", error
    return write_results(out_dir, document)


def validate_results(document: dict[str, Any]) -> None:
    """Raise ``ValueError`` if ``document`` does not follow the results.json schema."""
    for key in ("config", "environment", "rounds", "summary"):
        if key not in document:
            raise ValueError(f"results.json lacks '{key}'")
    for key in ("fedprune", "flwr", "torch", "python", "cpus"):
        if key not in document["environment"]:
            raise ValueError(f"environment lacks '{key}'")
    for entry in document["rounds"]:
        for key, kind in ROUND_KEYS.items():
            if not isinstance(entry.get(key), kind) and not (kind is float and isinstance(entry.get(key), int)):
                raise ValueError(f"round {entry.get('round')}: '{key}' missing or not {kind.__name__}")
    for key, kind in SUMMARY_KEYS.items():
        value = document["summary"].get(key)
        if not isinstance(value, kind) and not (kind is float and isinstance(value, int)):
            raise ValueError(f"summary: '{key}' missing or not {kind.__name__}")


def human_bytes(count: float) -> str:
    """Bytes with a binary unit, for progress lines."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(count) < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.2f} {unit}"
        count /= 1024
    return f"{count:.2f} GiB"


def format_progress(entry: dict[str, Any], total_rounds: int) -> str:
    """One progress line per round: accuracy, loss, measured bytes each way, seconds."""
    failed = f" | failed {entry['clients_failed']}" if entry.get("clients_failed") else ""
    if entry.get("failed"):
        reasons = entry.get("failure_reasons") or []
        failed += f" | ROUND FAILED: no update ({reasons[0]['reason'][:160] if reasons else 'no reply'}"
        failed += f"; {len(reasons)} nodes)" if len(reasons) > 1 else ")"
    return (f"round {entry['round']:>3}/{total_rounds} | acc {entry['accuracy']:.4f} | loss {entry['loss']:.4f}"
            f" | up {human_bytes(entry['uplink_bytes'])} | down {human_bytes(entry['downlink_bytes'])}"
            f" | {entry['seconds']:.1f}s{failed}")
