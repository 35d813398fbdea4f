"""Data-free importance scores for pruning and the global top-k rule that turns scores into a mask.

Scores say how much each prunable weight matters; ``global_topk_mask`` decides
what to keep; a schedule (``pruning.schedules``) decides how much to keep at
each step and how often to rescore. Keeping them apart lets any score be
combined with any schedule or strategy (Torch-Pruning's importance/pruner split).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from fedprune.models import prunable_names
from fedprune.pruning.synflow import SynFlowScorer, synflow_scores
from torch import nn

Scores = dict[str, torch.Tensor]


def magnitude_scores(model: nn.Module, seed: int = 0, mask: dict[str, np.ndarray] | None = None) -> Scores:
    """|w| of each prunable weight."""
    params = dict(model.named_parameters())
    return {name: params[name].detach().abs().double() for name in prunable_names(model)}


def random_scores(model: nn.Module, seed: int = 0, mask: dict[str, np.ndarray] | None = None) -> Scores:
    """Uniform random scores from ``seed``: the baseline any informed score must beat."""
    generator = torch.Generator().manual_seed(seed + 7919)
    params = dict(model.named_parameters())
    return {name: torch.rand(params[name].shape, generator=generator, dtype=torch.float64)
            for name in prunable_names(model)}


ScoreFn = Callable[[nn.Module, int, dict[str, np.ndarray] | None], Scores]
SCORES: dict[str, ScoreFn] = {
    "magnitude": magnitude_scores,
    "random": random_scores,
    "synflow": synflow_scores,
}


def scorer_for(model: nn.Module, score: str, device: torch.device | str = "cpu") -> ScoreFn:
    """Score ``score`` as a function of (model, seed, mask) that may cache per-model work across calls
    (SynFlow's linearized copy of ``model``, built once, on ``device``): what an iterative schedule rescores
    with."""
    if score not in SCORES:
        raise ValueError(f"unknown score '{score}'; choose one of {sorted(SCORES)}")
    if score == "synflow":
        scorer = SynFlowScorer(model, device)
        return lambda _model, _seed, mask: scorer(mask)
    return SCORES[score]


def _top_k(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean vector marking the k largest entries; ties at the threshold go to the lowest positions."""
    kept = torch.zeros(flat.numel(), dtype=torch.bool)
    if k <= 0:
        return kept
    if k >= flat.numel():
        return ~kept
    threshold = torch.kthvalue(flat, flat.numel() - k + 1).values  # O(n) selection, no full sort
    kept = flat > threshold
    ties = torch.nonzero(flat == threshold).reshape(-1)
    kept[ties[: k - int(kept.sum())]] = True
    return kept


def global_topk_mask(scores: Scores, density: float) -> dict[str, np.ndarray]:
    """Keep exactly round(density x total) highest-scoring weights over all layers, at least one per layer.

    Ties break by position (stable), so the same scores always give the same mask.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density {density} is outside (0, 1]")
    names = list(scores)
    flat = torch.cat([scores[n].reshape(-1).double() for n in names])
    total = flat.numel()
    keep = max(len(names), min(total, int(round(density * total))))
    kept = _top_k(flat, keep)
    offsets = np.cumsum([0] + [scores[n].numel() for n in names])
    # Every layer keeps at least its best weight; the globally weakest kept weights make room.
    for i in range(len(names)):
        start, stop = int(offsets[i]), int(offsets[i + 1])
        if not kept[start:stop].any():
            best = start + int(torch.argmax(flat[start:stop]))
            layer_of = np.repeat(np.arange(len(names)), np.diff(offsets))
            counts = np.bincount(layer_of[kept.numpy()], minlength=len(names))
            donors = torch.from_numpy(counts[layer_of] > 1) & kept
            candidates = torch.nonzero(donors).reshape(-1)
            weakest = candidates[torch.argmin(flat[candidates])]
            kept[weakest] = False
            kept[best] = True
    return {name: kept[int(offsets[i]):int(offsets[i + 1])].reshape(scores[name].shape).numpy()
            for i, name in enumerate(names)}
