"""report.png: test accuracy against round, and against the cumulative bytes moved each way (measured), each
run's legend saying its bytes per client-round and their share of dense FedAvg's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from fedprune.server.results import client_round_bytes  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def run_label(label: str, document: dict[str, Any]) -> str:
    """``label``, plus bytes per client-round each way and the share of dense FedAvg's where recorded."""
    if not document.get("rounds"):
        return label
    up, down = client_round_bytes(document)
    text = f"{label}: up {up / 1e3:,.1f} kB, down {down / 1e3:,.1f} kB per client-round"
    fraction = document.get("summary", {}).get("dense_fraction")
    if fraction:
        text += f" (1/{1 / fraction:,.0f} of dense)" if fraction < 1 else f" ({fraction:.2f}x dense)"
    return text


def _cumulative(rounds: list[dict[str, Any]], key: str) -> list[float]:
    out, total = [], 0
    for r in rounds:
        total += r[key]
        out.append(total / 2**20)
    return out


def plot_report(documents: dict[str, dict[str, Any]], path: Path) -> Path:
    """Plot one curve per labelled results document into ``path`` (PNG)."""
    fig, (by_round, by_up, by_down) = plt.subplots(1, 3, figsize=(16, 4.6))
    for label, document in documents.items():
        rounds = document["rounds"]
        acc = [r["accuracy"] for r in rounds]
        name = run_label(label, document)
        by_round.plot([r["round"] for r in rounds], acc, marker=".", label=name)
        by_up.plot(_cumulative(rounds, "uplink_bytes"), acc, marker=".", label=name)
        by_down.plot(_cumulative(rounds, "downlink_bytes"), acc, marker=".", label=name)
    by_round.set(xlabel="round", ylabel="test accuracy", title="Accuracy per round")
    by_round.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_up.set(xlabel="cumulative uplink (MiB, measured)", ylabel="test accuracy", title="Accuracy per uplink byte")
    by_down.set(xlabel="cumulative downlink (MiB, measured)", ylabel="test accuracy",
                title="Accuracy per downlink byte")
    for axis, key in ((by_up, "uplink_bytes"), (by_down, "downlink_bytes")):
        if any(len(d["rounds"]) and max(r[key] for r in d["rounds"]) > 0 for d in documents.values()):
            axis.set_xscale("log")
    by_round.legend(fontsize=7, loc="lower right")
    for axis in (by_round, by_up, by_down):
        axis.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
