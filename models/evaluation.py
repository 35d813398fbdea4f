"""Loss and accuracy of a model on labeled arrays: the one evaluation loop server and clients share."""

from __future__ import annotations

import numpy as np
import torch
from fedprune.models.device import device_of
from torch import nn
from torch.nn import functional as F


@torch.no_grad()
def evaluate(model: nn.Module, x: np.ndarray, y: np.ndarray, batch_size: int = 1000) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` (eval mode) over ``(x, y)``."""
    if len(y) == 0:
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    device = device_of(model)  # batches go where the model is (``models.device.on_device``)
    loss_sum, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        xb = torch.from_numpy(x[start:start + batch_size]).to(device)
        yb = torch.from_numpy(y[start:start + batch_size]).to(device)
        logits = model(xb)
        loss_sum += float(F.cross_entropy(logits, yb, reduction="sum"))
        correct += int((logits.argmax(1) == yb).sum())
    model.train(was_training)
    return loss_sum / len(y), correct / len(y)
