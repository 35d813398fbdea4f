"""Sign supermasks: w = m ⊙ |θ0| ⊙ sign(z) as a parametrization of each prunable layer.

The layer's trainable tensor becomes the latent score vector z over the kept
positions only; |θ0| and the mask are frozen buffers. The forward pass uses
sign(z) with a straight-through gradient (d sign(z)/dz := 1), so plain
optimizers train z. ``fold`` removes the parametrization and leaves the dense
weight, exactly (DESIGN §3: sign supermasks fold into one tensor).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize


class StraightThroughSign(torch.autograd.Function):
    """sign(z) forward (0 counts as +1), identity gradient backward."""

    @staticmethod
    def forward(ctx, z: torch.Tensor) -> torch.Tensor:
        return torch.where(z >= 0, 1.0, -1.0).to(z.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return grad


class SignSupermask(nn.Module):
    """Parametrization mapping kept-position scores z (1-D) to the layer's dense weight."""

    def __init__(self, mask: np.ndarray, magnitude: np.ndarray) -> None:
        super().__init__()
        flat_mask = torch.from_numpy(np.asarray(mask, dtype=bool).reshape(-1))
        self.shape = tuple(mask.shape)
        self.register_buffer("index", torch.nonzero(flat_mask).reshape(-1))
        self.register_buffer("magnitude", torch.as_tensor(np.asarray(magnitude, dtype=np.float32)).reshape(-1))
        if self.magnitude.numel() != self.index.numel():
            raise ValueError(f"{self.magnitude.numel()} magnitudes for {self.index.numel()} kept positions")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        signed = self.magnitude * StraightThroughSign.apply(z)
        weight = torch.zeros(int(np.prod(self.shape)), dtype=z.dtype, device=z.device)
        return weight.index_put((self.index,), signed).view(self.shape)

    def right_inverse(self, weight: torch.Tensor) -> torch.Tensor:
        return weight.reshape(-1)[self.index].clone()


def apply_sign_supermask(model: nn.Module, mask: dict[str, np.ndarray], magnitudes: dict[str, np.ndarray],
                         scores: dict[str, np.ndarray]) -> dict[str, nn.Parameter]:
    """Parametrize every masked weight of ``model``; return the score parameters z by weight name."""
    modules = dict(model.named_modules())
    latent = {}
    for name, layer_mask in mask.items():
        module_name, attr = name.rsplit(".", 1)
        module = modules[module_name]
        parametrize.register_parametrization(module, attr, SignSupermask(layer_mask, magnitudes[name]), unsafe=True)
        original = module.parametrizations[attr].original
        with torch.no_grad():
            original.copy_(torch.from_numpy(np.asarray(scores[name], dtype=np.float32)))
        latent[name] = original
    return latent


def fold(model: nn.Module) -> nn.Module:
    """Replace each parametrized weight by its current value m ⊙ |θ0| ⊙ sign(z) (inference form)."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for attr in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, attr, leave_parametrized=True)
    return model


def folded_weights(mask: dict[str, np.ndarray], magnitudes: dict[str, np.ndarray],
                   signs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The dense weights m ⊙ |θ0| ⊙ σ, computed without a model (server side)."""
    out = {}
    for name, layer_mask in mask.items():
        weight = np.zeros(layer_mask.size, dtype=np.float32)
        weight[layer_mask.reshape(-1)] = magnitudes[name] * signs[name]
        out[name] = weight.reshape(layer_mask.shape)
    return out
