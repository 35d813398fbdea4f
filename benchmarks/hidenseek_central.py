"""The HideNseek client path trained centrally: how far one sign supermask gets without federation.

Usage: python benchmarks/hidenseek_central.py [--backend parametrized|csr] [--lr 1e-3] [--steps 1875]
       [--optimizer adam|sgd|layer-sgd] [--momentum 0.9]
Fashion-MNIST (all 60,000 training images), FL CNN, SynFlow mask at density 0.1, scores z started at
θ0 and trained with Adam (or SGD / layer-normalized SGD), batch 32, one thread. Prints test accuracy
and the share of flipped signs at 50/100/250/500/1000/1875 steps: the ceiling the federated rules are
measured against.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedprune.client.score_optimizer import score_optimizer  # noqa: E402
from fedprune.data.sources import load_dataset  # noqa: E402
from fedprune.kernels.sign_supermask import apply_sign_supermask, apply_sign_supermask_sparse  # noqa: E402
from fedprune.models import build_model  # noqa: E402
from fedprune.models.evaluation import evaluate  # noqa: E402
from fedprune.pruning.schedules import data_free_mask  # noqa: E402

CHECKPOINTS = (50, 100, 250, 500, 1000, 1875)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backend", choices=("parametrized", "csr"), default="parametrized")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps", type=int, default=1875)
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--optimizer", choices=("adam", "sgd", "layer-sgd"), default="adam")
    parser.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ds = load_dataset("fashion-mnist")
    model = build_model("fl-cnn", ds.input_shape, 10, seed=0)
    theta0 = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    mask = data_free_mask(build_model("fl-cnn", ds.input_shape, 10, seed=0), "synflow", args.density, 0)
    magnitude = {k: np.abs(theta0[k][m]).astype(np.float32) for k, m in mask.items()}
    start = {k: theta0[k][m].astype(np.float32) for k, m in mask.items()}
    if args.backend == "csr":
        latent = apply_sign_supermask_sparse(model, mask, magnitude, start, batch=32)
    else:
        latent = apply_sign_supermask(model, mask, magnitude, start)
    if args.optimizer == "layer-sgd":
        optimizer = score_optimizer("layer-sgd", model, latent, magnitude, theta0, args.lr, args.momentum)
    elif args.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    torch.manual_seed(0)
    order = np.random.default_rng(0).permutation(len(ds.train))
    began, kept = time.time(), sum(v.size for v in start.values())
    for step, first in enumerate(range(0, len(order), 32), start=1):
        idx = order[first:first + 32]
        model.train()
        optimizer.zero_grad()
        F.cross_entropy(model(torch.from_numpy(ds.train.x[idx])), torch.from_numpy(ds.train.y[idx])).backward()
        optimizer.step()
        if step in CHECKPOINTS or step == args.steps:
            flipped = sum(int(((latent[k].detach().numpy() >= 0) != (start[k] >= 0)).sum()) for k in mask) / kept
            accuracy = evaluate(model, ds.test.x, ds.test.y, 1000)[1]
            print(f"{args.backend} {args.optimizer} lr={args.lr} step {step:5d} accuracy {accuracy:.4f} "
                  f"flipped {flipped:.4f} {time.time() - began:.0f}s", flush=True)
        if step >= args.steps:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
