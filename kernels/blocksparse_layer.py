"""A trainable Linear layer whose forward pass is the Triton block-sparse matmul (GPU, tile-structured masks).

Forward: ``y = x (W ⊙ M)ᵀ + b`` visiting only the 32×32 tiles of ``M`` that keep any weight
(``kernels.triton_blocksparse``). Backward: ``∂x = ∂y (W ⊙ M)`` and ``∂W = (∂yᵀ x) ⊙ M`` as dense masked
matmuls (cuBLAS), so pruned weights never receive a gradient. Only the forward pass is block-sparse: the
measured forward speed-ups (BENCHMARKS.md, "Triton block-sparse") reach a training step diluted by the dense
backward, and ``benchmarks/gpu_clients.py`` measures a real training step against dense. The tile list is
fixed by the mask, built once.
"""

from __future__ import annotations

import torch
from fedprune.kernels.triton_blocksparse import blocksparse_linear, tile_index
from torch import nn

TILE = 32


class _BlockSparseMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, mask: torch.Tensor, row_ptr: torch.Tensor,  # noqa: ANN001
                cols: torch.Tensor) -> torch.Tensor:
        masked = weight * mask
        ctx.save_for_backward(x, masked, mask)
        return blocksparse_linear(x.contiguous(), masked.contiguous(), row_ptr, cols, TILE, TILE, TILE)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):  # noqa: ANN001, ANN205 (torch's signature)
        x, masked, mask = ctx.saved_tensors
        grad_x = grad_y @ masked if ctx.needs_input_grad[0] else None
        grad_w = (grad_y.t() @ x) * mask if ctx.needs_input_grad[1] else None
        return grad_x, grad_w, None, None, None


class BlockSparseLinear(nn.Module):
    """Linear layer with a fixed mask whose forward visits only the mask's non-empty 32×32 tiles."""

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.weight = nn.Parameter((weight * mask).detach().clone())
        self.register_buffer("mask", mask.to(weight.dtype))
        row_ptr, cols = tile_index(self.mask, TILE, TILE)
        self.register_buffer("row_ptr", row_ptr)
        self.register_buffer("cols", cols)
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.shape[-1])
        y = _BlockSparseMatmul.apply(flat, self.weight, self.mask, self.row_ptr, self.cols)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.weight.shape[0])

    def dense_weight(self) -> torch.Tensor:
        """The effective dense weight W ⊙ M."""
        return (self.weight * self.mask).detach()
