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
from fedprune.kernels.csr import CSRLinear, _CSRMatmul
from fedprune.kernels.dispatch import Backend, choose_backend
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


class SignCSRLinear(nn.Module):
    """A sign-supermask Linear on the CSR kernel: values = |θ0| ⊙ sign(z) over kept positions only.

    Scores z, their gradient and optimizer state are kept-size; the weight is
    never materialized dense (the dispatcher's CSR choice for HideNseek layers).
    """

    def __init__(self, mask: np.ndarray, magnitude: np.ndarray, scores: np.ndarray,
                 bias: torch.Tensor | None = None) -> None:
        super().__init__()
        mask_t = torch.from_numpy(np.asarray(mask, dtype=bool))
        structure = CSRLinear(torch.zeros(mask_t.shape), mask_t, None)
        self.out_features, self.in_features = structure.out_features, structure.in_features
        for name in ("crow", "col", "crow_t", "col_t", "perm_t"):
            self.register_buffer(name, getattr(structure, name))
        self.register_buffer("magnitude", torch.as_tensor(np.asarray(magnitude, dtype=np.float32)))
        self.scores = nn.Parameter(torch.as_tensor(np.asarray(scores, dtype=np.float32)).clone())
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        values = self.magnitude * StraightThroughSign.apply(self.scores)
        lead = x.shape[:-1]
        out = _CSRMatmul.apply(values, x.reshape(-1, self.in_features).contiguous(), self.crow, self.col,
                               self.crow_t, self.col_t, self.perm_t, (self.out_features, self.in_features))
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*lead, self.out_features)


def apply_sign_supermask_sparse(model: nn.Module, mask: dict[str, np.ndarray], magnitudes: dict[str, np.ndarray],
                                scores: dict[str, np.ndarray], *, batch: int) -> dict[str, nn.Parameter]:
    """Like ``apply_sign_supermask``, but Linear layers the dispatcher prices as CSR become
    ``SignCSRLinear`` (kept-size compute and memory); the rest use the parametrization."""
    modules = dict(model.named_modules())
    device = next(model.parameters()).device  # the dispatcher's choice is for the device the model is on
    latent, rest = {}, {}
    for name, layer_mask in mask.items():
        module_name = name.rsplit(".", 1)[0]
        module = modules[module_name]
        if isinstance(module, nn.Linear) and choose_backend(
                torch.from_numpy(np.asarray(layer_mask, dtype=bool)), batch=batch, training=True,
                device=device) == Backend.CSR:
            bias = module.bias.detach() if module.bias is not None else None
            layer = SignCSRLinear(layer_mask, magnitudes[name], scores[name], bias)
            parent_name, _, attr = module_name.rpartition(".")
            setattr(modules[parent_name] if parent_name else model, attr, layer)
            latent[name] = layer.scores
        else:
            rest[name] = layer_mask
    latent.update(apply_sign_supermask(model, rest, {k: magnitudes[k] for k in rest}, {k: scores[k] for k in rest}))
    return latent
