"""SynFlow: synaptic saliency, a data-free score (Tanaka et al. 2020), as DESIGN §4 fixes it.

The network runs on |θ| in double precision, with biases zeroed and BatchNorm
in eval mode, on an all-ones input; R = Σ output and each prunable weight
scores |∂R/∂θ ⊙ θ|. Scores are recomputed with the current mask applied,
so iterating (``pruning.schedules``) avoids layer collapse.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from fedprune.models import prunable_names
from torch import nn


def _input_shape(model: nn.Module) -> tuple[int, ...]:
    shape = getattr(model, "synflow_input_shape", None)
    if shape is None:
        raise ValueError("model needs `synflow_input_shape` (set by models.build_model)")
    return tuple(shape)


class SynFlowScorer:
    """Holds the linearized copy of a model (|θ|, float64, zero biases, BN eval) and scores it under masks.

    Building the copy once and only re-masking it per call makes 100 iterations cheap. ``device``: where the
    copy runs (scores come back on the CPU either way).
    """

    @torch.no_grad()
    def __init__(self, model: nn.Module, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.net = copy.deepcopy(model).double().eval().to(self.device)
        self.names = prunable_names(self.net)
        self.params = dict(self.net.named_parameters())
        for name, param in self.params.items():
            if name.endswith("bias") and name not in self.names:
                param.zero_()
            else:  # prunable weights and BatchNorm weights run on their magnitude
                param.abs_()
        for module in self.net.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
        self.magnitudes = {name: self.params[name].detach().clone() for name in self.names}
        self.ones = torch.ones((1, *_input_shape(model)), dtype=torch.float64, device=self.device)

    def __call__(self, mask: dict[str, np.ndarray] | None = None) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            for name in self.names:
                value = self.magnitudes[name]
                self.params[name].copy_(value if mask is None else value * torch.from_numpy(mask[name]).to(self.device))
        self.net.zero_grad()
        torch.sum(self.net(self.ones)).backward()
        return {name: (self.params[name].grad * self.params[name]).detach().abs().cpu() for name in self.names}


def synflow_scores(model: nn.Module, seed: int = 0,
                   mask: dict[str, np.ndarray] | None = None) -> dict[str, torch.Tensor]:
    """|∂R/∂θ ⊙ θ| for every prunable weight of ``model`` with ``mask`` applied (float64)."""
    return SynFlowScorer(model)(mask)
