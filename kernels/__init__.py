"""Sparse execution: layers whose cost follows what they keep, and the dispatcher that picks one."""

from kernels.compact import CompactConv2d, CompactLinear
from kernels.convert import export_dense_state, sparsify
from kernels.csr import CSRLinear
from kernels.dispatch import Backend, choose_backend
from kernels.masked import MaskedConv2d, MaskedLinear

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
