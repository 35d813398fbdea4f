"""Swap a model's masked Linear/Conv2d layers for sparse backends, and read dense weights back out."""

from __future__ import annotations

import numpy as np
import torch
from fedprune.kernels.blocksparse_layer import BlockSparseLinear
from fedprune.kernels.compact import CompactConv2d, CompactLinear
from fedprune.kernels.csr import CSRLinear
from fedprune.kernels.dispatch import Backend, choose_backend
from fedprune.kernels.masked import MaskedConv2d, MaskedLinear
from torch import nn

_LINEAR = {Backend.MASKED: MaskedLinear, Backend.COMPACT: CompactLinear, Backend.CSR: CSRLinear,
           Backend.BLOCKSPARSE: BlockSparseLinear}
_CONV = {Backend.MASKED: MaskedConv2d, Backend.COMPACT: CompactConv2d}


def _build(module: nn.Module, mask: torch.Tensor, backend: Backend) -> nn.Module:
    bias = module.bias.detach() if module.bias is not None else None
    if isinstance(module, nn.Linear):
        return _LINEAR[backend](module.weight.detach(), mask, bias)
    return _CONV[backend](module.weight.detach(), mask, bias, module.stride, module.padding, module.dilation,
                          module.groups)


def sparsify(model: nn.Module, mask: dict[str, np.ndarray], *, batch: int, training: bool,
             backends: dict[str, Backend] | None = None) -> dict[str, Backend]:
    """Replace each masked layer (``<module>.weight`` in ``mask``) in place; return the backend per layer.

    Without ``backends`` the dispatcher chooses per layer from its measured table.
    """
    modules = dict(model.named_modules())
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    chosen = {}
    for name, layer_mask in mask.items():
        module_name = name.rsplit(".", 1)[0]
        module = modules[module_name]
        if not isinstance(module, nn.Linear | nn.Conv2d):
            raise TypeError(f"{module_name} is {type(module).__name__}, not Linear/Conv2d")
        m = torch.as_tensor(np.asarray(layer_mask, dtype=bool), device=device)
        if tuple(m.shape) != tuple(module.weight.shape):
            raise ValueError(f"mask for {name} has shape {tuple(m.shape)}, weight {tuple(module.weight.shape)}")
        backend = (backends or {}).get(name) or choose_backend(m, batch=batch, training=training, device=device,
                                                               dtype=dtype)
        if isinstance(module, nn.Conv2d) and backend in (Backend.CSR, Backend.BLOCKSPARSE):
            backend = Backend.MASKED
        replacement = _build(module, m, backend).to(device)
        parent_name, _, attr = module_name.rpartition(".")
        setattr(modules[parent_name] if parent_name else model, attr, replacement)
        chosen[name] = backend
    return chosen


def export_dense_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state with every sparse layer's weight as a dense tensor under its original name."""
    state = {}
    sparse_types = (MaskedLinear, MaskedConv2d, CompactLinear, CompactConv2d, CSRLinear, BlockSparseLinear)
    sparse_prefixes = {}
    for name, module in model.named_modules():
        if isinstance(module, sparse_types):
            sparse_prefixes[name] = module
    for key, value in model.state_dict().items():
        prefix, _, leaf = key.rpartition(".")
        if prefix in sparse_prefixes:
            continue
        state[key] = value
    for prefix, module in sparse_prefixes.items():
        state[f"{prefix}.weight"] = module.dense_weight()
        if module.bias is not None:
            state[f"{prefix}.bias"] = module.bias.detach()
    return state


def export_for_inference(model: nn.Module, mask: dict[str, np.ndarray]) -> nn.Module:
    """A copy of ``model`` (weights already folded) with batch-1 inference backends for an edge device."""
    import copy

    exported = copy.deepcopy(model).eval()
    sparsify(exported, mask, batch=1, training=False)
    for parameter in exported.parameters():
        parameter.requires_grad_(False)
    return exported
