"""Client training cost of FedTiny's sparse submodel vs. the dense model, measured back to back.

Usage: python benchmarks/fedtiny_client_cost.py [DENSITY] [BATCH]     (defaults 0.01 and 32)
FL CNN with BatchNorm (fl-cnn-bn), Fashion-MNIST input shape, the SynFlow mask at DENSITY (FedTiny's candidate 0),
the client's real training path (``kernels.sparsify(..., training=True)`` + SGD momentum 0.9, as
``client.masked_training``) against the plain dense model with the same optimizer, alternately in one process.

Memory: bytes of the tensors a client holds for training, summed over the real tensors after real optimizer
steps — parameters, their gradients, SGD momentum buffers, and every buffer (BatchNorm statistics, mask/index
structures of the sparse layers). Activations are not included: unstructured weight sparsity leaves every layer's
output the same size, so they are the same for both models.

Adjusting rounds (progressive pruning): the client trains the same sparse model with a
``client.topk_gradients.PrunedGradientTap`` on the adjusted layer, which holds one dense, weight-sized
accumulator for the round and adds gᵀx (or the convolution's weight gradient) per batch; the rows
``adjusting <layer>`` count that accumulator with the training state and the tap's work in the FLOPs; the rows
``adjusting <layer> buffered <capacity>`` the buffered tap instead (running sums at 8·K positions, K = the first
adjustment's K_3 at α 0.05, plus the largest gradient chunk it formed), measured on its tensors after the steps.

FLOPs per sample: torch.utils.flop_counter.FlopCounterMode over one forward+backward step, divided by the batch.
What the counter sees: dense and compact (sliced) layers run ordinary aten convolutions/matmuls and are counted
exactly; for CSR layers it prices the sparse forward ``mm`` and the input gradient's transposed ``mm`` as dense
ones and does not see the sampled weight gradient, so the script also prints a corrected figure that replaces
those by 3 × 2 × nnz × batch (``kernels.training_cost.counted_flops_per_sample``).

Estimates: ``estimated_state_bytes`` / ``estimated_flops_per_sample`` are what the budget arithmetic charges
(``kernels.training_cost``: the dispatcher's backend per layer and the tensors it allocates), next to the
measurement.
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedprune.client.topk_gradients import PrunedGradientTap  # noqa: E402
from fedprune.kernels.convert import sparsify  # noqa: E402
from fedprune.kernels.training_cost import (  # noqa: E402
    counted_flops_per_sample,
    dense_training_cost,
    masked_training_cost,
    measured_state,
)
from fedprune.models import build_model  # noqa: E402
from fedprune.pruning.progressive import cosine_k, tap_buffer_capacity  # noqa: E402
from fedprune.pruning.schedules import data_free_mask  # noqa: E402

SHAPE = (1, 28, 28)


def step(model, optimizer, x, y) -> None:
    optimizer.zero_grad(set_to_none=False)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


def tap_flops_per_sample(model: torch.nn.Module, layer: str, x: torch.Tensor) -> float:
    """FlopCounterMode's count of the tap's per-batch op on ``layer`` (gᵀx, or the convolution's weight
    gradient) at the real input and output shapes, per sample. Counted on its own because the counter
    attributes ops run inside backward hooks to the sparse module, whose count the CSR correction replaces."""
    captured = {}
    module = dict(model.named_modules())[layer.rsplit(".", 1)[0]]
    handle = module.register_forward_hook(lambda m, i, o: captured.update(x=i[0].detach(), g=torch.ones_like(o)))
    was_training = model.training
    with torch.no_grad():
        model.eval()(x)
    model.train(was_training)
    handle.remove()
    tap = PrunedGradientTap(model, [layer])
    geometry = tap.geometry[layer]
    with FlopCounterMode(display=False) as counter:
        if "stride" in geometry:
            torch.nn.grad.conv2d_weight(captured["x"], geometry["shape"], captured["g"], geometry["stride"],
                                        geometry["padding"], geometry["dilation"], geometry["groups"])
        else:
            torch.addmm(tap.sums[layer], captured["g"].reshape(-1, captured["g"].shape[-1]).T,
                        captured["x"].reshape(-1, captured["x"].shape[-1]))
    return counter.get_total_flops() / x.shape[0]


def _core(row: dict) -> int:
    state = row["state_bytes"]
    return state["parameters"] + state["gradients"] + state["optimizer_state"]


def main() -> int:
    density = float(sys.argv[1]) if len(sys.argv) > 1 else 0.01
    batch = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    torch.set_num_threads(1)
    base = build_model("fl-cnn-bn", SHAPE, 10, seed=0)
    mask = data_free_mask(base, "synflow", density, 0)
    dense = copy.deepcopy(base)
    sparse = copy.deepcopy(base)
    backends = sparsify(sparse, mask, batch=batch, training=True)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, *SHAPE, generator=generator)
    y = torch.randint(0, 10, (batch,), generator=generator)
    rows = {}
    for name, model in (("dense", dense), ("sparse", sparse), ("dense-again", copy.deepcopy(base))):
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(2):
            step(model, optimizer, x, y)
        raw, corrected = counted_flops_per_sample(model, x, y)
        rows[name] = {"state_bytes": measured_state(model, optimizer),
                      "flops_per_sample_counter": raw, "flops_per_sample_corrected": corrected}
    ks = {n: max(1, cosine_k(3, 24, 0.05, int(m.sum()))) for n, m in mask.items()}
    for layer, buffered in ((n, b) for n in mask for b in (False, True)):  # adjusting rounds: + a tap on one layer
        model = copy.deepcopy(base)
        capacities = {layer: tap_buffer_capacity(ks[layer], mask[layer].size)} if buffered else None
        tap = PrunedGradientTap(model, [layer], capacities, mask)
        sparsify(model, mask, batch=batch, training=True, backends=backends)
        tap.attach(model)
        model.train()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        for _ in range(2):
            step(model, optimizer, x, y)
        state = measured_state(model, optimizer)
        held = tap.held_bytes() + tap.peak_chunk_bytes  # buffered: index + sums, and its largest gradient chunk
        state = {**state, "tap_held": held, "total": state["total"] + held}
        tap_flops = tap_flops_per_sample(base, layer, x)
        rows[f"adjusting {layer}" + (f" buffered {capacities[layer]}" if buffered else "")] = {
            "state_bytes": state, "state_ratio": state["total"] / rows["dense"]["state_bytes"]["total"],
            "tap_flops_per_sample": tap_flops,
            "flops_per_sample_corrected": rows["sparse"]["flops_per_sample_corrected"] + tap_flops}
    for name, estimate in (("dense", dense_training_cost(base, SHAPE)),
                           ("sparse", masked_training_cost(base, SHAPE, mask, batch=batch))):
        rows[name].update(estimated_state_bytes=estimate.state_bytes,
                          estimated_flops_per_sample=estimate.flops_per_sample)
    kept = sum(int(m.sum()) for m in mask.values())
    total = sum(m.size for m in mask.values())
    result = {"density": density, "kept": kept, "prunable": total, "batch": batch,
              "backends": {k: v.value for k, v in backends.items()}, **rows,
              "state_ratio": rows["sparse"]["state_bytes"]["total"] / rows["dense"]["state_bytes"]["total"],
              "flops_ratio_corrected": rows["sparse"]["flops_per_sample_corrected"]
              / rows["dense"]["flops_per_sample_corrected"],
              "params_grads_optimizer_ratio": _core(rows["sparse"]) / _core(rows["dense"])}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
