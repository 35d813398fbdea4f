"""Which examples a client holds: its partition of the training split, split into local train/test.

In simulation the node config gives ``partition-id`` and ``num-partitions``;
a deployed edge node sets the same keys in its node config.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from data import LabeledArrays, load_dataset, partition_indices, split_local
from server.run_config import RunSettings


@dataclass(frozen=True)
class LocalData:
    """A client's local train and test examples."""

    partition_id: int
    train: LabeledArrays
    test: LabeledArrays


def partition_of(node_config: dict, settings: RunSettings) -> tuple[int, int]:
    """(partition id, number of partitions) from the node config, checked against the run."""
    if "partition-id" not in node_config:
        raise ValueError("node config has no 'partition-id'; set it on the SuperNode (--node-config)")
    pid = int(node_config["partition-id"])
    count = int(node_config.get("num-partitions", settings.num_clients))
    if count != settings.num_clients:
        raise ValueError(f"node has num-partitions={count} but the run expects --num-clients {settings.num_clients}")
    if not 0 <= pid < count:
        raise ValueError(f"partition-id {pid} is outside [0, {count})")
    return pid, count


@functools.lru_cache(maxsize=4)
def _cached(settings: RunSettings, partition_id: int) -> LocalData:
    splits = load_dataset(settings.dataset, settings.dataset_path or None)
    parts = partition_indices(
        splits.train.y, settings.partition, settings.num_clients, alpha=settings.alpha,
        classes_per_client=settings.classes_per_client, min_partition_size=settings.min_partition_size,
        seed=settings.seed,
    )
    local = split_local(parts[partition_id], settings.local_test_fraction, seed=settings.seed * 100_003 + partition_id)
    return LocalData(partition_id, splits.train.subset(local.train), splits.train.subset(local.test))


def load_local_data(node_config: dict, settings: RunSettings) -> LocalData:
    """This client's data (cached per process: a Ray actor serves many clients)."""
    pid, _ = partition_of(node_config, settings)
    return _cached(settings, pid)
