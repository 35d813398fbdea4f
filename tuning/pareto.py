"""Non-dominated trials: the Pareto front over several objectives, each maximized or minimized."""

from __future__ import annotations

from collections.abc import Sequence


def dominates(a: Sequence[float], b: Sequence[float], maximize: Sequence[bool]) -> bool:
    """Whether ``a`` is at least as good as ``b`` in every objective and better in one."""
    better = False
    for x, y, up in zip(a, b, maximize, strict=True):
        if (x < y) if up else (x > y):
            return False
        better |= (x > y) if up else (x < y)
    return better


def pareto_front(points: Sequence[Sequence[float]], maximize: Sequence[bool]) -> list[int]:
    """Indices of the points no other point dominates, in input order (equal points are all kept).

    Sorted sweep: a point can only be dominated by one that is at least as good in the first objective,
    so each point is compared with the front found among those before it in that order."""
    sign = 1.0 if maximize[0] else -1.0
    order = sorted(range(len(points)), key=lambda i: -sign * points[i][0])
    front: list[int] = []
    for i in order:
        if not any(dominates(points[j], points[i], maximize) for j in front):
            front = [j for j in front if not dominates(points[i], points[j], maximize)] + [i]
    return sorted(front)
