"""Candidate masks for FedTiny's adaptive BN selection: one seeded θ0, layer-wise densities perturbed.

The score decides how many weights each layer keeps (its global mask's
layer-wise counts); the ``ranking`` decides which ones:

* ``magnitude`` (FedTiny's default): the largest |θ0| within each layer. SynFlow's
  allocation avoids layer collapse (global magnitude keeps 0–2 fc1 weights of the
  FL CNN at density 0.01 and never trains), while magnitude beats SynFlow's
  own choice within a layer: trained centrally for one epoch (mean of seeds
  0/1/2, ``benchmarks/fedtiny_mask_central.py``), SynFlow's counts with
  magnitude inside reach 0.8717 at density 0.01 vs SynFlow's mask 0.8643, and
  0.8778 at 0.05 vs 0.8723 (global magnitude: 0.8800). Candidates are then
  nested layer by layer: a layer given more weights keeps a superset.
* ``score``: candidate 0 is the score's own global mask; a perturbed layer keeps
  first the weights the score kept (best score first when shrinking), then the
  largest-magnitude weights of θ0 (when growing).

Candidate 0 keeps the score's layer-wise counts. Every other candidate shifts
each layer's density in logit space by a normal draw (``spread`` = its standard
deviation), then by one common shift so the total kept count is exactly that of
candidate 0. So every candidate has exactly the target density, and all differ
only in how it is spread over layers.

Why logit space: a sparse layer (density ≪ 1) moves by the same factor as in
log space, but a layer the score keeps nearly dense stays nearly dense. With a
log-normal factor on kept counts, FedTiny at density 0.01 drew a candidate that
cut the 800-weight first convolution from 97% to 22% kept, and BN selection —
whose signal at initialization is weak — installed it (BENCHMARKS.md, FedTiny).
"""

from __future__ import annotations

import numpy as np
import torch
from fedprune.models import prunable_names
from fedprune.pruning.schedules import data_free_mask
from fedprune.pruning.scores import scorer_for
from torch import nn

RANKINGS = ("magnitude", "score")  # how a candidate picks the weights within a layer (module docstring)


def perturbed_counts(base: dict[str, int], sizes: dict[str, int], rng: np.random.Generator,
                     spread: float) -> dict[str, int]:
    """Layer kept counts with density σ(logit(base/size) + spread·ε_l + s), each in [1, size], summing
    exactly to Σ base (s: the common shift that makes the total exact)."""
    names = list(base)
    total = sum(base.values())
    if total > sum(sizes.values()) or total < len(names):
        raise ValueError(f"cannot keep {total} weights in {len(names)} layers of {sum(sizes.values())}")
    high = np.array([sizes[n] for n in names], dtype=float)
    density = np.clip(np.array([base[n] for n in names], dtype=float), 0.5, high - 0.5) / high
    logits = np.log(density) - np.log1p(-density) + spread * rng.standard_normal(len(names))
    low = np.ones(len(names))

    def filled(shift: float) -> np.ndarray:
        return np.clip(high / (1.0 + np.exp(-(logits + shift))), low, high)

    lo, hi = -1.0, 1.0
    while filled(lo).sum() > total:
        lo *= 2
    while filled(hi).sum() < total:
        hi *= 2
    for _ in range(200):  # bisection on the common logit shift
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if filled(mid).sum() < total else (lo, mid)
    real = filled(hi)
    counts = np.floor(real).astype(np.int64)
    counts = np.clip(counts, 1, high.astype(np.int64))
    short = total - int(counts.sum())
    order = np.argsort(-(real - np.floor(real)), kind="stable")
    step = 1 if short > 0 else -1
    while short:  # hand out (or take back) the rounding remainder, respecting [1, size]
        for i in order:
            if short and 1 <= counts[i] + step <= high[i]:
                counts[i] += step
                short -= step
    return {n: int(c) for n, c in zip(names, counts, strict=True)}


def _ranked_layer(base_mask: np.ndarray, score: np.ndarray, magnitude: np.ndarray, keep: int) -> np.ndarray:
    """Keep ``keep`` positions: the base's kept ones by score first, then the others by magnitude."""
    flat_base = base_mask.reshape(-1)
    key = np.where(flat_base, 2.0 + score.reshape(-1) / (float(score.max()) or 1.0),
                   magnitude.reshape(-1) / (float(magnitude.max()) or 1.0))  # kept > 1 >= pruned
    order = np.argsort(-key, kind="stable")
    out = np.zeros(flat_base.size, dtype=bool)
    out[order[:keep]] = True
    return out.reshape(base_mask.shape)


def _largest(magnitude: np.ndarray, keep: int) -> np.ndarray:
    """The ``keep`` largest entries of one layer (ties: lowest flat position first)."""
    out = np.zeros(magnitude.size, dtype=bool)
    out[np.argsort(-magnitude.reshape(-1), kind="stable")[:keep]] = True
    return out.reshape(magnitude.shape)


def candidate_masks(model: nn.Module, score: str, density: float, count: int, seed: int,
                    spread: float = 0.5, ranking: str = "magnitude") -> list[dict[str, np.ndarray]]:
    """``count`` masks of exactly the same total kept count from ``model``'s θ0 (see module docstring)."""
    if count < 1:
        raise ValueError("count must be >= 1")
    if ranking not in RANKINGS:
        raise ValueError(f"candidate ranking '{ranking}' is not one of {RANKINGS}")
    base = data_free_mask(model, score, density, seed)
    names = prunable_names(model)
    params = dict(model.named_parameters())
    magnitude = {n: params[n].detach().abs().numpy() for n in names}
    base_counts = {n: int(base[n].sum()) for n in names}
    sizes = {n: int(base[n].size) for n in names}
    rng = np.random.default_rng(seed * 7_919 + 17)
    if ranking == "magnitude":
        allocations = [base_counts] + [perturbed_counts(base_counts, sizes, rng, spread) for _ in range(count - 1)]
        return [{n: _largest(magnitude[n], counts[n]) for n in names} for counts in allocations]
    if count == 1:
        return [base]
    raw = scorer_for(model, score)(model, seed, base)  # rank within a layer by the score under the base mask
    ranks = {n: raw[n].detach().double().numpy() if isinstance(raw[n], torch.Tensor) else np.asarray(raw[n])
             for n in names}
    masks = [base]
    for _ in range(count - 1):
        counts = perturbed_counts(base_counts, sizes, rng, spread)
        masks.append({n: _ranked_layer(base[n], ranks[n], magnitude[n], counts[n]) for n in names})
    return masks
