"""Local SGD on a client's data: the training step of dense and masked FedAvg."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from fedprune.data import LabeledArrays
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class TrainStats:
    """What one local training call did."""

    num_examples: int
    steps: int
    mean_loss: float


def local_seed(seed: int, server_round: int, partition_id: int) -> int:
    """Seed for one client's round: differs per client and round, fixed by the run seed."""
    return (seed * 1_000_003 + server_round * 10_007 + partition_id) % (2**31)


def train_sgd(model: nn.Module, data: LabeledArrays, *, epochs: int, lr: float, momentum: float,
              batch_size: int, seed: int, logit_offset: torch.Tensor | None = None) -> TrainStats:
    """Plain minibatch SGD with momentum over ``epochs`` passes, shuffled with ``seed``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    return train_epochs(model, data, optimizer, epochs=epochs, batch_size=batch_size, seed=seed,
                        logit_offset=logit_offset)


def train_epochs(model: nn.Module, data: LabeledArrays, optimizer: torch.optim.Optimizer, *, epochs: int,
                 batch_size: int, seed: int, logit_offset: torch.Tensor | None = None) -> TrainStats:
    """Minibatch cross-entropy training with ``optimizer`` over ``epochs`` shuffled passes.

    ``logit_offset`` (``client.local_loss``) is added to the logits inside the loss only.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.train()
    losses, steps = [], 0
    for _ in range(epochs):
        order = rng.permutation(len(data))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            xb, yb = torch.from_numpy(data.x[idx]), torch.from_numpy(data.y[idx])
            optimizer.zero_grad(set_to_none=True)
            logits = model(xb)
            loss = F.cross_entropy(logits if logit_offset is None else logits + logit_offset, yb)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            steps += 1
    return TrainStats(len(data) * epochs, steps, float(np.mean(losses)) if losses else float("nan"))
