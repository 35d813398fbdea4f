"""Client budgets → the density a client may train (FedTiny): memory in MB, compute in FLOPs per sample.

Estimates for a sparse submodel whose prunable layer ℓ keeps k_ℓ weights, trained
with SGD + momentum through compact/CSR kernels (DESIGN §4: training memory
follows the kept weights):

* parameter memory = 4 B × 3 (value, gradient, momentum) per trainable value
  (kept weights + dense biases/BatchNorm) + 4 B of index per kept weight (int32)
  + 4 B per buffer value (BatchNorm running statistics);
* training FLOPs per sample = 3 × 2 × Σ k_ℓ · S_ℓ, where S_ℓ is the number of
  output positions of layer ℓ (1 for Linear, H_out·W_out for a convolution):
  one multiply-add per kept weight and output position forward, about twice
  that backward.

A client with budget below the global mask gets a nested submodel: every layer
keeps the fraction r of its kept weights (at least one) with the largest global
magnitude; r is the largest value both budgets allow. A budget that even one
weight per layer (plus the dense parameters) exceeds cannot be met by any
density: ``BudgetError``. A kept value is then averaged over the clients whose
submodel holds it (``nested_mean``); one no client trained keeps its value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from fedprune.models import prunable_names
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

    sizes: dict[str, int]  # prunable layer -> weights
    positions: dict[str, int]  # prunable layer -> output positions per sample
    dense_values: int  # trainable values outside the prunable weights (biases, BatchNorm)
    buffer_values: int  # running statistics
    row_sizes: dict[str, int] = field(default_factory=dict)  # prunable layer -> weights per output row/channel

    @classmethod
    def of(cls, model: nn.Module, input_shape: tuple[int, ...]) -> ModelCost:
        names = prunable_names(model)
        modules = dict(model.named_modules())
        positions: dict[str, int] = {}
        hooks = []
        for name in names:
            module = modules[name.rsplit(".", 1)[0]]

            def record(mod, inputs, output, key=name):
                positions[key] = int(output[0].numel() // output.shape[1]) if output.dim() > 2 else 1
            hooks.append(module.register_forward_hook(record))
        was_training = model.training
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
        model.train(was_training)
        for hook in hooks:
            hook.remove()
        params = dict(model.named_parameters())
        dense = sum(p.numel() for n, p in params.items() if n not in names)
        buffers = sum(b.numel() for n, b in model.named_buffers() if not n.endswith("num_batches_tracked"))
        return cls({n: params[n].numel() for n in names}, positions, dense, buffers,
                   {n: params[n][0].numel() for n in names})

    def memory_bytes(self, kept: dict[str, int]) -> int:
        """Estimated parameter memory (values, gradients, momentum, indices, buffers) of a submodel."""
        weights = sum(kept.values())
        return 16 * weights + 12 * self.dense_values + 4 * self.buffer_values

    def flops_per_sample(self, kept: dict[str, int]) -> int:
        """Estimated training FLOPs per sample (forward + backward) of a submodel."""
        return 6 * sum(kept[n] * self.positions[n] for n in kept)

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


def fits_budget(cost: ModelCost, kept: dict[str, int], budget: Budget, tap_layers: Sequence[str] = (),
                tap_capacities: Mapping[str, int] | None = None) -> bool:
    """Whether a submodel (plus, in an adjusting round, the gradient tap on ``tap_layers``: dense, or
    buffered with ``tap_capacities``) fits ``budget``."""
    return (cost.memory_bytes(kept) + cost.tap_memory_bytes(tap_layers, tap_capacities) <= budget.memory_mb * MB
            and cost.flops_per_sample(kept) + cost.tap_flops_per_sample(tap_layers) <= budget.flops_per_sample)


def scaled_counts(kept: dict[str, int], ratio: float) -> dict[str, int]:
    """Per-layer kept counts of a nested submodel: floor(ratio·k), at least 1, at most k."""
    return {n: max(1, min(k, int(math.floor(ratio * k + 1e-9)))) for n, k in kept.items()}


def ratio_for_budget(cost: ModelCost, kept: dict[str, int], budget: Budget) -> float:
    """Largest r in (0, 1] whose nested submodel fits ``budget``; ``BudgetError`` if none does."""
    if fits_budget(cost, kept, budget):
        return 1.0
    smallest = {n: 1 for n in kept}
    if not fits_budget(cost, smallest, budget):
        raise BudgetError(
            f"memory {budget.memory_mb:g} MB / compute {budget.flops_per_sample:g} FLOPs per sample cannot be met "
            f"by any density: the smallest submodel (one weight per layer) needs "
            f"{cost.memory_bytes(smallest) / MB:.4f} MB and {cost.flops_per_sample(smallest):,} FLOPs per sample")
    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if fits_budget(cost, scaled_counts(kept, mid), budget) else (lo, mid)
    return lo


def nested_submask(mask: dict[str, np.ndarray], weights: dict[str, np.ndarray], ratio: float) -> dict[str, np.ndarray]:
    """Per layer, the ``ratio`` share (at least one) of the kept weights with the largest |w|; ties by position."""
    if ratio >= 1.0:
        return mask
    counts = scaled_counts({n: int(m.sum()) for n, m in mask.items()}, ratio)
    out = {}
    for name, layer_mask in mask.items():
        flat = layer_mask.reshape(-1)
        active = np.flatnonzero(flat)
        keep = active[np.argsort(-np.abs(weights[name].reshape(-1)[active]), kind="stable")[:counts[name]]]
        sub = np.zeros(flat.size, dtype=bool)
        sub[keep] = True
        out[name] = sub.reshape(layer_mask.shape)
    return out


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
