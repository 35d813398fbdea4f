"""Dense-masked layers: the reference every other backend is tested and timed against.

The weight is stored dense and multiplied by the mask in every forward pass, so
cost and memory are those of the dense layer whatever the density — exactly
what today's federated-pruning code does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class MaskedLinear(nn.Module):
    """y = x (W ⊙ M)ᵀ + b with a dense W and a fixed boolean mask M."""

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter((weight * mask).detach().clone())
        self.register_buffer("mask", mask.to(weight.dtype))
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)

    def dense_weight(self) -> torch.Tensor:
        """The effective dense weight W ⊙ M."""
        return (self.weight * self.mask).detach()


class MaskedConv2d(nn.Module):
    """Conv2d with a dense weight multiplied by a fixed mask each forward pass."""

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None,
                 stride=1, padding=0, dilation=1, groups: int = 1) -> None:
        super().__init__()
        self.weight = nn.Parameter((weight * mask).detach().clone())
        self.register_buffer("mask", mask.to(weight.dtype))
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
        self.stride, self.padding, self.dilation, self.groups = stride, padding, dilation, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.mask, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def dense_weight(self) -> torch.Tensor:
        """The effective dense weight W ⊙ M."""
        return (self.weight * self.mask).detach()
