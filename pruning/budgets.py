"""Client budgets → the density a client may train (FedTiny): memory in MB, compute in FLOPs per sample.

A submodel is priced on the kernels its client will run (``kernels.training_cost``): for the submask at the
run's batch size the dispatcher's backend per layer (dense-masked, compact or CSR) and exactly the tensors that
backend allocates — values, gradients and SGD momentum of what it trains, its mask/index buffers, the dense
biases/BatchNorm parameters and the model's buffers — and the FLOPs per sample those kernels execute
(6 x weights computed x output positions: the whole weight for dense-masked, the kept block for compact, the
kept values for CSR). A client's measured training state equals the memory estimate (tests/test_training_cost.py).

A client with budget below the global mask gets a nested submodel: every layer keeps the fraction r of its kept
weights (at least one) with the largest global magnitude; r is found by bisection over real submasks (cost need
not grow with r where a layer changes backend, so the result is a ratio whose submask fits, the largest where
cost grows with r). A budget that even the smallest submodel (one weight per layer, plus the dense parameters)
exceeds cannot be met by any density: ``BudgetError``. A kept value is then averaged over the clients whose
submodel holds it (``nested_mean``); one no client trained keeps its value. In an adjusting round FedTiny's
gradient tap adds its own memory and FLOPs (``ModelCost.tap_memory_bytes``, ``tap_flops_per_sample``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from fedprune.kernels.training_cost import ModelGeometry, TrainingCost, masked_cost
from fedprune.pruning import progressive
from torch import nn

MB = 1_000_000


class BudgetError(ValueError):
    """No density satisfies a client's declared memory/compute budget."""


@dataclass(frozen=True)
class Budget:
    """A client's declared limits (``inf`` = none)."""

    memory_mb: float = math.inf
    flops_per_sample: float = math.inf

    @property
    def unlimited(self) -> bool:
        return math.isinf(self.memory_mb) and math.isinf(self.flops_per_sample)


def parse_budget_tiers(text: str) -> list[Budget]:
    """``"0.5:2e6,1:inf"`` → budgets (MB:FLOPs per sample) assigned to partitions round-robin; "" → none."""
    tiers = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        memory, sep, flops = item.partition(":")
        if not sep:
            raise ValueError(f"budget tier '{item}' is not MB:FLOPS")
        values = (float(memory), float(flops))
        if any(math.isnan(v) or v <= 0 for v in values):
            raise ValueError(f"budget tier '{item}' must hold positive numbers (or inf)")
        tiers.append(Budget(*values))
    return tiers


@dataclass(frozen=True)
class ModelCost:
    """What the budget arithmetic needs to know about an architecture."""

    geometry: ModelGeometry  # per layer weight shape and output positions, dense parameters, buffers
    row_sizes: dict[str, int] = field(default_factory=dict)  # prunable layer -> weights per output row/channel

    @classmethod
    def of(cls, model: nn.Module, input_shape: tuple[int, ...]) -> ModelCost:
        geometry = ModelGeometry.of(model, input_shape)
        return cls(geometry, {n: math.prod(g.shape[1:]) for n, g in geometry.layers.items()})

    @property
    def sizes(self) -> dict[str, int]:
        """Prunable layer -> weights."""
        return {n: g.size for n, g in self.geometry.layers.items()}

    @property
    def positions(self) -> dict[str, int]:
        """Prunable layer -> output positions per sample."""
        return {n: g.positions for n, g in self.geometry.layers.items()}

    def training_cost(self, mask: dict[str, np.ndarray], batch: int) -> TrainingCost:
        """State bytes and FLOPs per sample of training ``mask`` at ``batch`` on the dispatcher's kernels (SGD
        with momentum: an upper bound for a run without)."""
        return masked_cost(self.geometry, mask, batch=batch, momentum=True)

    def tap_memory_bytes(self, layers: Sequence[str], capacities: Mapping[str, int] | None = None) -> int:
        """What FedTiny's gradient tap adds in an adjusting round (an upper bound of what it allocates).

        Dense tap (``capacities`` None): one float32 accumulator per layer. Buffered tap
        (``client.topk_gradients.TopKBuffer``), per layer: 9 B per chunk element (the float32 chunk, its
        magnitudes, one comparison byte) and 100 B per slot of ``capacities[layer]`` (the held int64 index
        and float32 sum, up to twice as many entrants, and the concatenation, magnitudes, selection and
        gathered result of a merge)."""
        if capacities is None:
            return 4 * sum(self.sizes[n] for n in layers)
        total = 0
        for n in layers:
            row = self.row_sizes.get(n, self.sizes[n])
            chunk = min(self.sizes[n], progressive.tap_chunk_rows(row) * row)
            total += 9 * chunk + 100 * capacities[n]
        return total

    def tap_flops_per_sample(self, layers: Sequence[str]) -> int:
        """The tap's FLOPs per sample: the dense weight gradient gᵀx of each adjusted layer (one multiply-add
        per weight and output position)."""
        return 2 * sum(self.sizes[n] * self.positions[n] for n in layers)


def fits_budget(cost: ModelCost, mask: dict[str, np.ndarray], budget: Budget, *, batch: int,
                tap_layers: Sequence[str] = (), tap_capacities: Mapping[str, int] | None = None) -> bool:
    """Whether training ``mask`` at ``batch`` (plus, in an adjusting round, the gradient tap on ``tap_layers``:
    dense, or buffered with ``tap_capacities``) fits ``budget``."""
    training = cost.training_cost(mask, batch)
    return (training.state_bytes + cost.tap_memory_bytes(tap_layers, tap_capacities) <= budget.memory_mb * MB
            and training.flops_per_sample + cost.tap_flops_per_sample(tap_layers) <= budget.flops_per_sample)


