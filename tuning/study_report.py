"""``fedprune tune report``: every trial in trials.csv, the Pareto front as a Markdown table, and pareto.png.

The front is taken over the feasible complete trials on all five objectives (accuracy up; uplink, downlink,
client memory, FLOPs down). The plot shows accuracy against total bytes per client-round and against client
memory (log scales), one colour per strategy, each panel's own two-objective front joined by a line.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 - the backend must be chosen first
import optuna  # noqa: E402
from fedprune.tuning.pareto import pareto_front  # noqa: E402
from fedprune.tuning.study_storage import DIRECTIONS, OBJECTIVES  # noqa: E402
from fedprune.tuning.trial_summary import COLUMNS, kilobytes, trial_row, what_ran  # noqa: E402
from optuna.trial import FrozenTrial, TrialState  # noqa: E402

from fedprune.atomic_file import write_atomically  # noqa: E402

COLOURS = {"fedavg": "black", "static-synflow": "tab:blue", "static-magnitude": "tab:cyan",
           "static-random": "tab:gray", "hidenseek": "tab:red", "fedtiny": "tab:green", "flwr-fedavg": "tab:brown"}


def feasible_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Complete trials that break none of the study's constraints."""
    return [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if not t.user_attrs.get("broken")]


def front_trials(trials: Sequence[FrozenTrial], objectives: Sequence[str] = OBJECTIVES) -> list[FrozenTrial]:
    """The non-dominated trials on ``objectives`` (their figures), in trial order."""
    maximize = [DIRECTIONS[OBJECTIVES.index(o)] == "maximize" if o in OBJECTIVES else False for o in objectives]
    points = [[t.user_attrs["figures"][o] for o in objectives] for t in trials]
    return [trials[i] for i in pareto_front(points, maximize)]


def write_report(study: optuna.Study, out_dir: Path) -> dict[str, Path]:
    """Write trials.csv, front.md and pareto.png into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    feasible = feasible_trials(study)
    paths = {"csv": out_dir / "trials.csv", "front": out_dir / "front.md", "plot": out_dir / "pareto.png"}

    def write_csv(tmp: str) -> None:
        with open(tmp, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=COLUMNS)
            writer.writeheader()
            writer.writerows(trial_row(t) for t in trials)

    write_atomically(paths["csv"], write_csv)
    front = front_trials(feasible)
    write_atomically(paths["front"], lambda tmp: Path(tmp).write_text(front_markdown(study, front, trials)))
    plot_front(feasible, paths["plot"], study.study_name)
    return paths


def front_markdown(study: optuna.Study, front: Sequence[FrozenTrial], trials: Sequence[FrozenTrial]) -> str:
    """The front as a Markdown table, best accuracy first, with how many trials it was taken from."""
    states: dict[str, int] = {}
    for t in trials:
        label = trial_row(t)["state"]
        states[label] = states.get(label, 0) + 1
    lines = [f"# Study {study.study_name}: Pareto front", "",
             f"{len(front)} non-dominated of {len(trials)} trials ("
             + ", ".join(f"{n} {s}" for s, n in sorted(states.items())) + "); objectives: accuracy (last-5 mean, "
             "mean over seeds) up; uplink, downlink per client-round, client training state, FLOPs per sample down.",
             "", "| trial | strategy | accuracy | ± | uplink | downlink | client memory | MFLOPs/sample | other |",
             "|---|---|---|---|---|---|---|---|---|"]
    for t in sorted(front, key=lambda t: -t.user_attrs["figures"]["accuracy"]):
        f, row = t.user_attrs["figures"], trial_row(t)
        lines.append(f"| {t.number} | {what_ran(t)} | {f['accuracy']:.4f} | {f.get('accuracy_std', 0):.4f} | "
                     f"{kilobytes(f['uplink_bytes'])} | {kilobytes(f['downlink_bytes'])} | "
                     f"{f['memory_bytes'] / 1e6:.3f} MB | {f['flops_per_sample'] / 1e6:.2f} | {row['params']} |")
    return "\n".join(lines) + "\n"


def _panel(ax: Any, trials: Sequence[FrozenTrial], figure: str, label: str) -> None:
    seen = set()
    for t in trials:
        strategy = trial_row(t)["strategy"]
        f = t.user_attrs["figures"]
        ax.scatter(f[figure], f["accuracy"], color=COLOURS.get(strategy, "tab:purple"), s=36,
                   label=None if strategy in seen else strategy, zorder=3)
        seen.add(strategy)
    if trials:
        front = sorted(front_trials(trials, ("accuracy", figure)), key=lambda t: t.user_attrs["figures"][figure])
        ax.plot([t.user_attrs["figures"][figure] for t in front], [t.user_attrs["figures"]["accuracy"] for t in front],
                color="black", linewidth=1, linestyle="--", label="non-dominated", zorder=2)
    ax.set_xscale("log")
    ax.set_xlabel(label)
    ax.set_ylabel("accuracy (last-5 mean)")
    ax.grid(True, which="both", alpha=0.3)


def plot_front(trials: Sequence[FrozenTrial], path: Path, title: str) -> Path:
    """pareto.png: accuracy against total bytes per client-round, and against client memory."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    _panel(axes[0], trials, "total_bytes", "uplink + downlink bytes per client-round (log)")
    _panel(axes[1], trials, "memory_bytes", "client training state, bytes (log)")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(f"fedprune tune {title}: {len(trials)} feasible trials")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
