"""HideNseek's coded downlink: global scores on a per-layer grid, sent as integer levels.

The grid step of a layer is ``step × RMS(|θ0|)`` over its kept weights (the scale its scores live on: they
start at ±|θ0|). A score z travels as its level q = floor(z / Δ) and is rebuilt as (q + ½)Δ — within Δ/2 of z,
and with z's sign (q >= 0 exactly when z >= 0), so σ = sign(z) need not travel beside it. The levels are
entropy-coded (``CODED_INTS``), or as changes to the levels the node holds from its last round
(``CODED_INT_DELTA``), whichever is smaller (``protos.codec``). A node that holds none yet starts from the levels
of its initial scores sign(θ0)|θ0| (``initial_levels``), which it computes itself: the first payload is then
their displacement, ~9% smaller than the levels whole (BENCHMARKS.md). Both sides compute the same digest of the
levels, so a node never trains on anything but what the server sent.

Only where clients start: the server keeps its exact scores (the tally), and clients send changes relative
to the start they were given, so rounding never accumulates on the server.

Two grids (``GRIDS``). ``uniform``: bins [qΔ, (q+1)Δ). ``sqrt``: bins uniform in sign(z)·sqrt(|z|/Δ), i.e.
[k², (k+1)²)·Δ on each side of zero (k >= 0; q = k for z >= 0, q = −k−1 below zero), rebuilt at the middle of
the bin in that square-root scale, (k+½)²Δ. Only a score near zero can change sign in one round of local
training, so precision matters there: the square-root grid is as fine as a uniform one of step Δ at zero and
coarser far from it, where a score's exact size no longer decides anything (BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

Arrays = Mapping[str, np.ndarray]
GRIDS = ("uniform", "sqrt")


def level_steps(magnitude: Arrays, step: float) -> dict[str, np.ndarray]:
    """Per layer, the grid step Δ = ``step`` × RMS of |θ0| over its kept weights (float32, shape (1,))."""
    out = {}
    for name, m in magnitude.items():
        rms = float(np.sqrt(np.mean(np.square(m, dtype=np.float64)))) if m.size else 1.0
        out[name] = np.array([step * (rms if rms > 0 else 1.0)], dtype=np.float32)
    return out


def to_levels(scores: Arrays, steps: Arrays, grid: str = "uniform") -> dict[str, np.ndarray]:
    """The level of each score per layer, int32 (q >= 0 exactly when z >= 0; clipped to int32's range, which
    scores never get near): floor(z / Δ) on the ``uniform`` grid; on the ``sqrt`` grid k = floor(sqrt(|z| / Δ)),
    q = k for z >= 0 and −k−1 below zero."""
    out = {}
    for k, z in scores.items():
        x = z.astype(np.float64) / float(steps[k][0])
        if grid == "sqrt":
            root = np.floor(np.sqrt(np.abs(x)))
            q = np.where(x >= 0, root, -root - 1)
        else:
            q = np.floor(x)
        out[k] = np.clip(q, -(2**31), 2**31 - 1).astype(np.int32)
    return out


def initial_levels(magnitude: Arrays, initial_signs: Arrays, steps: Arrays,
                   grid: str = "uniform") -> dict[str, np.ndarray]:
    """The levels of the initial scores z0 = sign(θ0)|θ0|: what a first payload is coded against (both sides
    derive them from θ0, so they never travel)."""
    return to_levels({k: (initial_signs[k] * m).astype(np.float32) for k, m in magnitude.items()}, steps, grid)


def from_levels(levels: Arrays, steps: Arrays, grid: str = "uniform") -> dict[str, np.ndarray]:
    """The scores a client starts from, float32: (q + ½)Δ on the ``uniform`` grid, ±(k + ½)²Δ on ``sqrt``."""
    out = {}
    for k, q in levels.items():
        q64, step = q.astype(np.float64), float(steps[k][0])
        if grid == "sqrt":
            root = np.where(q64 >= 0, q64, -q64 - 1) + 0.5
            out[k] = (np.where(q64 >= 0, 1.0, -1.0) * root * root * step).astype(np.float32)
        else:
            out[k] = ((q64 + 0.5) * step).astype(np.float32)
    return out


def signs_of_levels(levels: Arrays) -> dict[str, np.ndarray]:
    """σ = sign of the rebuilt scores: +1 where q >= 0, else -1 (int8)."""
    return {k: np.where(q >= 0, 1, -1).astype(np.int8) for k, q in levels.items()}


def check_steps(steps: Arrays, names: Arrays) -> None:
    """``ValueError`` unless every layer of ``names`` has one finite, positive step."""
    for name in names:
        step = steps.get(name)
        if step is None or step.shape != (1,) or not (np.isfinite(step).all() and step[0] > 0):
            raise ValueError(f"score step of '{name}' missing or not a finite positive number")
