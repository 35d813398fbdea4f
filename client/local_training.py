"""Local SGD on a client's data: the training step of dense and masked FedAvg."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from fedprune.client.local_data import LocalData
from fedprune.client.local_loss import logit_offset
from fedprune.client.settings import ClientSettings
from fedprune.data import LabeledArrays
from fedprune.kernels.training_cost import measured_state_bytes
from fedprune.models.device import device_of, on_device, resolve_device
from fedprune.protos.contract import ConfigKey
from torch import nn
from torch.nn import functional as F


@dataclass(frozen=True)
class TrainStats:
    """What one local training call did."""

    num_examples: int
    steps: int
    mean_loss: float
    state_bytes: int  # training state held at the end (``kernels.training_cost.measured_state_bytes``)


def local_seed(seed: int, server_round: int, partition_id: int) -> int:
    """Seed for one client's round: differs per client and round, fixed by the run seed."""
    return (seed * 1_000_003 + server_round * 10_007 + partition_id) % (2**31)


def train_sgd(model: nn.Module, data: LabeledArrays, *, epochs: int, lr: float, momentum: float,
              batch_size: int, seed: int, logit_offset: torch.Tensor | None = None) -> TrainStats:
    """Plain minibatch SGD with momentum over ``epochs`` passes, shuffled with ``seed``."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    return train_epochs(model, data, optimizer, epochs=epochs, batch_size=batch_size, seed=seed,
                        logit_offset=logit_offset)


def train_as_configured(model: nn.Module, local: LocalData, config: Mapping[str, Any], settings: ClientSettings,
                        num_classes: int, device: torch.device | None = None) -> TrainStats:
    """``train_sgd`` on the node's training split with the round's options from the server's ``config`` (the run
    settings' where it names none), seeded per client and round, with the run's local loss, on ``device``
    (default: the settings' ``device`` on this host; the model comes back to the CPU)."""
    with on_device(model, device or resolve_device(settings.device)):
        return _train_configured(model, local, config, settings, num_classes)


def _train_configured(model: nn.Module, local: LocalData, config: Mapping[str, Any], settings: ClientSettings,
                      num_classes: int) -> TrainStats:
    return train_sgd(
        model, local.train,
        epochs=int(config.get(ConfigKey.LOCAL_EPOCHS, settings.local_epochs)),
        lr=float(config.get(ConfigKey.LR, settings.lr)),
        momentum=float(config.get(ConfigKey.MOMENTUM, settings.momentum)),
        batch_size=int(config.get(ConfigKey.BATCH_SIZE, settings.batch_size)),
        seed=local_seed(settings.seed, int(config.get(ConfigKey.SERVER_ROUND, 0)), local.partition_id),
        logit_offset=logit_offset(settings.resolved_local_loss(), local.train.y, num_classes),
    )


def train_epochs(model: nn.Module, data: LabeledArrays, optimizer: torch.optim.Optimizer, *, epochs: int,
                 batch_size: int, seed: int, logit_offset: torch.Tensor | None = None) -> TrainStats:
    """Minibatch cross-entropy training with ``optimizer`` over ``epochs`` shuffled passes.

    ``logit_offset`` (``client.local_loss``) is added to the logits inside the loss only.
    """
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.train()
    device = device_of(model)  # batches go where the model is (``models.device.on_device``)
    if logit_offset is not None:
        logit_offset = logit_offset.to(device)
    losses, steps = [], 0
    for _ in range(epochs):
        order = rng.permutation(len(data))
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            xb, yb = torch.from_numpy(data.x[idx]).to(device), torch.from_numpy(data.y[idx]).to(device)
            optimizer.zero_grad(set_to_none=True)
            logits = model(xb)
            loss = F.cross_entropy(logits if logit_offset is None else logits + logit_offset, yb)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
            steps += 1
    return TrainStats(len(data) * epochs, steps, float(np.mean(losses)) if losses else float("nan"),
                      measured_state_bytes(model, optimizer))
