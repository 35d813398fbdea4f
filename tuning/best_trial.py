"""``fedprune tune best``: the most accurate trial within a user's limits, as commands ready to run.

Limits are per client-round bytes each way (kB), client training state (MB) and FLOPs per sample (millions);
only complete trials that also meet the study's own constraints qualify. Ties in accuracy go to fewer total
bytes, then less memory, then the earlier trial.
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from typing import Any

import optuna
from fedprune.tuning.study_report import feasible_trials
from fedprune.tuning.trial_runs import simulate_arguments
from fedprune.tuning.trial_summary import kilobytes, what_ran
from optuna.trial import FrozenTrial


@dataclass(frozen=True)
class Limits:
    """The user's limits (``inf``: none)."""

    uplink_kb: float = math.inf
    downlink_kb: float = math.inf
    memory_mb: float = math.inf
    mflops: float = math.inf

    def admit(self, figures: dict[str, float]) -> bool:
        """Whether a trial's figures are within every limit."""
        return (figures["uplink_bytes"] <= self.uplink_kb * 1e3
                and figures["downlink_bytes"] <= self.downlink_kb * 1e3
                and figures["memory_bytes"] <= self.memory_mb * 1e6
                and figures["flops_per_sample"] <= self.mflops * 1e6)

    def __str__(self) -> str:
        parts = [f"{name} <= {value:g}" for name, value in (("uplink kB", self.uplink_kb), ("downlink kB",
                 self.downlink_kb), ("memory MB", self.memory_mb), ("MFLOPs", self.mflops)) if math.isfinite(value)]
        return ", ".join(parts) or "no limits"


def best_trial(study: optuna.Study, limits: Limits) -> FrozenTrial | None:
    """The most accurate feasible trial within ``limits`` (None if no trial fits)."""
    fitting = [t for t in feasible_trials(study) if limits.admit(t.user_attrs["figures"])]
    if not fitting:
        return None
    return min(fitting, key=lambda t: (-t.user_attrs["figures"]["accuracy"], t.user_attrs["figures"]["total_bytes"],
                                       t.user_attrs["figures"]["memory_bytes"], t.number))


def best_text(study: optuna.Study, trial: FrozenTrial, limits: Limits) -> str:
    """What ``best`` prints: the trial's figures, a ``fedprune simulate`` command, the deploy run config and the
    node configs (FedTiny budget tiers become each node's ``memory-budget-mb`` / ``flops-budget``)."""
    f = trial.user_attrs["figures"]
    options: dict[str, Any] = dict(trial.user_attrs["options"])
    seeds = len(trial.user_attrs.get("results", [])) or 1
    arguments = shlex.join(simulate_arguments(options))
    lines = [
        f"best of {len(study.trials)} trials for {limits}: trial {trial.number}, {what_ran(trial)}",
        f"  accuracy {f['accuracy']:.4f} (std {f.get('accuracy_std', 0):.4f} over {seeds} seed(s)); uplink "
        f"{kilobytes(f['uplink_bytes'])}, downlink {kilobytes(f['downlink_bytes'])} per client-round; client training "
        f"state {f['memory_bytes'] / 1e6:.3f} MB; {f['flops_per_sample'] / 1e6:.2f} MFLOPs per sample",
        "", "simulate:", f"  fedprune simulate {arguments} --seed 0 --out runs/best-{study.study_name}",
        "", "deploy (SuperLink running; see README 'Deploying'):",
        f"  fedprune deploy run {arguments} --out runs/best-{study.study_name}",
        "", "run config ([tool.flwr.app.config] of the app):"]
    lines += [f"  {key} = {_toml_value(value)}" for key, value in options.items()]
    lines += ["", "node budgets (each SuperNode's --set):"] + _node_budgets(options, f)
    return "\n".join(lines)


def _node_budgets(options: dict[str, Any], figures: dict[str, float]) -> list[str]:
    tiers = [t for t in str(options.get("budget-tiers", "")).split(",") if t.strip()]
    if options.get("strategy") == "fedtiny" and tiers:
        out = []
        for index, tier in enumerate(tiers):
            memory, _, flops = tier.partition(":")
            sets = [f"--set memory-budget-mb={memory}"] if memory != "inf" else []
            sets += [f"--set flops-budget={flops}"] if flops != "inf" else []
            out.append(f"  partitions ≡ {index} mod {len(tiers)}: {' '.join(sets) or '(no budget)'}")
        return out
    return [f"  none needed; each node must hold {figures['memory_bytes'] / 1e6:.3f} MB of training state and "
            f"{figures['flops_per_sample'] / 1e6:.2f} MFLOPs per sample"]


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(value)
