"""A finished trial in words and as a table row: what it ran, how it ended, its figures."""

from __future__ import annotations

from typing import Any

from optuna.trial import FrozenTrial, TrialState

STATE_NAMES = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "infeasible", TrialState.FAIL: "failed",
               TrialState.RUNNING: "running", TrialState.WAITING: "waiting"}
COLUMNS = ("trial", "state", "feasible", "strategy", "density", "accuracy", "accuracy_std", "uplink_bytes",
           "downlink_bytes", "total_bytes", "memory_bytes", "flops_per_sample", "seconds", "params", "reason",
           "results")


def kilobytes(count: float) -> str:
    """Bytes in kB (1000 B), the unit constraints and ``best`` limits use."""
    return f"{count / 1e3:,.1f} kB"


def what_ran(trial: FrozenTrial) -> str:
    """``hidenseek density 0.05`` (the strategy and, for sparse ones, the density)."""
    options = trial.user_attrs.get("options", trial.params)
    strategy = options.get("strategy", "?")
    density = options.get("density")
    return f"{strategy}" + (f" density {density:g}" if density is not None and strategy != "fedavg" else "")


def trial_row(trial: FrozenTrial) -> dict[str, Any]:
    """One row of trials.csv (empty cells where a figure does not exist)."""
    figures = trial.user_attrs.get("figures", {})
    options = trial.user_attrs.get("options", trial.params)
    reason = trial.user_attrs.get("infeasible") or trial.user_attrs.get("error") or \
        "; ".join(trial.user_attrs.get("broken", []))
    row = {"trial": trial.number, "state": STATE_NAMES.get(trial.state, trial.state.name.lower()),
           "feasible": trial.state == TrialState.COMPLETE and not trial.user_attrs.get("broken"),
           "strategy": options.get("strategy", ""),
           "density": options.get("density", 1.0) if options.get("strategy") != "fedavg" else 1.0,
           "params": " ".join(f"{k}={v}" for k, v in trial.params.items() if k not in ("strategy", "density")),
           "reason": reason, "results": " ".join(trial.user_attrs.get("results", []))}
    for key in ("accuracy", "accuracy_std", "uplink_bytes", "downlink_bytes", "total_bytes", "memory_bytes",
                "seconds"):
        row[key] = figures.get(key, "")
    row["memory_bytes"] = figures.get("memory_bytes", trial.user_attrs.get("estimated_memory_bytes", ""))
    row["flops_per_sample"] = trial.user_attrs.get("flops_per_sample", "")
    return row


def trial_line(trial: FrozenTrial) -> str:
    """One console line per finished trial."""
    head = f"trial {trial.number} {what_ran(trial)}"
    if trial.state == TrialState.PRUNED:
        return f"{head}: infeasible — {trial.user_attrs.get('infeasible', '')}"
    if trial.state != TrialState.COMPLETE:
        return f"{head}: {STATE_NAMES.get(trial.state, trial.state.name)} — {trial.user_attrs.get('error', '')}"
    f = trial.user_attrs["figures"]
    spread = f" ±{f['accuracy_std']:.4f}" if f.get("accuracy_std") else ""
    line = (f"{head}: accuracy {f['accuracy']:.4f}{spread}, up {kilobytes(f['uplink_bytes'])} / down "
            f"{kilobytes(f['downlink_bytes'])} per client-round, client memory {f['memory_bytes'] / 1e6:.3f} MB, "
            f"{f['flops_per_sample'] / 1e6:.2f} MFLOPs/sample, {f['seconds']:.0f} s")
    if trial.user_attrs.get("broken"):
        line += f" — breaks {', '.join(trial.user_attrs['broken'])}"
    return line
