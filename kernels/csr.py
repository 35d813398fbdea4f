"""CSR Linear with int32 indices: forward ``(W_csr @ x.T).T``, and a backward that computes the
weight gradient only at kept positions (``torch.sparse.sampled_addmm``), never a dense gradient.

Only the kept values are a parameter, so the weight, its gradient and any
optimizer state are all proportional to the number of kept weights.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta state")
warnings.filterwarnings("ignore", message="Sparse invariant checks are implicitly disabled")


class _CSRMatmul(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, x, crow, col, crow_t, col_t, perm_t, shape):
        weight = torch.sparse_csr_tensor(crow, col, values, shape)
        ctx.save_for_backward(values, x, crow, col, crow_t, col_t, perm_t)
        ctx.shape = shape
        return torch.mm(weight, x.t()).t()

    @staticmethod
    def backward(ctx, grad_out):
        values, x, crow, col, crow_t, col_t, perm_t = ctx.saved_tensors
        out_features, in_features = ctx.shape
        grad_values = grad_x = None
        grad_out = grad_out.contiguous()
        if ctx.needs_input_grad[0]:
            pattern = torch.sparse_csr_tensor(crow, col, torch.zeros_like(values), ctx.shape)
            grad_values = torch.sparse.sampled_addmm(pattern, grad_out.t().contiguous(), x, beta=0.0).values()
        if ctx.needs_input_grad[1]:
            weight_t = torch.sparse_csr_tensor(crow_t, col_t, values[perm_t], (in_features, out_features))
            grad_x = torch.mm(weight_t, grad_out.t()).t()
        return grad_values, grad_x, None, None, None, None, None, None


class CSRLinear(nn.Module):
    """Linear layer stored as CSR (int32 indices); ``values`` is the only weight parameter."""

    def __init__(self, weight: torch.Tensor, mask: torch.Tensor, bias: torch.Tensor | None = None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        rows, cols = torch.nonzero(mask, as_tuple=True)  # row-major order = CSR order
        counts = torch.bincount(rows, minlength=self.out_features)
        crow = torch.zeros(self.out_features + 1, dtype=torch.int64)
        crow[1:] = torch.cumsum(counts, 0)
        self.register_buffer("crow", crow.to(torch.int32))
        self.register_buffer("col", cols.to(torch.int32))
        # Transposed structure (for grad wrt x): order kept entries column-major.
        order_t = torch.argsort(cols * self.out_features + rows)
        crow_t = torch.zeros(self.in_features + 1, dtype=torch.int64)
        crow_t[1:] = torch.cumsum(torch.bincount(cols, minlength=self.in_features), 0)
        self.register_buffer("crow_t", crow_t.to(torch.int32))
        self.register_buffer("col_t", rows[order_t].to(torch.int32))
        self.register_buffer("perm_t", order_t)
        self.values = nn.Parameter(weight[rows, cols].detach().clone().contiguous())
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        if flat.dtype != self.values.dtype:
            raise TypeError(f"CSRLinear holds {self.values.dtype}, got input {flat.dtype}")
        out = _CSRMatmul.apply(self.values, flat.contiguous(), self.crow, self.col, self.crow_t, self.col_t,
                               self.perm_t, (self.out_features, self.in_features))
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*lead, self.out_features)

    def dense_weight(self) -> torch.Tensor:
        """The weight as a dense tensor (zeros at pruned positions)."""
        return torch.sparse_csr_tensor(self.crow, self.col, self.values.detach(),
                                       (self.out_features, self.in_features)).to_dense()
