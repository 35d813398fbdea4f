"""Candidate masks for FedTiny's adaptive BN selection: one seeded θ0, layer-wise densities perturbed.

The score decides how many weights each layer keeps (its global mask's
layer-wise counts); the ``ranking`` decides which ones:

* ``magnitude``: the largest |θ0| within each layer. SynFlow's
  allocation avoids layer collapse (global magnitude keeps 0–2 fc1 weights of the
  FL CNN at density 0.01 and never trains), while magnitude beats SynFlow's
  own choice within a layer: trained centrally for one epoch (mean of seeds
  0/1/2, ``benchmarks/fedtiny_mask_central.py``), SynFlow's counts with
  magnitude inside reach 0.8717 at density 0.01 vs SynFlow's mask 0.8643, and
  0.8778 at 0.05 vs 0.8723 (global magnitude: 0.8800). Candidates are then
  nested layer by layer: a layer given more weights keeps a superset.
* ``block-magnitude`` (FedTiny's default): the largest |θ0| inside the block of channels the score's
  mask keeps in that layer (its kept output rows × kept input columns; for a
  convolution, every kernel tap of those channel pairs), and a perturbed layer
  keeps at most that block. The block is what a compact layer computes
  (``kernels.training_cost``), so no candidate costs a client more FLOPs than
  the score's own mask (memory moves with the allocation, ±0.5% of dense): at
  density 0.01 on the FL CNN-BN SynFlow keeps conv2's weights in 10 of 64 output
  channels, so its mask trains at 18% of dense FLOPs, while ``magnitude`` spreads
  them over all 64 and costs 87%
  (``benchmarks/fedtiny_candidate_costs.py``). Federated over 100 rounds at 0.01
  it ends within noise of ``magnitude`` (−0.50 / +0.18 / +0.28 points at seeds
  0/1/2, ``benchmarks/fedtiny_horizon.py``), so it is the default.
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

Choosing among them (``strategies.bn_selection`` runs the exchanges): clients' re-estimated BatchNorm
statistics are pooled per candidate (``pool_statistics``), and the candidate with the lowest sample-weighted
validation loss under them wins (``select_candidate``; ``loss_margins`` says whether it won beyond noise) —
with ``select_with_evidence`` only if it beats candidate 0 by more than z standard errors.
"""

from __future__ import annotations

import numpy as np
import torch
from fedprune.models import prunable_names
from fedprune.pruning.schedules import data_free_mask
from fedprune.pruning.scores import scorer_for
from torch import nn

RANKINGS = ("magnitude", "block-magnitude", "score")  # how a candidate picks a layer's weights (module docstring)
BN_STATS = ("running_mean", "running_var")


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


def channel_block(mask: np.ndarray) -> np.ndarray:
    """Positions in the block of channels ``mask`` touches: kept output rows × kept input columns (for a
    convolution every kernel tap of those channel pairs), the block a compact layer computes."""
    grid = mask.reshape(mask.shape[0], mask.shape[1], -1).any(-1)
    block = np.outer(grid.any(1), grid.any(0)).reshape(grid.shape + (1,) * (mask.ndim - 2))
    return np.broadcast_to(block, mask.shape).copy()


def _largest_within(magnitude: np.ndarray, within: np.ndarray, keep: int) -> np.ndarray:
    """The ``keep`` largest entries of one layer among the positions ``within`` allows (``keep`` must not
    exceed them; ties: lowest flat position first)."""
    return _largest(np.where(within, magnitude, -1.0), keep)


def candidate_masks(model: nn.Module, score: str, density: float, count: int, seed: int,
                    spread: float = 0.5, ranking: str = "block-magnitude") -> list[dict[str, np.ndarray]]:
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
    if ranking == "block-magnitude":
        blocks = {n: channel_block(base[n]) for n in names}
        capacity = {n: int(blocks[n].sum()) for n in names}
        allocations = [base_counts] + [perturbed_counts(base_counts, capacity, rng, spread) for _ in range(count - 1)]
        return [{n: _largest_within(magnitude[n], blocks[n], counts[n]) for n in names} for counts in allocations]
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


