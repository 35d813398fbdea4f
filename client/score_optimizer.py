"""How a HideNseek client steps its sign scores: layer-normalized SGD (default) or Adam.

Why not Adam: with a fresh Adam each round every score moves by about the
learning rate per step whatever its gradient, so a client's update is close to
the *sign* of its local gradient. Averaged over non-IID clients that is a
majority vote of gradient signs, which ignores how much each client cares about
a weight (signSGD's known bias under heterogeneity). Plain SGD keeps that
information but the score gradients of different layers differ by orders of
magnitude (dL/dz = |θ0| · dL/dw). Layer-normalized SGD divides each tensor's
gradient by its RMS and steps by ``lr`` × a per-tensor scale (the RMS of the
layer's |θ0|, so a step is relative to the weights it can flip): magnitudes are
compared within a layer, as in SGD, and layers move at comparable rates, as in
Adam. Measured in BENCHMARKS.md (HideNseek section).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch

SCORE_OPTIMIZERS = ("layer-sgd", "adam")
DENSE_SCALE_FLOOR = 1e-2  # step scale for a dense tensor whose initial values are all zero


class LayerNormalizedSGD(torch.optim.Optimizer):
    """p ← p − lr · scale · b, b ← μ·b + g / RMS(g): SGD with each tensor's gradient normalized by its RMS.

    ``scale`` is a per-group setting (the typical size of the tensor's values) so
    ``lr`` is a relative step size shared by all layers.
    """

    def __init__(self, params: Iterable, lr: float, momentum: float = 0.9, scale: float = 1.0) -> None:
        if lr <= 0 or not 0 <= momentum < 1 or scale <= 0:
            raise ValueError(f"need lr > 0, 0 <= momentum < 1, scale > 0 (got {lr}, {momentum}, {scale})")
        super().__init__(params, {"lr": lr, "momentum": momentum, "scale": scale})

    @torch.no_grad()
    def step(self, closure=None) -> None:  # noqa: ANN001 (torch's signature)
        """One normalized step for every parameter with a gradient."""
        for group in self.param_groups:
            for param in group["params"]:
                if param.grad is None:
                    continue
                grad = param.grad
                direction = grad / (grad.pow(2).mean().sqrt() + 1e-12)
                state = self.state[param]
                if "buffer" not in state:
                    state["buffer"] = direction.clone()
                else:
                    state["buffer"].mul_(group["momentum"]).add_(direction)
                param.add_(state["buffer"], alpha=-group["lr"] * group["scale"])


def score_optimizer(kind: str, model: torch.nn.Module, scores: dict[str, torch.nn.Parameter],
                    magnitudes: dict[str, np.ndarray], initial: dict[str, np.ndarray], lr: float,
                    momentum: float) -> torch.optim.Optimizer:
    """The optimizer a client trains ``model`` with: its ``scores`` and every other parameter (the
    dense biases/BN parameters, by state-dict name in ``initial``).

    For ``layer-sgd`` each score tensor's step scale is the RMS of its |θ0| and each dense tensor's the
    RMS of its initial value (floored), so ``lr`` means the same relative step everywhere.
    """
    score_ids = {id(param) for param in scores.values()}
    dense = {name: param for name, param in model.named_parameters() if id(param) not in score_ids}
    if kind == "adam":
        return torch.optim.Adam([*scores.values(), *dense.values()], lr=lr)
    if kind != "layer-sgd":
        raise ValueError(f"score optimizer '{kind}' is not one of {SCORE_OPTIMIZERS}")
    groups = [{"params": [param], "scale": float(np.sqrt(np.mean(np.square(magnitudes[name], dtype=np.float64))))}
              for name, param in scores.items()]
    groups += [{"params": [param], "scale": max(DENSE_SCALE_FLOOR, float(np.sqrt(np.mean(
        np.square(initial[name], dtype=np.float64)))))} for name, param in dense.items()]
    return LayerNormalizedSGD(groups, lr=lr, momentum=momentum)
