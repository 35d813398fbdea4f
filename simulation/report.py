"""report.png: test accuracy against round and against cumulative uplink bytes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402


def plot_report(documents: dict[str, dict[str, Any]], path: Path) -> Path:
    """Plot one curve per labelled results document into ``path`` (PNG)."""
    fig, (by_round, by_bytes) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, document in documents.items():
        rounds = document["rounds"]
        xs = [r["round"] for r in rounds]
        acc = [r["accuracy"] for r in rounds]
        uplink, total = [], 0
        for r in rounds:
            total += r["uplink_bytes"]
            uplink.append(total / 2**20)
        by_round.plot(xs, acc, marker=".", label=label)
        by_bytes.plot(uplink, acc, marker=".", label=label)
    by_round.set(xlabel="round", ylabel="test accuracy", title="Accuracy per round")
    by_round.xaxis.set_major_locator(MaxNLocator(integer=True))
    by_bytes.set(xlabel="cumulative uplink (MiB, measured)", ylabel="test accuracy",
                 title="Accuracy per uplink byte")
    if any(len(d["rounds"]) and max(r["uplink_bytes"] for r in d["rounds"]) > 0 for d in documents.values()):
        by_bytes.set_xscale("log")
    for axis in (by_round, by_bytes):
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
