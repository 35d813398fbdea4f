"""The local training loss: plain cross-entropy, or logit-adjusted by the client's own label prior.

Why: under label skew (Dirichlet α = 0.5, two or three dominant classes per
client) plain cross-entropy makes every client push down the logits of the
classes it lacks; averaged over the ten clients a round samples, the global
classifier swings toward whatever those clients hold. Adding log π_c — the
client's label frequencies, smoothed — to the logits while training (logit
adjustment / balanced softmax; FedLC applies it to federated label skew) lets a
client fit its data without learning its prior, so what it uploads is closer to
the balanced classifier everyone shares. Evaluation always uses the raw logits.
"""

from __future__ import annotations

import numpy as np
import torch

LOCAL_LOSSES = ("cross-entropy", "logit-adjusted")
PRIOR_PSEUDO_COUNT = 0.5  # added to each class count so absent classes get a finite, very negative offset


def label_prior_offset(labels: np.ndarray, num_classes: int) -> torch.Tensor:
    """log π_c for c < ``num_classes``: smoothed frequencies of ``labels``, the offset added to the logits."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels outside [0, {num_classes})")
    counts = np.bincount(labels.astype(np.int64), minlength=num_classes).astype(np.float64) + PRIOR_PSEUDO_COUNT
    return torch.from_numpy(np.log(counts / counts.sum()).astype(np.float32))


def add_label_prior(model: torch.nn.Module, offset: torch.Tensor | np.ndarray) -> torch.nn.Module:
    """Fold ``offset`` into the bias of ``model``'s last Linear layer: the balanced classifier a
    logit-adjusted client trained, turned into the Bayes classifier for its own label distribution
    (its personalized model). Returns ``model``."""
    last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    if not last or last[-1].bias is None or last[-1].out_features != len(offset):
        raise ValueError("model has no final Linear layer with a bias matching the offset")
    with torch.no_grad():
        last[-1].bias.add_(torch.as_tensor(np.asarray(offset), dtype=last[-1].bias.dtype))
    return model


def logit_offset(local_loss: str, labels: np.ndarray, num_classes: int) -> torch.Tensor | None:
    """What ``train_epochs`` adds to the logits for ``local_loss`` (None: plain cross-entropy)."""
    if local_loss == "cross-entropy":
        return None
    if local_loss == "logit-adjusted":
        return label_prior_offset(labels, num_classes)
    raise ValueError(f"local loss '{local_loss}' is not one of {LOCAL_LOSSES}")
