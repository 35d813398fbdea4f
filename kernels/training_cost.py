"""What a client's training state costs on the kernels the dispatcher picks: bytes held and FLOPs per sample.

A client trains a masked model through ``kernels.sparsify`` (static masks, FedTiny) or
``kernels.sign_supermask.apply_sign_supermask_sparse`` (HideNseek); each prunable layer then holds exactly
the tensors of the backend ``choose_backend`` picked for its mask. The estimate here makes the same choice
from the mask (no sparse model is built, so a budget search can afford it per probe) and counts, per backend:

* ``masked``: the dense weight, its gradient and optimizer state, and a float mask buffer of the same size;
* ``compact``: the kept block (kept rows x kept columns/channels x kernel) with gradient and optimizer state,
  int64 ``rows``/``cols`` buffers, and a float ``block_mask`` only when the block is not fully kept;
* ``csr``: the kept values with gradient and optimizer state, int32 ``crow``/``col``/``crow_t``/``col_t``
  and an int64 ``perm_t``;
* ``sign-csr`` (HideNseek Linear on CSR): kept-size scores with gradient and optimizer state, the CSR
  structure and a float32 ``magnitude``; ``sign-param`` (every other HideNseek layer): kept-size scores,
  an int64 ``index`` and a float32 ``magnitude``; ``dense``: the plain weight;

plus every other parameter (biases, BatchNorm) with gradient and optimizer state, and the model's own buffers
(BatchNorm running statistics, the int64 ``num_batches_tracked``). Activations are not counted: unstructured
sparsity leaves every layer's output the same size. FLOPs per sample: 6 x weights computed x output positions
(forward, input gradient, weight gradient) — the whole dense weight for ``masked``/``dense``/``sign-param``,
the kept block for ``compact``, the kept values for CSR layers. The estimate assumes CPU float32 (what the
clients train in), and it equals ``measured_state_bytes`` after real optimizer steps (tests/test_training_cost.py).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from fedprune.kernels.csr import CSRLinear
from fedprune.kernels.dispatch import Backend, choose_backend
from fedprune.kernels.sign_supermask import SignCSRLinear
from torch import nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

INDEX32, INDEX64 = 4, 8  # bytes of an int32 / int64 index
ADAM_STEP_BYTES = 4  # Adam's per-parameter ``step`` (a float32 scalar tensor)


@dataclass(frozen=True)
class TrainingCost:
    """What one client's local training costs on the kernels it runs."""

    state_bytes: int  # parameters + gradients + optimizer state + buffers a client holds while training
    flops_per_sample: int  # forward + backward FLOPs per sample on the chosen kernels
    backends: dict[str, str]  # prunable weight name -> backend value ("masked", "compact", "csr", ...)


@dataclass(frozen=True)
class LayerGeometry:
    """A Linear/Conv2d weight: its shape and the output positions per sample (1 for Linear, H·W for conv)."""

    shape: tuple[int, ...]
    positions: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def conv(self) -> bool:
        return len(self.shape) == 4


@dataclass(frozen=True)
class ModelGeometry:
    """The architecture facts a training cost needs; computed once per model and input shape."""

    layers: dict[str, LayerGeometry]  # every Linear/Conv2d weight, by parameter name
    dense_values: int  # trainable values outside those weights (biases, BatchNorm)
    dense_tensors: int  # how many parameter tensors hold them
    buffer_bytes: int  # the model's own buffers (BatchNorm statistics, num_batches_tracked)
    value_bytes: int  # bytes per parameter value

    @classmethod
    def of(cls, model: nn.Module, input_shape: tuple[int, ...]) -> ModelGeometry:
        """Measure ``model`` with one no-grad forward pass of a zero sample of ``input_shape``."""
        positions = output_positions(model, input_shape)
        params = dict(model.named_parameters())
        layers = {name: LayerGeometry(tuple(params[name].shape), positions[name]) for name in positions}
        dense = [p.numel() for n, p in params.items() if n not in layers]
        buffers = sum(b.numel() * b.element_size() for b in model.buffers())
        return cls(layers, sum(dense), len(dense), buffers, next(iter(params.values())).element_size())


