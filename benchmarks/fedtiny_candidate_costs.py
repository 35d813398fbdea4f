"""What FedTiny's candidate masks cost a client to train, per candidate ranking (no training: the kernels'
cost model, which tests/test_training_cost.py checks equal to the real tensors and counted FLOPs).

Usage: python benchmarks/fedtiny_candidate_costs.py [--densities 0.01,0.05] [--seeds 0,1,2] [--batch 32]
FL CNN-BN on Fashion-MNIST's input shape, SynFlow, 5 candidates (FedTiny's defaults) for each ranking
(``pruning.candidates.RANKINGS``). Prints, per density, seed, ranking and candidate, the training state
(parameters, gradients, momentum, buffers) and FLOPs per sample as a share of dense, the backend the
dispatcher gives each layer, and per layer kept output rows / input columns (channels for convolutions) of
candidate 0; then the worst candidate per ranking over seeds.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedprune.kernels.training_cost import dense_training_cost, masked_training_cost  # noqa: E402
from fedprune.models import build_model  # noqa: E402
from fedprune.pruning.candidates import RANKINGS, candidate_masks  # noqa: E402

INPUT_SHAPE = (1, 28, 28)


def channels(mask: dict) -> str:
    """Per layer: density, kept output rows / all, kept input columns (channels) / all."""
    out = []
    for name, m in mask.items():
        grid = m.reshape(m.shape[0], m.shape[1], -1).any(-1)
        out.append(f"{name} {m.mean():.4f} rows {int(grid.any(1).sum())}/{grid.shape[0]} "
                   f"cols {int(grid.any(0).sum())}/{grid.shape[1]}")
    return "; ".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--densities", default="0.01,0.05")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    dense = dense_training_cost(build_model("fl-cnn-bn", INPUT_SHAPE, 10, seed=0), INPUT_SHAPE)
    print(f"dense: training state {dense.state_bytes:,} B, {dense.flops_per_sample:,} FLOPs per sample")
    worst: dict[tuple[float, str], tuple[float, float]] = {}
    for density in (float(d) for d in args.densities.split(",")):
        for seed in (int(s) for s in args.seeds.split(",")):
            for ranking in RANKINGS:
                masks = candidate_masks(build_model("fl-cnn-bn", INPUT_SHAPE, 10, seed=seed), "synflow", density, 5,
                                        seed, ranking=ranking)
                for index, mask in enumerate(masks):
                    cost = masked_training_cost(build_model("fl-cnn-bn", INPUT_SHAPE, 10, seed=seed), INPUT_SHAPE,
                                                mask, batch=args.batch)
                    memory, flops = cost.state_bytes / dense.state_bytes, cost.flops_per_sample / dense.flops_per_sample
                    before = worst.get((density, ranking), (0.0, 0.0))
                    worst[(density, ranking)] = (max(before[0], memory), max(before[1], flops))
                    backends = ",".join(str(b) for b in cost.backends.values())
                    print(f"d {density} seed {seed} {ranking:>15} cand {index}: state {memory:6.2%} "
                          f"FLOPs {flops:6.1%} [{backends}]" + (f"  {channels(mask)}" if index == 0 else ""),
                          flush=True)
    print("\nworst candidate over seeds (training state, FLOPs per sample, share of dense):")
    for (density, ranking), (memory, flops) in worst.items():
        print(f"  density {density} {ranking:>15}: {memory:6.2%} {flops:6.1%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
