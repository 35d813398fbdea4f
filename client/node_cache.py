"""A deployed node's data partition, kept in its node config's ``cache-dir`` between messages.

A warm executor runs every message in a fresh child, so what a Ray actor keeps in memory across
messages (the dataset, the partition) would be rebuilt each time: reading Fashion-MNIST and
partitioning it costs about 2 s per message on a 2-core machine. The node's local train/test arrays
are written once per run settings and read back by later messages. A file is used only while
everything that decides the partition is unchanged — the settings, the dataset's files (names, sizes,
modification times), the partitioning code — all of which make up its name, and only if its arrays
still hash to the digest stored beside them; anything else is rebuilt (a damaged file with a warning).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from logging import WARNING
from pathlib import Path
from typing import Any

import numpy as np
from fedprune.data import LabeledArrays
from fedprune.data.partition import partition_indices
from fedprune.data.sources import dataset_fingerprint
from flwr.common import log

from fedprune.atomic_file import write_atomically

CACHE_FORMAT = 1
KEEP_FILES = 8  # the most recently used partitions a cache-dir keeps (older runs' files are removed)
FIELDS = ("dataset", "dataset_path", "partition", "num_clients", "alpha", "classes_per_client",
          "min_partition_size", "seed", "local_test_fraction")


def partition_key(settings: Any, partition_id: int) -> str:
    """Digest of what decides node ``partition_id``'s arrays (``settings``: the client's run settings)."""
    code = hashlib.blake2b(Path(partition_indices.__code__.co_filename).read_bytes(), digest_size=16).hexdigest()
    facts = [CACHE_FORMAT, {name: getattr(settings, name) for name in FIELDS}, partition_id,
             dataset_fingerprint(settings.dataset, settings.dataset_path or None), code]
    return hashlib.blake2b(json.dumps(facts, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


def arrays_digest(arrays: dict[str, np.ndarray]) -> str:
    """BLAKE2b over every array's name, dtype, shape and bytes, in name order."""
    digest = hashlib.blake2b(digest_size=16)
    for name in sorted(arrays):
        value = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}|{value.dtype.str}|{value.shape}|".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _read(path: Path) -> tuple[LabeledArrays, LabeledArrays]:
    with np.load(path, allow_pickle=False) as stored:
        arrays = {name: stored[name] for name in ("train_x", "train_y", "test_x", "test_y")}
        recorded = str(stored["digest"])
    if arrays_digest(arrays) != recorded:
        raise ValueError("its arrays do not match the digest stored with them")
    return LabeledArrays(arrays["train_x"], arrays["train_y"]), LabeledArrays(arrays["test_x"], arrays["test_y"])


def _write(path: Path, train: LabeledArrays, test: LabeledArrays) -> None:
    arrays = {"train_x": train.x, "train_y": train.y, "test_x": test.x, "test_y": test.y}

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, digest=np.array(arrays_digest(arrays)), **arrays)

    write_atomically(path, write)
    kept = sorted(path.parent.glob("partition-*.npz"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in kept[KEEP_FILES:]:
        old.unlink(missing_ok=True)


def cached_partition(cache_dir: str | Path, settings: Any, partition_id: int,
                     build: Callable[[], tuple[LabeledArrays, LabeledArrays]]) -> tuple[LabeledArrays, LabeledArrays]:
    """Node ``partition_id``'s (train, test) arrays from ``cache_dir``, or ``build()`` them and keep them there."""
    folder = Path(cache_dir).expanduser()
    path = folder / f"partition-{partition_id}-{partition_key(settings, partition_id)}.npz"
    if path.is_file():
        try:
            found = _read(path)
            os.utime(path)  # most recently used
            return found
        except (OSError, ValueError, KeyError) as exc:
            log(WARNING, "cached partition %s is unusable (%s); rebuilding it", path, exc)
    train, test = build()
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write(path, train, test)
    except OSError as exc:  # a full or read-only disk costs the cache, never the round
        log(WARNING, "could not keep the partition in %s: %s", folder, exc)
    return train, test
