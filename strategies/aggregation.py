"""Aggregation rules: how replies from many clients become one global state."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from flwr.app import Array, ArrayRecord


def weighted_mean(records: Sequence[ArrayRecord], weights: Sequence[float]) -> ArrayRecord:
    """Per-tensor weighted mean (FedAvg), accumulated in float64 in the given order.

    The caller fixes the order (fedprune sorts by partition id) so the result is
    bit-for-bit reproducible whatever order replies arrived in.
    """
    if not records:
        raise ValueError("weighted_mean needs at least one record")
    if len(records) != len(weights):
        raise ValueError("one weight per record")
    total = float(sum(weights))
    if total <= 0:
        raise ValueError("weights must sum to a positive number")
    keys = list(records[0].keys())
    out = ArrayRecord()
    for key in keys:
        first = records[0][key].numpy()
        acc = np.zeros(first.shape, dtype=np.float64)
        for record, weight in zip(records, weights, strict=True):
            acc += record[key].numpy().astype(np.float64) * (weight / total)
        out[key] = Array(acc.astype(first.dtype, copy=False))
    return out
