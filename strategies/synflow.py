"""SynFlow: synaptic saliency, a data-free score (Tanaka et al. 2020), as DESIGN §4 fixes it.

The network runs on |θ| in double precision, with biases zeroed and BatchNorm
in eval mode, on an all-ones input; R = Σ output and each prunable weight
scores |∂R/∂θ ⊙ θ|. Scores are recomputed with the current mask applied,
so iterating (``strategies.schedules``) avoids layer collapse.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from models import prunable_names


def _input_shape(model: nn.Module) -> tuple[int, ...]:
    shape = getattr(model, "synflow_input_shape", None)
    if shape is None:
        raise ValueError("model needs `synflow_input_shape` (set by models.build_model)")
    return tuple(shape)


@torch.no_grad()
def _linearize(model: nn.Module, mask: dict[str, np.ndarray] | None) -> nn.Module:
    net = copy.deepcopy(model).double().eval()
    prunable = set(prunable_names(net))
    for name, param in net.named_parameters():
        if name in prunable:
            param.abs_()
            if mask is not None:
                param.mul_(torch.from_numpy(mask[name]).to(param.dtype))
        elif name.endswith("bias"):
            param.zero_()
        else:  # BatchNorm weights
            param.abs_()
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.running_mean.zero_()
            module.running_var.fill_(1.0)
    return net


def synflow_scores(model: nn.Module, seed: int = 0, mask: dict[str, np.ndarray] | None = None) -> dict[str, torch.Tensor]:
    """|∂R/∂θ ⊙ θ| for every prunable weight of ``model`` with ``mask`` applied (float64)."""
    net = _linearize(model, mask)
    ones = torch.ones((1, *_input_shape(model)), dtype=torch.float64)
    net.zero_grad()
    torch.sum(net(ones)).backward()
    params = dict(net.named_parameters())
    return {name: (params[name].grad * params[name]).detach().abs() for name in prunable_names(net)}
