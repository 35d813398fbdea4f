"""Client side of FedTiny's progressive pruning: top-K gradient magnitudes at pruned positions, coded.

In a round the server marks for adjustment, the training request names the
layer(s) to adjust and their K. The client trains exactly as in any other
round (every layer on its compact sparse kernel, only kept weights exist), and
a :class:`PrunedGradientTap` watches the adjusted layers: for each batch it
takes the layer's input and the gradient at its output and forms the weight
gradient a dense layer would have had there (a linear layer: gᵀx; a
convolution: ``conv2d_weight``). Summed over the local steps and divided by
their count, that is the mean gradient along the client's own trajectory. Only
the K largest magnitudes at pruned positions (and only nonzero ones) travel,
as coded (index, value) pairs inside the training reply — never a dense
gradient, and no extra exchange.

Memory: the trained weights, their gradients and the optimizer state stay
compact. The *dense* tap holds one accumulator per adjusted layer (the size of
that layer's dense weight) for the round: exact, but fc1 of the FL CNN alone is
6.4 MB. The *buffered* tap (``capacity`` per layer, 8·K from the server) never
forms the whole gradient: it computes each batch's gradient a few output rows
at a time (``pruning.progressive.tap_chunk_rows``) and keeps running sums at
no more than ``capacity`` pruned positions — a position already held adds the
chunk's value, the others compete by magnitude for the free or weakest slots
at the end of each batch.
A position that enters late misses its earlier batches, so the result
approximates the dense tap; with ``capacity`` ≥ the layer's pruned positions it
is the dense tap exactly (tests/test_fedtiny_units.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from fedprune.protos.contract import ConfigKey
from fedprune.pruning import progressive
from torch import nn
from torch.nn.grad import conv2d_weight


class TopKBuffer:
    """Running signed sums of one layer's gradient at no more than ``capacity`` pruned positions.

    One batch at a time (:meth:`add_batch`, its gradient in chunks): positions already held add the chunk's
    values, the others are entrants; at the end of the batch held sums and entrants compete by magnitude for
    the ``capacity`` slots. An entrant no larger than the weakest of ``capacity`` sums already known (held,
    when the buffer is full, or the entrants so far) could never win a slot and is dropped on the spot, so
    besides the held sums only the chunk and at most ``2·capacity`` entrants exist at any time
    (``pruning.budgets.ModelCost.tap_memory_bytes`` counts them). ``kept`` is the layer's flat kept mask,
    read in place (the client's own: the buffer copies nothing of the layer's size).
    """

    def __init__(self, kept: torch.Tensor, capacity: int) -> None:
        self.kept = kept.reshape(-1)
        self.capacity = capacity
        self.index = torch.empty(0, dtype=torch.int64)  # sorted by position between batches
        self.total = torch.empty(0)

    def _strongest(self, magnitude: torch.Tensor, floor: float) -> torch.Tensor:
        """Positions of at most ``capacity`` entries of ``magnitude`` above ``floor`` (the largest ones)."""
        above = magnitude > floor
        if int(above.sum()) <= self.capacity:
            return torch.nonzero(above, as_tuple=True)[0]
        top = magnitude.topk(self.capacity, sorted=False).indices
        return top[magnitude[top] > floor]

    def add_batch(self, chunks: Iterable[tuple[int, torch.Tensor]]) -> None:
        """Add one batch's gradient, given as (first flat position, values) chunks in increasing order.

        The chunks are consumed: each is overwritten in place."""
        if self.capacity <= 0:
            return
        floor = float(self.total.abs().min()) if self.index.numel() >= self.capacity else 0.0
        entrant_index: list[torch.Tensor] = []
        entrant_total: list[torch.Tensor] = []
        entrants = 0
        for start, chunk in chunks:
            values = chunk.reshape(-1)
            end = start + values.numel()
            values.masked_fill_(self.kept[start:end], 0.0)
            lo, hi = (int(i) for i in torch.searchsorted(self.index, torch.tensor([start, end])))
            if hi > lo:  # held positions in this chunk keep summing and do not enter again
                local = self.index[lo:hi] - start
                self.total[lo:hi] += values[local]
                values[local] = 0.0
            top = self._strongest(values.abs(), floor)
            if top.numel() == 0:
                continue
            entrant_index.append(top + start)
            entrant_total.append(values[top])
            entrants += top.numel()
            if entrants > self.capacity:  # keep the strongest `capacity` entrants; the weakest of them is a floor
                index, total = torch.cat(entrant_index), torch.cat(entrant_total)
                keep = total.abs().topk(self.capacity, sorted=False).indices
                entrant_index, entrant_total, entrants = [index[keep]], [total[keep]], self.capacity
                floor = max(floor, float(entrant_total[0].abs().min()))
        if not entrants:
            return
        index = torch.cat([self.index, *entrant_index])
        total = torch.cat([self.total, *entrant_total])
        if index.numel() > self.capacity:  # the weakest running sums give up their slots
            keep = total.abs().topk(self.capacity, sorted=False).indices
            index, total = index[keep], total[keep]
        order = torch.argsort(index)
        self.index, self.total = index[order], total[order]

    def dense(self, size: int) -> torch.Tensor:
        """The held sums scattered into a flat tensor of ``size`` (zero elsewhere)."""
        out = torch.zeros(size)
        out[self.index] = self.total
        return out

    def held_bytes(self) -> int:
        """Bytes the buffer holds now (index and sums)."""
        return self.index.numel() * self.index.element_size() + self.total.numel() * self.total.element_size()


class PrunedGradientTap:
    """Accumulates the dense weight gradient of chosen layers while they train on sparse kernels.

    Build it on the model *before* ``sparsify`` (it reads each layer's geometry), then call
    :meth:`attach` on the sparsified model. Reading only: the training step is unchanged.
    ``capacities`` (layer -> positions) makes those layers' taps buffered (module docstring); they need
    ``mask`` to know the pruned positions.
    """

    def __init__(self, model: nn.Module, layers: list[str], capacities: dict[str, int] | None = None,
                 mask: dict[str, np.ndarray] | None = None) -> None:
        modules = dict(model.named_modules())
        self.geometry: dict[str, dict[str, Any]] = {}
        for name in layers:
            module = modules[name.rsplit(".", 1)[0]]
            if isinstance(module, nn.Conv2d):
                self.geometry[name] = {"shape": tuple(module.weight.shape), "stride": module.stride,
                                       "padding": module.padding, "dilation": module.dilation,
                                       "groups": module.groups}
            elif isinstance(module, nn.Linear):
                self.geometry[name] = {"shape": tuple(module.weight.shape)}
            else:
                raise TypeError(f"{name}: {type(module).__name__} is not Linear/Conv2d")
        capacities = capacities or {}
        if capacities and mask is None:
            raise ValueError("a buffered tap needs the mask (its pruned positions)")
        self.buffers = {name: TopKBuffer(torch.from_numpy(np.asarray(mask[name], dtype=bool)), capacities[name])
                        for name in layers if name in capacities}
        self.sums = {name: torch.zeros(g["shape"]) for name, g in self.geometry.items() if name not in self.buffers}
        self.batches = dict.fromkeys(self.geometry, 0)
        self.peak_chunk_bytes = 0  # largest gradient chunk a buffered tap formed (measured)
        self._handles: list[Any] = []

    def attach(self, model: nn.Module) -> PrunedGradientTap:
        """Hook the (sparsified) modules of the tapped layers; each forward adds one batch's gradient."""
        modules = dict(model.named_modules())
        for name in self.geometry:
            self._handles.append(modules[name.rsplit(".", 1)[0]].register_forward_hook(self._forward_hook(name)))
        return self

    def detach(self) -> None:
        """Remove the hooks (the accumulated gradients stay)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def _forward_hook(self, name: str):
        geometry = self.geometry[name]

        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor | None:
            if not (module.training and torch.is_grad_enabled() and output.requires_grad):
                return None
            x = inputs[0].detach()
            self.batches[name] += 1

            def on_grad(grad: torch.Tensor) -> None:
                with torch.no_grad():
                    if name in self.buffers:
                        self._add_chunked(name, x, grad)
                    elif "stride" in geometry:
                        self.sums[name].add_(conv2d_weight(x, geometry["shape"], grad, geometry["stride"],
                                                           geometry["padding"], geometry["dilation"],
                                                           geometry["groups"]))
                    else:  # gᵀx added in place: no weight-sized temporary per batch
                        self.sums[name].addmm_(grad.reshape(-1, grad.shape[-1]).T, x.reshape(-1, x.shape[-1]))

            output.register_hook(on_grad)
            return output.clone()  # what follows may work in place (ReLU(inplace=True)); the tapped tensor stays

        return hook

    def _add_chunked(self, name: str, x: torch.Tensor, grad: torch.Tensor) -> None:
        """One batch's weight gradient of a buffered layer, a few output rows at a time, into its buffer."""
        self.buffers[name].add_batch(self._chunks(name, x, grad))

    def _chunks(self, name: str, x: torch.Tensor, grad: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """(first flat position, gradient) of each chunk of output rows, formed only when asked for."""
        geometry = self.geometry[name]
        shape = geometry["shape"]
        row = int(np.prod(shape[1:]))
        conv = "stride" in geometry
        # grouped convolutions: one chunk (the output-channel slice would need the matching input group)
        rows = shape[0] if conv and geometry["groups"] != 1 else progressive.tap_chunk_rows(row)
        flat_grad = grad if conv else grad.reshape(-1, grad.shape[-1]).T.contiguous()  # linear: (out, batch)
        flat_x = x if conv else x.reshape(-1, x.shape[-1])
        for first in range(0, shape[0], rows):
            last = min(shape[0], first + rows)
            if conv:
                chunk = conv2d_weight(flat_x, (last - first, *shape[1:]), flat_grad[:, first:last],
                                      geometry["stride"], geometry["padding"], geometry["dilation"],
                                      geometry["groups"])
            else:
                chunk = flat_grad[first:last] @ flat_x
            self.peak_chunk_bytes = max(self.peak_chunk_bytes, chunk.numel() * chunk.element_size())
            yield first * row, chunk

    def held_bytes(self) -> int:
        """Bytes the tap holds between batches: dense accumulators and buffers (measured, not estimated)."""
        return (sum(t.numel() * t.element_size() for t in self.sums.values())
                + sum(b.held_bytes() for b in self.buffers.values()))

    def mean_magnitudes(self, mask: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """|mean gradient over the tapped batches| per layer, zero at the positions ``mask`` keeps."""
        out = {}
        for name, geometry in self.geometry.items():
            size = int(np.prod(geometry["shape"]))
            total = self.buffers[name].dense(size) if name in self.buffers else self.sums[name]
            mean = total.abs().numpy().reshape(geometry["shape"]) / max(1, self.batches[name])
            out[name] = np.where(mask[name], 0.0, mean).astype(np.float32)
        return out


def top_k_pairs(magnitude: np.ndarray, k: int) -> np.ndarray:
    """A tensor shaped like ``magnitude`` holding only its k largest (nonzero) entries; ties by position."""
    flat = magnitude.reshape(-1)
    order = np.argsort(-flat, kind="stable")[:k]
    order = order[flat[order] > 0]
    out = np.zeros(flat.size, dtype=np.float32)
    out[order] = flat[order]
    return out.reshape(magnitude.shape)


def pairs_payload(tap: PrunedGradientTap, mask: dict[str, np.ndarray], ks: dict[str, int]) -> dict[str, np.ndarray]:
    """What a training reply adds for an adjustment: per adjusted layer, an array of its shape holding only
    its top-K magnitudes (sent as headerless reference pairs, ``protos.codec.encode(pairs=...)``)."""
    magnitudes = tap.mean_magnitudes(mask)
    return {name: top_k_pairs(magnitudes[name], k) for name, k in ks.items()}


def requested_capacities(config: Any, adjust: dict[str, int]) -> dict[str, int]:
    """Layers the training request asks to tap with a buffer, and each buffer's capacity (none: dense)."""
    if ConfigKey.ADJUST_BUFFER not in config:
        return {}
    capacities = [int(c) for c in config[ConfigKey.ADJUST_BUFFER]]
    if len(capacities) != len(adjust) or any(c < 0 for c in capacities):
        raise ValueError(f"{ConfigKey.ADJUST_BUFFER} {capacities} does not match the adjusted layers {list(adjust)}")
    return {name: c for name, c in zip(adjust, capacities, strict=True) if c > 0}


def requested_adjustment(config: Any, mask: dict[str, np.ndarray]) -> dict[str, int]:
    """The layers and K a training request asks pairs for (empty when the round adjusts nothing)."""
    if ConfigKey.ADJUST_LAYERS not in config:
        return {}
    layers = [str(x) for x in config[ConfigKey.ADJUST_LAYERS]]
    ks = [int(k) for k in config.get(ConfigKey.ADJUST_K, [])]
    if len(layers) != len(ks) or any(name not in mask for name in layers) or any(k < 1 for k in ks):
        raise ValueError(f"adjustment names unknown layers or bad K: {layers} / {ks}")
    return dict(zip(layers, ks, strict=True))
