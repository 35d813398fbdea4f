"""Loaders for the datasets fedprune trains on, from files already on disk.

Nothing is downloaded: Fashion-MNIST comes from the Debian package
``dataset-fashion-mnist``, the 8x8 digits ship with scikit-learn, and CIFAR-10
is read from a ``cifar-10-batches-py`` directory the user supplies.
"""

from __future__ import annotations

import functools
import gzip
import importlib.metadata
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

FASHION_MNIST_ENV = "FEDPRUNE_FASHION_MNIST_DIR"
FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
CIFAR10_ENV = "FEDPRUNE_CIFAR10_DIR"


class DatasetMissingError(FileNotFoundError):
    """A dataset's files are not where fedprune looked; the message says how to fix it."""


@dataclass(frozen=True)
class LabeledArrays:
    """One split of a dataset: float32 images ``(N, C, H, W)``, normalized, and int64 labels."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, indices: np.ndarray) -> LabeledArrays:
        """Rows at ``indices`` (a view-free copy, so partitions do not alias)."""
        return LabeledArrays(self.x[indices], self.y[indices])


@dataclass(frozen=True)
class DatasetSplits:
    """Train and test splits plus what a model needs to know about the inputs."""

    name: str
    train: LabeledArrays
    test: LabeledArrays
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.x.shape[1:])  # type: ignore[return-value]


def _read_idx(path: Path) -> np.ndarray:
    """Read one (optionally gzipped) IDX file into a numpy array, checking its header."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = np.frombuffer(raw, dtype=">u4", count=ndim, offset=4).astype(np.int64)
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(raw) - offset != expected:
        raise ValueError(f"{path}: header says {expected} bytes of data, file has {len(raw) - offset}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(tuple(dims))


def _find_idx(directory: Path, stem: str) -> Path:
    for candidate in (directory / f"{stem}.gz", directory / stem):
        if candidate.is_file():
            return candidate
    raise DatasetMissingError(
        f"Fashion-MNIST file '{stem}[.gz]' not found in {directory}. Install it with "
        f"`apt-get install -y dataset-fashion-mnist` (files go to {FASHION_MNIST_DEFAULT_DIR}), "
        f"or point ${FASHION_MNIST_ENV} / run-config `dataset-path` at a directory holding the IDX files."
    )


def _normalize(images: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    x = images.astype(np.float32) / 255.0
    return (x - mean.reshape(1, -1, 1, 1)) / std.reshape(1, -1, 1, 1)


def fashion_mnist_directory(path: str | os.PathLike | None = None) -> Path:
    """Where Fashion-MNIST's IDX files are read from: ``path``, else ``$FEDPRUNE_FASHION_MNIST_DIR``, else the
    Debian package's folder."""
    return Path(path or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DEFAULT_DIR)


def load_fashion_mnist(path: str | os.PathLike | None = None) -> DatasetSplits:
    """Fashion-MNIST (60k/10k, 1x28x28) from the Debian package's IDX files."""
    directory = fashion_mnist_directory(path)
    if not directory.is_dir():
        raise DatasetMissingError(
            f"Fashion-MNIST directory {directory} does not exist. Install the data with "
            "`apt-get install -y dataset-fashion-mnist`, or set "
            f"${FASHION_MNIST_ENV} / run-config `dataset-path` to a directory of IDX files."
        )
    mean, std = np.array([0.2860], np.float32), np.array([0.3530], np.float32)
    splits = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(_find_idx(directory, f"{prefix}-images-idx3-ubyte"))
        labels = _read_idx(_find_idx(directory, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"Fashion-MNIST {split} files in {directory} are inconsistent")
        splits[split] = LabeledArrays(_normalize(images[:, None], mean, std), labels.astype(np.int64))
    return DatasetSplits("fashion-mnist", splits["train"], splits["test"], 10)


def load_digits(path: str | os.PathLike | None = None) -> DatasetSplits:
    """scikit-learn's 8x8 digits (1,797 images), split 80/20 with a fixed seed; fast for tests."""
    from sklearn.datasets import load_digits as sklearn_digits

    bunch = sklearn_digits()
    images = (bunch.images.astype(np.float32) / 16.0)[:, None]
    images = (images - 0.3) / 0.4
    labels = bunch.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(labels))
    cut = int(0.8 * len(labels))
    train, test = order[:cut], order[cut:]
    return DatasetSplits(
        "digits", LabeledArrays(images[train], labels[train]), LabeledArrays(images[test], labels[test]), 10
    )


def _read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DatasetMissingError(f"CIFAR-10 batch file {path} is missing")
    with open(path, "rb") as handle:
        batch = pickle.load(handle, encoding="bytes")
    data = np.asarray(batch[b"data"], dtype=np.uint8)
    labels = np.asarray(batch[b"labels"], dtype=np.int64)
    if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise ValueError(f"{path} is not a CIFAR-10 python batch (data shape {data.shape})")
    return data.reshape(-1, 3, 32, 32), labels


def cifar10_directory(path: str | os.PathLike | None = None) -> str | os.PathLike | None:
    """Where CIFAR-10's batches are read from: ``path``, else ``$FEDPRUNE_CIFAR10_DIR`` (``None``: neither)."""
    return path or os.environ.get(CIFAR10_ENV)


def load_cifar10(path: str | os.PathLike | None = None) -> DatasetSplits:
    """CIFAR-10 from a user-supplied ``cifar-10-batches-py`` directory (python pickle batches)."""
    raw = cifar10_directory(path)
    if not raw:
        raise DatasetMissingError(
            "CIFAR-10 cannot be downloaded here: pass run-config `dataset-path` (or set "
            f"${CIFAR10_ENV}) to a `cifar-10-batches-py` directory holding data_batch_1..5 and test_batch."
        )
    directory = Path(raw)
    if not directory.is_dir():
        raise DatasetMissingError(f"CIFAR-10 directory {directory} does not exist")
    parts = [_read_cifar_batch(directory / f"data_batch_{i}") for i in range(1, 6)]
    test_x, test_y = _read_cifar_batch(directory / "test_batch")
    mean = np.array([0.4914, 0.4822, 0.4465], np.float32)
    std = np.array([0.2470, 0.2435, 0.2616], np.float32)
    train = LabeledArrays(
        _normalize(np.concatenate([p[0] for p in parts]), mean, std),
        np.concatenate([p[1] for p in parts]),
    )
    return DatasetSplits("cifar10", train, LabeledArrays(_normalize(test_x, mean, std), test_y), 10)


DATASETS = {
    "fashion-mnist": load_fashion_mnist,
    "digits": load_digits,
    "cifar10": load_cifar10,
}


@dataclass(frozen=True)
class DatasetFacts:
    """What a dataset's loader returns, known without loading it (option checks run on hosts without the data)."""

    input_shape: tuple[int, int, int]
    num_classes: int
    reads_files: bool  # False: the data ships with a library and ``dataset-path`` means nothing


DATASET_FACTS = {
    "fashion-mnist": DatasetFacts((1, 28, 28), 10, True),
    "digits": DatasetFacts((1, 8, 8), 10, False),
    "cifar10": DatasetFacts((3, 32, 32), 10, True),
}


@functools.lru_cache(maxsize=4)
def load_dataset(name: str, path: str | None = None) -> DatasetSplits:
    """Load a dataset by name (cached per process: every Ray actor reads the files once)."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset '{name}'; choose one of {sorted(DATASETS)}")
    return DATASETS[name](path or None)


class DatasetChoice(Protocol):
    """What names a run's dataset (the server's and the clients' settings both do)."""

    @property
    def dataset(self) -> str: ...

    @property
    def dataset_path(self) -> str: ...


def run_dataset(choice: DatasetChoice) -> DatasetSplits:
    """The dataset a run's settings name, from ``dataset_path`` or, when that is empty, its standard place."""
    return load_dataset(choice.dataset, choice.dataset_path or None)


def dataset_fingerprint(name: str, path: str | None = None) -> str:
    """What identifies the data a dataset is read from, without reading it: each file's name, size and
    modification time (digits: the scikit-learn version that ships it). A node's cached partition is
    valid only while this stays the same."""
    if name == "digits":
        return f"digits scikit-learn {importlib.metadata.version('scikit-learn')}"
    directory = fashion_mnist_directory(path) if name == "fashion-mnist" else cifar10_directory(path)
    if name not in DATASETS or directory is None or not Path(directory).is_dir():
        raise DatasetMissingError(f"no data for dataset '{name}' at {directory}")
    files = sorted((entry.name, entry.stat().st_size, entry.stat().st_mtime_ns)
                   for entry in Path(directory).resolve().iterdir() if entry.is_file())
    return f"{name} {Path(directory).resolve()} {files}"
