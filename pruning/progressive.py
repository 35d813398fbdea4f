"""FedTiny's progressive pruning: when to adjust, which layers, how many, and the grow/prune step.

Every ``every`` rounds until ``until`` the server asks clients for the top-K
gradient magnitudes at *pruned* positions of the layer(s) being adjusted, sums
them (sample-weighted), grows the K positions with the largest aggregate
(new weights start at 0) and prunes the K smallest-magnitude weights that were
active before, in the same layer, so the layer's (and the model's) density
stays constant. K_t = α/2·(1 + cos(π t / T_end)) × the layer's active count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LAYER_ORDERS = ("output-first", "all")

# How a client forms the pruned-position gradient of an adjusted layer (client/topk_gradients.py):
# ``dense`` sums it over the local steps in one accumulator the size of the layer (exact); ``buffered`` forms
# each batch's gradient a few output rows at a time and keeps running sums at only TAP_BUFFER_FACTOR·K pruned
# positions (approximate, memory O(chunk + K)); ``auto`` gives each node the dense tap if its budget holds it,
# else the buffered one if that fits, else no tap.
GRADIENT_TAPS = ("auto", "dense", "buffered")
TAP_CHUNK_ELEMENTS = 16_384  # weights of one gradient chunk (64 KiB in float32), at least one output row
TAP_BUFFER_FACTOR = 8  # 4 kept 40–51% of fc1's exact top-K, 8 kept 51–62% (benchmarks/fedtiny_tap_agreement.py)


def tap_chunk_rows(row_size: int) -> int:
    """Output rows (channels) per chunk of a buffered tap for a layer whose rows hold ``row_size`` weights."""
    return max(1, TAP_CHUNK_ELEMENTS // max(1, row_size))


def tap_buffer_capacity(k: int, size: int) -> int:
    """Pruned positions a buffered tap keeps running sums for, when the server asks for K pairs of a layer
    of ``size`` weights (never more than the layer has)."""
    return min(TAP_BUFFER_FACTOR * k, size)


def adjustment_rounds(every: int, until: int) -> list[int]:
    """Completed-round counts t after which the mask is adjusted: every, 2·every, ... <= until."""
    if every <= 0 or until <= 0:
        return []
    return list(range(every, until + 1, every))


def cosine_k(t: int, until: int, alpha: float, active: int) -> int:
    """K_t = floor(α/2·(1 + cos(π t / T_end)) × active): how many weights to move at step t."""
    if until <= 0 or not 0 <= t <= until:
        return 0
    return int(math.floor(alpha / 2 * (1 + math.cos(math.pi * t / until)) * active))


def layers_to_adjust(names: list[str], step: int, order: str) -> list[str]:
    """Layers adjusted at the ``step``-th adjustment (0-based): one per step output→input, or all of them."""
    if order not in LAYER_ORDERS:
        raise ValueError(f"layer order '{order}' is not one of {LAYER_ORDERS}")
    if order == "all":
        return list(names)
    reversed_names = list(reversed(names))
    return [reversed_names[step % len(reversed_names)]]


def aggregate_magnitudes(uploads: list[tuple[np.ndarray, np.ndarray]], weights: list[float],
                         size: int) -> np.ndarray:
    """Sample-weighted mean over clients of sparse (indices, |g|) uploads, as a dense vector of ``size``."""
    total = float(sum(weights))
    out = np.zeros(size, dtype=np.float64)
    for (indices, values), weight in zip(uploads, weights, strict=True):
        np.add.at(out, indices, values.astype(np.float64) * (weight / total))
    return out


@dataclass(frozen=True)
class LayerAdjustment:
    """What one grow/prune step did to one layer."""

    k: int
    grown: np.ndarray  # flat indices that became active (weights start at 0)
    pruned: np.ndarray  # flat indices that became inactive

    @property
    def moved(self) -> int:
        return int(self.grown.size)


def smallest_active(weights: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Flat indices of the active (kept) weights, smallest |w| first (ties by position): the order in which
    a grow/prune step prunes them."""
    active = np.flatnonzero(mask.reshape(-1))
    return active[np.argsort(np.abs(weights.reshape(-1)[active]), kind="stable")]


def grow_and_prune(weights: np.ndarray, mask: np.ndarray, grow_score: np.ndarray,
                   k: int) -> tuple[np.ndarray, np.ndarray, LayerAdjustment]:
    """Grow the top-k pruned positions by ``grow_score``, prune the k smallest |w| of the active ones.

    Only positions inactive before the step can grow (and only with a positive
    score); only positions active before can be pruned; at least one stays
    active. Returns (new weights with pruned and grown entries at 0, new mask, what moved).
    """
    flat_mask = mask.reshape(-1).astype(bool)
    flat_w = weights.reshape(-1).astype(np.float32, copy=True)
    score = np.where(flat_mask, 0.0, grow_score.reshape(-1))
    growable = np.flatnonzero(score > 0)
    active = np.flatnonzero(flat_mask)
    k = max(0, min(int(k), growable.size, active.size - 1))
    if k == 0:
        empty = np.zeros(0, dtype=np.int64)
        return weights.copy(), mask.copy(), LayerAdjustment(0, empty, empty)
    grow = growable[np.argsort(-score[growable], kind="stable")[:k]]
    prune = smallest_active(flat_w, flat_mask)[:k]
    flat_mask = flat_mask.copy()
    flat_mask[prune] = False
    flat_mask[grow] = True
    flat_w[prune] = 0.0
    flat_w[grow] = 0.0
    return (flat_w.reshape(weights.shape), flat_mask.reshape(mask.shape),
            LayerAdjustment(k, np.sort(grow), np.sort(prune)))