# -- choosing a candidate: pooled BatchNorm statistics and the validation losses under them ----------------


def bn_stat_names(state: dict[str, np.ndarray]) -> list[str]:
    """Running mean/variance buffers of every BatchNorm layer in a state dict, in order."""
    return [k for k in state if k.rsplit(".", 1)[-1] in BN_STATS]


def pool_statistics(uploads: list[dict[str, np.ndarray]], weights: list[float]) -> dict[str, np.ndarray]:
    """Sample-weighted pooled mean and variance: Var = Σw(var + mean²)/Σw − mean_pooled² (per buffer pair)."""
    total = float(sum(weights))
    pooled: dict[str, np.ndarray] = {}
    for name in uploads[0]:
        if not name.endswith("running_mean"):
            continue
        var_name = name[: -len("running_mean")] + "running_var"
        mean = sum(w / total * u[name].astype(np.float64) for u, w in zip(uploads, weights, strict=True))
        second = sum(w / total * (u[var_name].astype(np.float64) + u[name].astype(np.float64) ** 2)
                     for u, w in zip(uploads, weights, strict=True))
        pooled[name] = mean.astype(np.float32)
        pooled[var_name] = np.maximum(second - mean ** 2, 0.0).astype(np.float32)
    return pooled


def select_candidate(losses: list[list[float]], weights: list[float]) -> tuple[int, list[float]]:
    """Index of the lowest sample-weighted mean loss (ties: lowest index) and every candidate's mean loss."""
    table = np.asarray(losses, dtype=np.float64)  # clients x candidates
    mean = (table * np.asarray(weights, dtype=np.float64)[:, None]).sum(0) / float(sum(weights))
    return int(np.argmin(mean)), [float(v) for v in mean]


def select_with_evidence(losses: list[list[float]], weights: list[float], z: float) -> tuple[int, int]:
    """(installed, lowest): ``lowest`` is ``select_candidate``'s choice; it is installed only if ``z`` is 0, it is
    candidate 0, or candidate 0's paired loss margin behind it exceeds ``z`` standard errors — else candidate 0.

    Why: at a random θ0 every candidate's loss sits near ln(classes) and the lowest is often the lowest by
    noise; candidate 0 has the score's own layer allocation, and a perturbation of it should replace it only
    where the clients' data say so (ties of the margin with z·SE keep candidate 0).
    """
    lowest, _ = select_candidate(losses, weights)
    if z <= 0 or lowest == 0:
        return lowest, lowest
    margin, stderr = loss_margins(losses, weights, lowest)[0]
    return gated_candidate(lowest, margin, stderr, z), lowest


def gated_candidate(lowest: int, margin: float, stderr: float, z: float) -> int:
    """The candidate ``select_with_evidence`` installs, from the lowest-loss candidate and candidate 0's paired
    loss margin behind it with its standard error (what a run's report records, so a reader of the report
    applies the same rule): ``lowest`` if ``z`` is 0, it is candidate 0, or the margin exceeds ``z`` standard
    errors; else candidate 0."""
    return lowest if z <= 0 or lowest == 0 or margin > z * stderr else 0


def loss_margins(losses: list[list[float]], weights: list[float], chosen: int) -> list[tuple[float, float]]:
    """Each candidate's sample-weighted mean loss minus the chosen one's, paired client by client, and the
    standard error of that difference across clients (0 with one client).

    Why: at initialization every candidate's loss sits near ln(classes); a margin within about two standard
    errors means the clients' data did not tell the candidates apart, which the run report should say.
    """
    table = np.asarray(losses, dtype=np.float64)  # clients x candidates
    w = np.asarray(weights, dtype=np.float64) / float(sum(weights))
    diffs = table - table[:, [chosen]]
    mean = (diffs * w[:, None]).sum(0)
    n = table.shape[0]
    if n < 2:
        return [(float(m), 0.0) for m in mean]
    var = ((diffs - mean) ** 2 * (w ** 2)[:, None]).sum(0) * n / (n - 1)
    return [(float(m), float(np.sqrt(v))) for m, v in zip(mean, var, strict=True)]
