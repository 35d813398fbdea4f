"""Buffered vs dense gradient tap on real client rounds: memory held, top-K agreement, time.

Usage: python benchmarks/fedtiny_tap_agreement.py [DENSITY] [PARTITION ...]   (defaults 0.01 and 0 1 2 3 4)
Fashion-MNIST, fl-cnn-bn built from seed 0, FedTiny's candidate 0 at DENSITY (SynFlow's layer counts, largest
|θ0| within), Dirichlet 0.5 over 100 clients (seed 0). For each PARTITION, one local epoch of the client's real
training path (compact sparse kernels, SGD lr 0.05 momentum 0.9, batch 32) from θ0 with two taps on every
prunable layer at once — the dense tap and the buffered tap (8·K running sums, gradient formed a few output
rows at a time; ``client.topk_gradients``) — which see the same batches, since a tap does not change training.
K is the first adjustment's K_3 = α/2·(1+cos(π·3/24))·active with α 0.05 (the defaults).

Per layer it prints, averaged over the partitions:
* held bytes: the dense accumulator vs the buffered tap's index + sums, and its largest gradient chunk (both
  measured on the tensors after the epoch, not estimated);
* overlap: |buffered top-K ∩ dense top-K| / K;
* captured: Σ dense magnitude at the buffered top-K / Σ dense magnitude at the dense top-K (1.0 = as good a
  growth choice by the exact gradient's measure).
Then the time of one epoch with a tap on fc1 only (dense, buffered) as a ratio to the same epoch without a tap,
alternated in one process, one thread (median of 5), in CPU seconds of this process (``time.process_time``:
other load on the machine does not inflate it the way it does wall time).
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedprune.client.local_training import train_sgd  # noqa: E402
from fedprune.client.topk_gradients import PrunedGradientTap, top_k_pairs  # noqa: E402
from fedprune.data.partition import partition_indices, split_local  # noqa: E402
from fedprune.data.sources import LabeledArrays, load_dataset  # noqa: E402
from fedprune.kernels.convert import sparsify  # noqa: E402
from fedprune.models import build_model  # noqa: E402
from fedprune.pruning.candidates import candidate_masks  # noqa: E402
from fedprune.pruning.progressive import TAP_BUFFER_FACTOR, cosine_k, tap_buffer_capacity  # noqa: E402


def masked_model(splits, mask: dict[str, np.ndarray]) -> torch.nn.Module:
    """θ0 (seed 0) with the pruned weights zeroed."""
    model = build_model("fl-cnn-bn", splits.input_shape, 10, seed=0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in mask:
                param.mul_(torch.from_numpy(mask[name]))
    return model


def epoch(model: torch.nn.Module, mask, data: LabeledArrays, taps: list[tuple[list[str], dict | None]]):
    """One local epoch on sparse kernels with the given taps attached; returns (taps, seconds)."""
    model = copy.deepcopy(model)
    built = [PrunedGradientTap(model, layers, capacities, mask) for layers, capacities in taps]
    sparsify(model, mask, batch=32, training=True)
    for tap in built:
        tap.attach(model)
    start = time.process_time()
    train_sgd(model, data, epochs=1, lr=0.05, momentum=0.9, batch_size=32, seed=0)
    return built, time.process_time() - start


def main() -> int:
    density = float(sys.argv[1]) if len(sys.argv) > 1 else 0.01
    partitions = [int(p) for p in sys.argv[2:]] or [0, 1, 2, 3, 4]
    torch.set_num_threads(1)
    splits = load_dataset("fashion-mnist")
    mask = candidate_masks(build_model("fl-cnn-bn", splits.input_shape, 10, seed=0), "synflow", density, 1, 0,
                           ranking="magnitude")[0]
    model = masked_model(splits, mask)
    ks = {n: max(1, cosine_k(3, 24, 0.05, int(m.sum()))) for n, m in mask.items()}
    capacities = {n: tap_buffer_capacity(k, mask[n].size) for n, k in ks.items()}
    parts = partition_indices(splits.train.y, "dirichlet", 100, alpha=0.5, seed=0)
    rows: dict[str, list[tuple[float, float, int, int, int]]] = {n: [] for n in mask}
    for p in partitions:
        local = split_local(parts[p], 0.2, 0).train
        data = LabeledArrays(splits.train.x[local], splits.train.y[local])
        (dense, buffered), _ = epoch(model, mask, data, [(list(mask), None), (list(mask), capacities)])
        exact, approx = dense.mean_magnitudes(mask), buffered.mean_magnitudes(mask)
        for name, k in ks.items():
            best = np.flatnonzero(top_k_pairs(exact[name], k))
            chosen = np.flatnonzero(top_k_pairs(approx[name], k))
            overlap = len(set(best.tolist()) & set(chosen.tolist())) / max(1, len(best))
            flat = exact[name].reshape(-1)
            captured = float(flat[chosen].sum() / max(1e-30, flat[best].sum()))
            held = buffered.buffers[name].held_bytes()
            rows[name].append((overlap, captured, dense.sums[name].numel() * 4, held, buffered.peak_chunk_bytes))
        print(f"partition {p}: {len(data)} training images", flush=True)
    print(f"\ndensity {density}, partitions {partitions}, K = K_3 at α 0.05, buffer {TAP_BUFFER_FACTOR}·K")
    print("| layer | active | K | dense tap held B | buffered held B (index+sums) | overlap | captured |")
    print("|---|---|---|---|---|---|---|")
    for name, values in rows.items():
        overlap = statistics.fmean(v[0] for v in values)
        captured = statistics.fmean(v[1] for v in values)
        print(f"| {name} | {int(mask[name].sum()):,} | {ks[name]:,} | {values[0][2]:,} | {max(v[3] for v in values):,} "
              f"| {overlap:.3f} | {captured:.3f} |")
    print(f"largest gradient chunk the buffered taps formed: {max(v[4] for r in rows.values() for v in r):,} B")
    fc1 = "classifier.1.weight"
    local = split_local(parts[partitions[0]], 0.2, 0).train
    data = LabeledArrays(splits.train.x[local], splits.train.y[local])
    times: dict[str, list[float]] = {"none": [], "dense": [], "buffered": []}
    for _ in range(5):
        times["none"].append(epoch(model, mask, data, [])[1])
        times["dense"].append(epoch(model, mask, data, [([fc1], None)])[1])
        times["buffered"].append(epoch(model, mask, data, [([fc1], {fc1: capacities[fc1]})])[1])
    base = statistics.median(times["none"])
    dense, buffered = (statistics.median(times[kind]) / base for kind in ("dense", "buffered"))
    print(f"epoch time with a tap on {fc1} (partition {partitions[0]}, median of 5, CPU time): none {base:.3f} s, "
          f"dense {dense:.2f}x, buffered {buffered:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
