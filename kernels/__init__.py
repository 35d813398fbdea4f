"""Sparse execution: layers whose cost follows what they keep, and the dispatcher that picks one."""

from fedprune.kernels.compact import CompactConv2d, CompactLinear
from fedprune.kernels.convert import export_dense_state, sparsify
from fedprune.kernels.csr import CSRLinear
from fedprune.kernels.dispatch import Backend, choose_backend
from fedprune.kernels.masked import MaskedConv2d, MaskedLinear

__all__ = [
    "Backend",
    "CSRLinear",
    "CompactConv2d",
    "CompactLinear",
    "MaskedConv2d",
    "MaskedLinear",
    "choose_backend",
    "export_dense_state",
    "sparsify",
]
