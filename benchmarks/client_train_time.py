"""One client's local round, dense FedAvg vs HideNseek (and static-mask), timed back to back.

Usage: python benchmarks/client_train_time.py [--density 0.1] [--pairs 5]
Same partition (Fashion-MNIST, Dirichlet 0.5, 100 clients, partition 0), FL CNN, 1 local epoch, batch 32,
one torch thread (what a Ray actor gets). The methods run alternately; the medians and ratios are printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedprune.client.local_data import load_local_data  # noqa: E402
from fedprune.client.local_loss import logit_offset  # noqa: E402
from fedprune.client.local_training import train_epochs, train_sgd  # noqa: E402
from fedprune.client.score_optimizer import score_optimizer  # noqa: E402
from fedprune.client.settings import ClientSettings  # noqa: E402
from fedprune.kernels.convert import sparsify  # noqa: E402
from fedprune.kernels.sign_supermask import apply_sign_supermask_sparse  # noqa: E402
from fedprune.models import build_model  # noqa: E402
from fedprune.pruning.schedules import data_free_mask  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--density", type=float, default=0.1)
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    settings = ClientSettings()  # the client's defaults
    local = load_local_data({"partition-id": 0, "num-partitions": 100}, settings)
    base = build_model("fl-cnn", (1, 28, 28), 10, seed=0)
    theta0 = {k: v.detach().numpy().copy() for k, v in base.state_dict().items()}
    mask = data_free_mask(base, "synflow", args.density, 0)
    magnitude = {k: np.abs(theta0[k][m]) for k, m in mask.items()}

    def dense_round():
        model = build_model("fl-cnn", (1, 28, 28), 10, seed=0)
        train_sgd(model, local.train, epochs=1, lr=0.05, momentum=0.9, batch_size=32, seed=1)

    def hidenseek_round():  # the client's defaults: layer-normalized SGD, logit-adjusted loss
        model = build_model("fl-cnn", (1, 28, 28), 10, seed=0)
        scores = {k: np.sign(theta0[k][m]) * magnitude[k] for k, m in mask.items()}
        latent = apply_sign_supermask_sparse(model, mask, magnitude, scores, batch=32)
        optimizer = score_optimizer(settings.score_optimizer, model, latent, magnitude, theta0,
                                    settings.score_lr, settings.score_momentum)
        train_epochs(model, local.train, optimizer, epochs=1, batch_size=32, seed=1,
                     logit_offset=logit_offset("logit-adjusted", local.train.y, 10))

    def static_round():
        model = build_model("fl-cnn", (1, 28, 28), 10, seed=0)
        sparsify(model, mask, batch=32, training=True)
        train_sgd(model, local.train, epochs=1, lr=0.05, momentum=0.9, batch_size=32, seed=1)

    methods = {"dense fedavg": dense_round, "hidenseek": hidenseek_round, "static-synflow": static_round}
    times = {name: [] for name in methods}
    for fn in methods.values():
        fn()  # warm up
    for _ in range(args.pairs):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    base_time = statistics.median(times["dense fedavg"])
    print(f"partition 0: {len(local.train)} training examples, density {args.density}, 1 thread")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:15s} median {median:.3f} s per local round  ratio to dense {median / base_time:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
