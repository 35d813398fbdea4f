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

Memory: the tap holds one dense accumulator per adjusted layer (the same size
as that layer's dense weight) for the round; the trained weights, their
gradients and the optimizer state stay compact.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.grad import conv2d_weight

from strategies.fedtiny import GRAD


class PrunedGradientTap:
    """Accumulates the dense weight gradient of chosen layers while they train on sparse kernels.

    Build it on the model *before* ``sparsify`` (it reads each layer's geometry), then call
    :meth:`attach` on the sparsified model. Reading only: the training step is unchanged.
    """

    def __init__(self, model: nn.Module, layers: list[str]) -> None:
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
        self.sums = {name: torch.zeros(g["shape"]) for name, g in self.geometry.items()}
        self.batches = dict.fromkeys(self.geometry, 0)
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
                    if "stride" in geometry:
                        self.sums[name].add_(conv2d_weight(x, geometry["shape"], grad, geometry["stride"],
                                                           geometry["padding"], geometry["dilation"],
                                                           geometry["groups"]))
                    else:  # gᵀx added in place: no weight-sized temporary per batch
                        self.sums[name].addmm_(grad.reshape(-1, grad.shape[-1]).T, x.reshape(-1, x.shape[-1]))

            output.register_hook(on_grad)
            return output.clone()  # what follows may work in place (ReLU(inplace=True)); the tapped tensor stays

        return hook

    def mean_magnitudes(self, mask: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """|mean gradient over the tapped batches| per layer, zero at the positions ``mask`` keeps."""
        out = {}
        for name, total in self.sums.items():
            mean = total.abs().numpy() / max(1, self.batches[name])
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
    """The tensors a training reply adds for an adjustment: ``grad/<layer>`` holding only its top-K pairs."""
    magnitudes = tap.mean_magnitudes(mask)
    return {GRAD + name: top_k_pairs(magnitudes[name], k) for name, k in ks.items()}


def requested_adjustment(config: Any, mask: dict[str, np.ndarray]) -> dict[str, int]:
    """The layers and K a training request asks pairs for (empty when the round adjusts nothing)."""
    if "adjust-layers" not in config:
        return {}
    layers, ks = [str(x) for x in config["adjust-layers"]], [int(k) for k in config.get("adjust-k", [])]
    if len(layers) != len(ks) or any(name not in mask for name in layers) or any(k < 1 for k in ks):
        raise ValueError(f"adjustment names unknown layers or bad K: {layers} / {ks}")
    return dict(zip(layers, ks, strict=True))
