"""Limits a study's trials must meet (``--constraint 'uplink_kb<=20'``), and how far a trial is from them.

Each metric is a trial figure in a unit people budget in: bytes per client-round in kB (1 kB = 1000 B), client
training state in MB (10^6 B), training FLOPs per sample in millions, accuracy as a fraction. A violation is
``value - limit`` for ``<=`` (``limit - value`` for ``>=``) in that unit: positive means broken, which is what
Optuna's ``constraints_func`` expects.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from fedprune.tuning.search_space import SpaceError

# metric -> (trial figure it reads, divisor to the unit, what it is)
METRICS: dict[str, tuple[str, float, str]] = {
    "uplink_kb": ("uplink_bytes", 1e3, "uplink bytes per client-round, kB"),
    "downlink_kb": ("downlink_bytes", 1e3, "downlink bytes per client-round, kB"),
    "total_kb": ("total_bytes", 1e3, "uplink + downlink bytes per client-round, kB"),
    "memory_mb": ("memory_bytes", 1e6, "client training state (parameters, gradients, optimizer, buffers), MB"),
    "mflops": ("flops_per_sample", 1e6, "client training FLOPs per sample, millions"),
    "accuracy": ("accuracy", 1.0, "last-5 mean accuracy (mean over seeds)"),
}
_PATTERN = re.compile(r"^\s*([a-z_]+)\s*(<=|>=)\s*([0-9.eE+-]+)\s*$")


class ConstraintError(SpaceError):
    """A constraint that cannot be read or can never be met."""

    def __init__(self, message: str) -> None:
        super().__init__("constraint", message)


@dataclass(frozen=True)
class Constraint:
    """``metric op limit`` with the metric in its unit (see ``METRICS``)."""

    metric: str
    op: str
    limit: float

    @property
    def figure(self) -> str:
        """The trial figure (bytes, FLOPs, accuracy) this constraint reads."""
        return METRICS[self.metric][0]

    def violation(self, figures: Mapping[str, float]) -> float:
        """How far the trial is beyond the limit, in the metric's unit (<= 0: met)."""
        value = figures[self.figure] / METRICS[self.metric][1]
        return value - self.limit if self.op == "<=" else self.limit - value

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.limit:g}"


def parse_constraint(text: str) -> Constraint:
    """``'uplink_kb<=20'`` → ``Constraint``; a one-line ``ConstraintError`` for anything else."""
    match = _PATTERN.match(text)
    if not match:
        raise ConstraintError(f"'{text}' is not METRIC<=VALUE or METRIC>=VALUE (metrics: {', '.join(METRICS)})")
    metric, op, number = match.groups()
    if metric not in METRICS:
        raise ConstraintError(f"'{text}': unknown metric '{metric}' (one of {', '.join(METRICS)})")
    try:
        limit = float(number)
    except ValueError:
        raise ConstraintError(f"'{text}': '{number}' is not a number") from None
    if not math.isfinite(limit):
        raise ConstraintError(f"'{text}': the limit must be finite")
    if metric == "accuracy":
        if op != ">=" or not 0 <= limit < 1:
            raise ConstraintError(f"'{text}': accuracy can only be bounded below, by a value in [0, 1)")
    elif op != "<=" or limit <= 0:
        raise ConstraintError(f"'{text}': {metric} can only be bounded above, by a positive value")
    return Constraint(metric, op, limit)


def violations(constraints: Sequence[Constraint], figures: Mapping[str, float]) -> list[float]:
    """One violation per constraint whose figure is known (NaN where it is not yet)."""
    return [c.violation(figures) if c.figure in figures else math.nan for c in constraints]


def broken(constraints: Sequence[Constraint], figures: Mapping[str, float]) -> list[str]:
    """``'memory_mb 1.2 > 0.5'`` for each constraint the known figures break."""
    out = []
    for c in constraints:
        if c.figure in figures and c.violation(figures) > 0:
            value = figures[c.figure] / METRICS[c.metric][1]
            out.append(f"{c.metric} {value:.4g} {'>' if c.op == '<=' else '<'} {c.limit:g}")
    return out
