"""Pruning schedules: how much to keep at each step on the way to a target density."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from fedprune.strategies.scores import global_topk_mask
from torch import nn

ScoreFn = Callable[[nn.Module, int, dict[str, np.ndarray] | None], dict[str, torch.Tensor]]


def exponential_schedule(density: float, iterations: int) -> list[float]:
    """Densities d^(k/n), k = 1..n: SynFlow's schedule (each step prunes the same fraction)."""
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    return [density ** (k / iterations) for k in range(1, iterations + 1)]


def prune_iteratively(model: nn.Module, score: ScoreFn, density: float, iterations: int,
                      seed: int = 0) -> dict[str, np.ndarray]:
    """Rescore with the current mask and keep the global top-k, along ``exponential_schedule``."""
    mask = None
    for step_density in exponential_schedule(density, iterations):
        mask = global_topk_mask(score(model, seed, mask), step_density)
    return mask
