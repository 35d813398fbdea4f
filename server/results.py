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


def summarize(rounds: list[dict[str, Any]], param_count: int, setup: dict[str, Any] | None = None,
              dense_model_bytes: int | None = None) -> dict[str, Any]:
    """The summary block: final/last-5/best accuracy, total bytes, median round time, and bytes per
    client-round each way (discovery included) with their share of what dense FedAvg moves
    (``dense_model_bytes`` each way: the serialized float32 model)."""
    accuracies = [r["accuracy"] for r in rounds]
    last5 = accuracies[-5:]
    summary = {
        "final_accuracy": accuracies[-1] if accuracies else float("nan"),
        "final_accuracy_last5": sum(last5) / len(last5) if last5 else float("nan"),
        "best_accuracy": max(accuracies) if accuracies else float("nan"),
        "total_uplink_bytes": sum(r["uplink_bytes"] for r in rounds),
        "total_downlink_bytes": sum(r["downlink_bytes"] for r in rounds),
        "median_round_seconds": statistics.median(r["seconds"] for r in rounds) if rounds else float("nan"),
        "param_count": param_count,
    }
    if sum(r["clients_sampled"] for r in rounds):
        up, down = client_round_bytes({"rounds": rounds, "setup": setup})
        summary |= {"uplink_bytes_per_client_round": up, "downlink_bytes_per_client_round": down}
        if dense_model_bytes:
            summary |= {"dense_model_bytes": dense_model_bytes,
                        "dense_fraction": (up + down) / (2 * dense_model_bytes)}
    return summary


def client_round_bytes(document: dict[str, Any]) -> tuple[float, float]:
    """(uplink, downlink) bytes per client-round of a results document, discovery included (from its rounds,
    so documents written before the summary recorded them work too)."""
    rounds, setup = document.get("rounds", []), document.get("setup") or {}
    client_rounds = sum(r["clients_sampled"] for r in rounds) or 1
    return ((setup.get("uplink_bytes", 0) + sum(r["uplink_bytes"] for r in rounds)) / client_rounds,
            (setup.get("downlink_bytes", 0) + sum(r["downlink_bytes"] for r in rounds)) / client_rounds)


def per_client(entry: dict[str, Any], dense_model_bytes: int | None) -> dict[str, Any]:
    """A round's bytes per sampled client each way, and their share of dense FedAvg's (both ways)."""
    clients = max(1, entry["clients_sampled"])
    up, down = entry["uplink_bytes"] / clients, entry["downlink_bytes"] / clients
    out = {"uplink_bytes_per_client": up, "downlink_bytes_per_client": down}
    if dense_model_bytes:
        out["dense_fraction"] = (up + down) / (2 * dense_model_bytes)
    return out


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
    """One progress line per round: accuracy, loss, measured bytes each way (and per client, with the share of
    dense FedAvg's bytes where known), seconds."""
    failed = f" | failed {entry['clients_failed']}" if entry.get("clients_failed") else ""
    if entry.get("failed"):
        reasons = entry.get("failure_reasons") or []
        failed += f" | ROUND FAILED: no update ({reasons[0]['reason'][:160] if reasons else 'no reply'}"
        failed += f"; {len(reasons)} nodes)" if len(reasons) > 1 else ")"
    client = ""
    if "uplink_bytes_per_client" in entry:
        client = (f" | per client up {human_bytes(entry['uplink_bytes_per_client'])} down "
                  f"{human_bytes(entry['downlink_bytes_per_client'])}")
        if entry.get("dense_fraction"):
            client += f" (1/{1 / entry['dense_fraction']:,.0f} of dense)" if entry["dense_fraction"] < 1 else \
                f" ({entry['dense_fraction']:.2f}x dense)"
    return (f"round {entry['round']:>3}/{total_rounds} | acc {entry['accuracy']:.4f} | loss {entry['loss']:.4f}"
            f" | up {human_bytes(entry['uplink_bytes'])} | down {human_bytes(entry['downlink_bytes'])}{client}"
            f" | {entry['seconds']:.1f}s{failed}")
