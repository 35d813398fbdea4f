"""Pruning schedules: how much to keep at each step on the way to a target density, and how often to rescore.

A score (``pruning.scores``) says how to rank weights; a schedule says how much
to keep and when: one shot, or SynFlow's exponential steps with the mask
reapplied before each rescoring (Torch-Pruning's importance/scheduler split).
"""

from __future__ import annotations

import numpy as np
import torch
from fedprune.pruning.scores import SCORES, ScoreFn, scorer_for
from fedprune.pruning.tile_masks import KeepRule, keep_rule
from torch import nn

# Steps per score when a caller does not choose: scores that change as weights are pruned are applied
# iteratively (DESIGN §4: SynFlow in 100 steps); the others in one shot.
ITERATIONS = {"magnitude": 1, "random": 1, "synflow": 100}


def exponential_schedule(density: float, iterations: int) -> list[float]:
    """Densities d^(k/n), k = 1..n: SynFlow's schedule (each step prunes the same fraction)."""
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    return [density ** (k / iterations) for k in range(1, iterations + 1)]


def prune_iteratively(model: nn.Module, score: ScoreFn, density: float, iterations: int,
                      seed: int = 0, keep: KeepRule | None = None) -> dict[str, np.ndarray]:
    """Rescore with the current mask and apply the keep rule (default: the global top-k of single weights)
    along ``exponential_schedule``."""
    keep = keep or keep_rule("weight")
    mask = None
    for step_density in exponential_schedule(density, iterations):
        mask = keep(score(model, seed, mask), step_density)
    return mask


def data_free_mask(model: nn.Module, score: str, density: float, seed: int = 0,
                   iterations: int | None = None, granularity: str = "weight",
                   device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """The mask score ``score`` gives ``model`` at ``density`` without data, rescored ``iterations`` times
    along ``exponential_schedule`` (default: the score's own count in ``ITERATIONS``), keeping single weights
    or whole 32×32 tiles (``granularity``, ``pruning.tile_masks``); SynFlow's passes run on ``device``."""
    if score not in SCORES:
        raise ValueError(f"unknown score '{score}'; choose one of {sorted(SCORES)}")
    steps = ITERATIONS[score] if iterations is None else iterations
    return prune_iteratively(model, scorer_for(model, score, device), density, steps, seed, keep_rule(granularity))
