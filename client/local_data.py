"""Which examples a client holds: its partition of the training split, split into local train/test.

In simulation the node config gives ``partition-id`` and ``num-partitions``;
a deployed edge node sets the same keys in its node config, and may instead hold
its own data: ``data-path`` names an ``.npz`` file with ``x`` (float32, shaped
like the run's dataset inputs, normalized the same way) and ``y`` (int labels),
optionally ``x_test``/``y_test``; without them the local test split is held out
as for a partition. ``partition-id`` then only identifies the node.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from fedprune.client.node_cache import cached_partition
from fedprune.client.settings import ClientSettings
from fedprune.data import LabeledArrays, partition_indices, run_dataset, split_local
from fedprune.data.sources import DATASET_FACTS
from fedprune.protos.contract import MetricKey, NodeKey


@dataclass(frozen=True)
class LocalData:
    """A client's local train and test examples."""

    partition_id: int
    train: LabeledArrays
    test: LabeledArrays


def partition_of(node_config: dict, settings: ClientSettings) -> tuple[int, int]:
    """(partition id, number of partitions) from the node config, checked against the run."""
    if MetricKey.PARTITION_ID not in node_config:
        raise ValueError(f"node config has no '{MetricKey.PARTITION_ID}'; set it on the SuperNode (--node-config)")
    pid = int(node_config[MetricKey.PARTITION_ID])
    count = int(node_config.get(MetricKey.NUM_PARTITIONS, settings.num_clients))
    if count != settings.num_clients:
        raise ValueError(f"node has num-partitions={count} but the run expects --num-clients {settings.num_clients}")
    if not 0 <= pid < count:
        raise ValueError(f"partition-id {pid} is outside [0, {count})")
    return pid, count


def _partition(settings: ClientSettings, partition_id: int) -> tuple[LabeledArrays, LabeledArrays]:
    """Read the dataset and cut node ``partition_id``'s (train, test) arrays out of it, as every node does."""
    splits = run_dataset(settings)
    parts = partition_indices(
        splits.train.y, settings.partition, settings.num_clients, alpha=settings.alpha,
        classes_per_client=settings.classes_per_client, min_partition_size=settings.min_partition_size,
        seed=settings.seed,
    )
    local = split_local(parts[partition_id], settings.local_test_fraction, seed=settings.seed * 100_003 + partition_id)
    return splits.train.subset(local.train), splits.train.subset(local.test)


@functools.lru_cache(maxsize=4)
def _cached(settings: ClientSettings, partition_id: int, cache_dir: str | None) -> LocalData:
    if cache_dir is None:
        return LocalData(partition_id, *_partition(settings, partition_id))
    return LocalData(partition_id, *cached_partition(cache_dir, settings, partition_id,
                                                     lambda: _partition(settings, partition_id)))


@functools.lru_cache(maxsize=4)
def _from_file(settings: ClientSettings, partition_id: int, data_path: str, mtime: float) -> LocalData:
    splits = DATASET_FACTS[settings.dataset]  # shape and classes only: the node's own file is its data
    path = Path(data_path).expanduser()
    with np.load(path, allow_pickle=False) as arrays:
        if "x" not in arrays or "y" not in arrays:
            raise ValueError(f"{path} must hold arrays 'x' and 'y' (and optionally 'x_test', 'y_test')")
        x, y = arrays["x"].astype(np.float32), arrays["y"].astype(np.int64)
        test = (arrays["x_test"].astype(np.float32), arrays["y_test"].astype(np.int64)) if "x_test" in arrays \
            else None
    for name, xs, ys in (("x", x, y),) + ((("x_test", *test),) if test else ()):
        if xs.shape[1:] != tuple(splits.input_shape) or len(xs) != len(ys):
            raise ValueError(f"{path}: '{name}' is {xs.shape} with {len(ys)} labels; the run's dataset "
                             f"'{settings.dataset}' needs (N, {', '.join(map(str, splits.input_shape))})")
        if len(ys) and (ys.min() < 0 or ys.max() >= splits.num_classes):
            raise ValueError(f"{path}: labels must be in [0, {splits.num_classes})")
    data = LabeledArrays(x, y)
    if test is not None:
        return LocalData(partition_id, data, LabeledArrays(*test))
    local = split_local(np.arange(len(y)), settings.local_test_fraction, seed=settings.seed * 100_003 + partition_id)
    return LocalData(partition_id, data.subset(local.train), data.subset(local.test))


def load_local_data(node_config: dict, settings: ClientSettings) -> LocalData:
    """This client's data: cached per process (a Ray actor serves many clients) and, where the node config
    names a ``cache-dir`` (a deployed node, whose every message runs in a new process), on the node's disk."""
    pid, _ = partition_of(node_config, settings)
    if node_config.get(NodeKey.DATA_PATH):
        path = Path(str(node_config[NodeKey.DATA_PATH])).expanduser()
        if not path.is_file():
            raise ValueError(f"node config data-path {path} is not a file")
        return _from_file(settings, pid, str(path), path.stat().st_mtime)
    cache_dir = node_config.get(NodeKey.CACHE_DIR)
    return _cached(settings, pid, str(cache_dir) if cache_dir else None)