def output_positions(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Per Linear/Conv2d weight name, its output positions per sample at ``input_shape`` (forward hooks)."""
    positions: dict[str, int] = {}
    hooks = []
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            key = f"{module_name}.weight" if module_name else "weight"

            def record(mod, inputs, output, key=key):
                positions[key] = int(output[0].numel() // output.shape[1]) if output.dim() > 2 else 1
            hooks.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        model.train(was_training)
        for hook in hooks:
            hook.remove()
    return positions


def dispatched_backend(mask: np.ndarray, *, batch: int) -> Backend:
    """The backend ``sparsify`` gives a layer with ``mask`` for training at ``batch`` (CPU float32; a conv the
    table prices as CSR runs dense-masked)."""
    backend = choose_backend(torch.from_numpy(np.asarray(mask, dtype=bool)), batch=batch, training=True)
    return Backend.MASKED if mask.ndim == 4 and backend == Backend.CSR else backend


@dataclass(frozen=True)
class LayerCost:
    """One prunable layer's share: trainable values (each adds gradient + optimizer state), other bytes held
    (buffers), and FLOPs per sample."""

    trainable: int
    buffer_bytes: int
    flops_per_sample: int


def _compact(geometry: LayerGeometry, mask: np.ndarray, value_bytes: int) -> LayerCost:
    grid = mask.reshape(mask.shape[0], mask.shape[1], -1).any(-1) if geometry.conv else mask
    rows, cols = int(grid.any(1).sum()), int(grid.any(0).sum())
    block = rows * cols * (math.prod(geometry.shape[2:]) if geometry.conv else 1)
    block_mask = value_bytes * block if int(np.count_nonzero(mask)) < block else 0
    flops = 6 * block * geometry.positions
    if rows == 0 and geometry.conv:  # the empty layer's spatial probe (forward only)
        flops = 2 * math.prod(geometry.shape[2:]) * geometry.positions
    return LayerCost(block, INDEX64 * (rows + cols) + block_mask, flops)


def _csr_structure_bytes(geometry: LayerGeometry, kept: int) -> int:
    out_features, in_features = geometry.shape
    return INDEX32 * (out_features + 1 + in_features + 1 + 2 * kept) + INDEX64 * kept


def masked_layer_cost(geometry: LayerGeometry, mask: np.ndarray | None, backend: str, value_bytes: int
                      ) -> LayerCost:
    """What one layer costs on ``backend`` (a ``Backend`` value, "sign-csr", "sign-param" or "dense")."""
    kept = geometry.size if mask is None else int(np.count_nonzero(mask))
    dense_flops = 6 * geometry.size * geometry.positions
    if backend == "dense":
        return LayerCost(geometry.size, 0, dense_flops)
    if backend == Backend.MASKED:
        return LayerCost(geometry.size, value_bytes * geometry.size, dense_flops)
    if backend == Backend.COMPACT:
        return _compact(geometry, mask, value_bytes)
    if backend == Backend.CSR:
        return LayerCost(kept, _csr_structure_bytes(geometry, kept), 6 * kept)
    if backend == "sign-csr":
        return LayerCost(kept, _csr_structure_bytes(geometry, kept) + value_bytes * kept, 6 * kept)
    if backend == "sign-param":
        return LayerCost(kept, (INDEX64 + value_bytes) * kept, dense_flops)
    raise ValueError(f"unknown backend '{backend}'")


def total_cost(geometry: ModelGeometry, backends: dict[str, str], mask: dict[str, np.ndarray], *,
               state_copies: int, per_tensor_bytes: int = 0) -> TrainingCost:
    """Sum the layers on ``backends`` (weights not in ``backends``: dense) and the rest of the model.

    ``state_copies``: tensors per trainable value (value, gradient, optimizer slots); ``per_tensor_bytes``:
    optimizer state per parameter tensor whatever its size (Adam's ``step``)."""
    chosen = {name: backends.get(name, "dense") for name in geometry.layers}
    costs = [masked_layer_cost(layer, mask.get(name), chosen[name], geometry.value_bytes)
             for name, layer in geometry.layers.items()]
    trainable = geometry.dense_values + sum(c.trainable for c in costs)
    tensors = geometry.dense_tensors + len(costs)
    state = (state_copies * geometry.value_bytes * trainable + geometry.buffer_bytes
             + sum(c.buffer_bytes for c in costs) + per_tensor_bytes * tensors)
    return TrainingCost(state, sum(c.flops_per_sample for c in costs), chosen)


def masked_training_cost(model: nn.Module, input_shape: tuple[int, ...], mask: dict[str, np.ndarray], *,
                         batch: int, momentum: bool = True) -> TrainingCost:
    """A static-mask / FedTiny client's cost: ``sparsify(model, mask, batch=batch, training=True)`` + SGD
    (with momentum: one momentum buffer per trainable value)."""
    return masked_cost(ModelGeometry.of(model, input_shape), mask, batch=batch, momentum=momentum)


def masked_cost(geometry: ModelGeometry, mask: dict[str, np.ndarray], *, batch: int,
                momentum: bool = True) -> TrainingCost:
    """``masked_training_cost`` on a precomputed geometry (what a budget search calls per probe)."""
    backends = {name: dispatched_backend(m, batch=batch).value for name, m in mask.items()}
    return total_cost(geometry, backends, mask, state_copies=3 if momentum else 2)


def dense_training_cost(model: nn.Module, input_shape: tuple[int, ...], *, momentum: bool = True) -> TrainingCost:
    """Dense FedAvg's client cost: the plain model trained with SGD (with or without momentum)."""
    return total_cost(ModelGeometry.of(model, input_shape), {}, {}, state_copies=3 if momentum else 2)


def sign_training_cost(model: nn.Module, input_shape: tuple[int, ...], mask: dict[str, np.ndarray], *,
                       batch: int, optimizer: str = "layer-sgd") -> TrainingCost:
    """A HideNseek client's cost: ``apply_sign_supermask_sparse(..., batch=batch)`` (Linear layers the
    dispatcher prices as CSR become ``SignCSRLinear``, the rest a parametrization over kept-size scores)
    trained with ``client.score_optimizer``: ``layer-sgd`` holds one momentum buffer per value, ``adam`` two
    plus a float32 ``step`` per parameter tensor."""
    geometry = ModelGeometry.of(model, input_shape)
    backends = {}
    for name, layer_mask in mask.items():
        csr = not geometry.layers[name].conv and choose_backend(
            torch.from_numpy(np.asarray(layer_mask, dtype=bool)), batch=batch, training=True) == Backend.CSR
        backends[name] = "sign-csr" if csr else "sign-param"
    if optimizer == "adam":
        return total_cost(geometry, backends, mask, state_copies=4, per_tensor_bytes=ADAM_STEP_BYTES)
    return total_cost(geometry, backends, mask, state_copies=3)


def measured_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Bytes of the tensors a client holds for training, summed over the real tensors: parameters, their
    gradients, optimizer state and every buffer (with ``total``)."""
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters() if p.grad is not None)
    state = sum(v.numel() * v.element_size() for s in optimizer.state.values() for v in s.values()
                if torch.is_tensor(v))
    buffers = sum(b.numel() * b.element_size() for b in model.buffers() if b is not None)
    return {"parameters": params, "gradients": grads, "optimizer_state": state, "buffers": buffers,
            "total": params + grads + state + buffers}


def measured_state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """``measured_state``'s total: what a client reports as ``train-state-bytes`` after local training."""
    return measured_state(model, optimizer)["total"]


def counted_flops_per_sample(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(FlopCounterMode's count, the count with CSR layers corrected) of one forward + backward step, per sample.

    The counter prices a CSR layer's sparse products as dense ones — the forward ``mm`` (2·out·in per
    sample) and, when the layer's input needs a gradient, the transposed ``mm`` of the input gradient (the
    same again, which it attributes to the module after the layer) — and does not see the sampled weight
    gradient. The corrected figure replaces those dense prices by 3 x 2 x nnz per sample (forward, input
    gradient, kept-only weight gradient)."""
    needs_input_grad: dict[str, bool] = {}
    hooks = [module.register_forward_hook(lambda mod, inputs, out, key=name: needs_input_grad.update(
        {key: inputs[0].requires_grad})) for name, module in model.named_modules()
        if isinstance(module, CSRLinear | SignCSRLinear)]
    try:
        with FlopCounterMode(display=False) as counter:
            F.cross_entropy(model(x), y).backward()
    finally:
        for hook in hooks:
            hook.remove()
    raw = counter.get_total_flops()
    corrected = raw
    for name, module in model.named_modules():
        if isinstance(module, CSRLinear | SignCSRLinear):
            kept = module.values.numel() if isinstance(module, CSRLinear) else module.scores.numel()
            dense_products = 2 if needs_input_grad[name] else 1
            corrected += (-dense_products * 2 * module.out_features * module.in_features + 6 * kept) * x.shape[0]
    return raw / x.shape[0], corrected / x.shape[0]
