"""Compact layers: rows / output channels (and input columns / channels) that are entirely pruned are
sliced away, so what runs is a smaller dense layer (DESIGN §3: the approach that always wins).

Inside the kept block the mask still applies (an unstructured remainder is
multiplied in), and only the kept block is stored, trained and optimized.
A pruned output row still emits its bias, so outputs are scattered back to the
full width and the layer is a drop-in replacement.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _kept_index(mask2d: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.nonzero(mask2d.any(dim=dim)).reshape(-1)


def _init_kept_block(layer: nn.Module, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None,
                     rows_cols_mask: torch.Tensor) -> None:
    """Store only the kept block (rows x cols that keep any weight), its residual mask, and the bias."""
    rows, cols = _kept_index(rows_cols_mask, 1), _kept_index(rows_cols_mask, 0)
    layer.register_buffer("rows", rows)
    layer.register_buffer("cols", cols)
    block_mask = mask[rows][:, cols]
    layer.weight = nn.Parameter((weight[rows][:, cols] * block_mask).detach().clone())
    layer.register_buffer("block_mask", block_mask.to(weight.dtype) if not bool(block_mask.all()) else None)
    layer.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None
    layer.full_rows = len(rows) == weight.shape[0]
    layer.full_cols = len(cols) == weight.shape[1]


class CompactLinear(nn.Module):
    """Linear restricted to the rows and columns that keep at least one weight."""

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        _init_kept_block(self, weight, mask, bias, mask)

    def _block(self) -> torch.Tensor:
        return self.weight if self.block_mask is None else self.weight * self.block_mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.rows) == 0:  # everything pruned: the layer emits its bias
            shape = (*x.shape[:-1], self.out_features)
            return x.new_zeros(shape) if self.bias is None else self.bias.expand(shape) + x.sum() * 0
        xs = x if self.full_cols else x.index_select(-1, self.cols)
        if self.full_rows:
            return F.linear(xs, self._block(), self.bias)
        kept = F.linear(xs, self._block())
        out = x.new_zeros(*x.shape[:-1], self.out_features) if self.bias is None else \
            self.bias.expand(*x.shape[:-1], self.out_features).clone()
        return out.index_add(-1, self.rows, kept)

    def dense_weight(self) -> torch.Tensor:
        """The effective full-size weight (zeros outside the kept block)."""
        full = self.weight.new_zeros(self.out_features, self.in_features)
        full[self.rows.unsqueeze(1), self.cols.unsqueeze(0)] = self._block().detach()
        return full


class CompactConv2d(nn.Module):
    """Conv2d restricted to output channels and input channels that keep at least one weight."""

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None,
                 stride=1, padding=0, dilation=1, groups: int = 1) -> None:
        super().__init__()
        if groups != 1:
            raise ValueError("CompactConv2d supports groups=1 only")
        self.out_channels, self.in_channels = weight.shape[:2]
        _init_kept_block(self, weight, mask, bias, mask.reshape(mask.shape[0], mask.shape[1], -1).any(-1))
        self.stride, self.padding, self.dilation = stride, padding, dilation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.rows) == 0:  # everything pruned: the layer emits its bias (spatial size from a cheap probe)
            side = F.conv2d(x[:, :1], x.new_zeros(1, 1, *self.weight.shape[2:]), None, self.stride, self.padding,
                            self.dilation)
            shape = (x.shape[0], self.out_channels, *side.shape[2:])
            return side.new_zeros(shape) + (0 if self.bias is None else self.bias.view(1, -1, 1, 1)) + x.sum() * 0
        xs = x if self.full_cols else x.index_select(1, self.cols)
        block = self.weight if self.block_mask is None else self.weight * self.block_mask
        if self.full_rows:
            return F.conv2d(xs, block, self.bias, self.stride, self.padding, self.dilation)
        kept = F.conv2d(xs, block, None, self.stride, self.padding, self.dilation)
        shape = (kept.shape[0], self.out_channels, *kept.shape[2:])
        out = kept.new_zeros(shape) if self.bias is None else \
            self.bias.view(1, -1, 1, 1).expand(shape).clone()
        return out.index_add(1, self.rows, kept)

    def dense_weight(self) -> torch.Tensor:
        """The effective full-size weight (zeros outside the kept block)."""
        block = self.weight if self.block_mask is None else self.weight * self.block_mask
        full = self.weight.new_zeros(self.out_channels, self.in_channels, *self.weight.shape[2:])
        full[self.rows.unsqueeze(1), self.cols.unsqueeze(0)] = block.detach()
        return full