def scaled_counts(kept: dict[str, int], ratio: float) -> dict[str, int]:
    """Per-layer kept counts of a nested submodel: floor(ratio·k), at least 1, at most k."""
    return {n: max(1, min(k, int(math.floor(ratio * k + 1e-9)))) for n, k in kept.items()}


NestedOrder = dict[str, np.ndarray]  # per layer, the flat kept positions by decreasing |w| (ties by position)


def nested_order(mask: dict[str, np.ndarray], weights: dict[str, np.ndarray]) -> NestedOrder:
    """The order nested submodels keep weights in: per layer, the kept positions by decreasing |w|."""
    out = {}
    for name, layer_mask in mask.items():
        active = np.flatnonzero(layer_mask.reshape(-1))
        out[name] = active[np.argsort(-np.abs(weights[name].reshape(-1)[active]), kind="stable")]
    return out


def submask_of(mask: dict[str, np.ndarray], order: NestedOrder, ratio: float) -> dict[str, np.ndarray]:
    """The nested submask at ``ratio``: per layer the first ``scaled_counts`` positions of ``order``."""
    if ratio >= 1.0:
        return mask
    counts = scaled_counts({n: len(o) for n, o in order.items()}, ratio)
    out = {}
    for name, layer_mask in mask.items():
        sub = np.zeros(layer_mask.size, dtype=bool)
        sub[order[name][:counts[name]]] = True
        out[name] = sub.reshape(layer_mask.shape)
    return out


def nested_submask(mask: dict[str, np.ndarray], weights: dict[str, np.ndarray], ratio: float) -> dict[str, np.ndarray]:
    """Per layer, the ``ratio`` share (at least one) of the kept weights with the largest |w|; ties by position."""
    return mask if ratio >= 1.0 else submask_of(mask, nested_order(mask, weights), ratio)


def check_smallest(cost: ModelCost, smallest: dict[str, np.ndarray], budget: Budget, *, batch: int) -> None:
    """``BudgetError`` if ``smallest`` (the one-weight-per-layer submask) does not fit ``budget``."""
    if not fits_budget(cost, smallest, budget, batch=batch):
        need = cost.training_cost(smallest, batch)
        raise BudgetError(
            f"memory {budget.memory_mb:g} MB / compute {budget.flops_per_sample:g} FLOPs per sample cannot be met "
            f"by any density: the smallest submodel (one weight per layer) needs "
            f"{need.state_bytes / MB:.4f} MB and {need.flops_per_sample:,} FLOPs per sample")


def one_weight_mask(cost: ModelCost) -> dict[str, np.ndarray]:
    """A submask keeping the first weight of every layer. What any smallest submodel costs: a single weight's
    layer gets the same backend and tensors wherever the weight is (one row, one column, one value)."""
    out = {}
    for name, layer in cost.geometry.layers.items():
        mask = np.zeros(layer.size, dtype=bool)
        mask[0] = True
        out[name] = mask.reshape(layer.shape)
    return out


BISECTION_PROBES = 30  # ratio resolution 2**-30: below one weight of a layer with up to ~10^9 kept


def ratio_for_budget(cost: ModelCost, mask: dict[str, np.ndarray], weights: dict[str, np.ndarray],
                     budget: Budget, *, batch: int) -> float:
    """A ratio in [0, 1] whose nested submask of ``mask`` (``nested_submask`` with ``weights``) fits ``budget``
    when trained at ``batch``: 1 if the mask fits, else bisection over real submasks (each probe priced on the
    backends the dispatcher picks for it). ``BudgetError`` if the smallest submask does not fit."""
    if fits_budget(cost, mask, budget, batch=batch):
        return 1.0
    order = nested_order(mask, weights)
    check_smallest(cost, submask_of(mask, order, 0.0), budget, batch=batch)
    kept = {n: len(o) for n, o in order.items()}
    lo, hi = 0.0, 1.0
    verdicts: dict[tuple[int, ...], bool] = {}
    for _ in range(BISECTION_PROBES):
        mid = (lo + hi) / 2
        counts = tuple(scaled_counts(kept, mid).values())
        if counts not in verdicts:
            verdicts[counts] = fits_budget(cost, submask_of(mask, order, mid), budget, batch=batch)
        lo, hi = (mid, hi) if verdicts[counts] else (lo, mid)
    return lo


def nested_mean(current: np.ndarray, values: Sequence[np.ndarray], covers: Sequence[np.ndarray | None],
                weights: Sequence[float]) -> np.ndarray:
    """Entry by entry, the weighted mean of ``values`` over the clients that trained it; ``current`` where
    none did.

    ``values[i]`` holds client i's values of the entries ``covers[i]`` marks (a boolean mask over
    ``current``; ``None``: every entry). Each term ``weights[i] * values[i]`` is formed in the values' own
    dtype, then summed in float64 in the given order (the caller fixes it), so the result is reproducible
    whatever order replies arrived in; it has ``current``'s dtype."""
    sums = np.zeros(current.shape, np.float64)
    cover = np.zeros(current.shape, np.float64)
    for value, where, weight in zip(values, covers, weights, strict=True):
        if where is None:
            sums += weight * value
            cover += weight
        else:
            sums[where] += weight * value
            cover[where] += weight
    return np.where(cover > 0, sums / np.maximum(cover, 1e-300), current).astype(current.dtype)
