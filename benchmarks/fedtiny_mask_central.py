"""Which data-free mask trains best: each mask trained centrally, same θ0, same batches, no federation.

Usage: python benchmarks/fedtiny_mask_central.py DENSITY SEED [SEED ...] [--steps 1875] [--masks a,b]
Fashion-MNIST (all 60,000 training images), fl-cnn-bn built from SEED, masks at DENSITY:
SynFlow's mask (``synflow``), global magnitude's mask (``magnitude``), FedTiny's candidate 0 with ranking
``magnitude`` (SynFlow's layer-wise counts, the largest |θ0| within each layer: ``synflow-counts+magnitude``)
and with ranking ``block-magnitude`` (the largest |θ0| inside the channels SynFlow keeps:
``synflow-block+magnitude``); ``--masks`` runs a subset. Each is trained
for one epoch (1,875 steps of batch 32, SGD lr 0.05 momentum 0.9, the FedTiny table's client optimizer),
pruned weights held at 0, one thread. Prints test accuracy after 300 steps and at the end, and each
mask's layer-wise densities. Screens the candidate family cheaply; the federated table decides.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedprune.data.sources import load_dataset  # noqa: E402
from fedprune.models import build_model  # noqa: E402
from fedprune.models.evaluation import evaluate  # noqa: E402
from fedprune.pruning.candidates import candidate_masks  # noqa: E402
from fedprune.pruning.schedules import data_free_mask  # noqa: E402


def train_masked(splits, mask: dict[str, np.ndarray], seed: int, steps: int, lr: float = 0.05) -> list[float]:
    """Test accuracy after 300 steps and after ``steps`` of masked SGD from θ0 (seed) on ``mask``."""
    torch.manual_seed(seed)
    model = build_model("fl-cnn-bn", splits.input_shape, 10, seed=seed)
    params = dict(model.named_parameters())
    masks = {n: torch.from_numpy(m) for n, m in mask.items()}
    with torch.no_grad():
        for n, m in masks.items():
            params[n].mul_(m)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    train, test = splits.train, splits.test
    order = np.random.default_rng(seed).permutation(len(train.x))
    model.train()
    accuracies = []
    for step in range(steps):
        start = (step * 32) % len(order)
        batch = order[start:start + 32]
        loss = torch.nn.functional.cross_entropy(model(torch.from_numpy(train.x[batch])),
                                                 torch.from_numpy(train.y[batch]).long())
        optimizer.zero_grad()
        loss.backward()
        for n, m in masks.items():
            params[n].grad.mul_(m)
        optimizer.step()
        with torch.no_grad():
            for n, m in masks.items():
                params[n].mul_(m)
        if step + 1 in (300, steps):
            accuracies.append(evaluate(model, test.x, test.y, 1000)[1])
            model.train()
    return accuracies


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("density", type=float)
    parser.add_argument("seeds", type=int, nargs="+")
    parser.add_argument("--steps", type=int, default=1875)
    parser.add_argument("--masks", default="synflow,magnitude,synflow-counts+magnitude,synflow-block+magnitude")
    args = parser.parse_args()
    torch.set_num_threads(1)
    splits = load_dataset("fashion-mnist")

    def fresh(seed: int):
        return build_model("fl-cnn-bn", splits.input_shape, 10, seed=seed)

    for seed in args.seeds:
        masks = {score: data_free_mask(fresh(seed), score, args.density, seed) for score in ("synflow", "magnitude")}
        masks["synflow-counts+magnitude"] = candidate_masks(fresh(seed), "synflow", args.density, 1, seed,
                                                            ranking="magnitude")[0]
        masks["synflow-block+magnitude"] = candidate_masks(fresh(seed), "synflow", args.density, 1, seed,
                                                           ranking="block-magnitude")[0]
        for name, mask in masks.items():
            if name not in args.masks.split(","):
                continue
            early, final = train_masked(splits, mask, seed, args.steps)
            layers = " ".join(f"{m.mean():.3f}" for m in mask.values())
            print(f"density {args.density} seed {seed} {name:25s} acc@300 {early:.4f} acc@{args.steps} {final:.4f} "
                  f"layer densities {layers}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
