import pickle

import numpy as np
import pytest
from fedprune.data import DatasetMissingError
from fedprune.data.sources import load_cifar10, load_digits, load_fashion_mnist


def test_fashion_mnist_real_files_shapes_and_label_counts():
    d = load_fashion_mnist()
    assert d.train.x.shape == (60000, 1, 28, 28) and d.test.x.shape == (10000, 1, 28, 28)
    assert d.train.x.dtype == np.float32 and d.train.y.dtype == np.int64
    assert np.array_equal(np.bincount(d.train.y), np.full(10, 6000))
    assert np.array_equal(np.bincount(d.test.y), np.full(10, 1000))
    assert abs(float(d.train.x.mean())) < 0.05  # normalized


def test_fashion_mnist_env_override_and_missing_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("FEDPRUNE_FASHION_MNIST_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(DatasetMissingError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist()
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetMissingError, match="train-images-idx3-ubyte"):
        load_fashion_mnist(tmp_path / "empty")


def test_fashion_mnist_truncated_file_is_rejected(tmp_path):
    import gzip
    import shutil

    src = "/usr/share/datasets/fashion-mnist"
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "train-labels-idx1-ubyte.gz"):
        shutil.copy(f"{src}/{name}", tmp_path / name)
    with gzip.open(f"{src}/train-images-idx3-ubyte.gz") as f:
        head = f.read(1000)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(head)
    with pytest.raises(ValueError, match="header says"):
        load_fashion_mnist(tmp_path)


def _write_cifar_batch(path, n, rng):
    batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
    with open(path, "wb") as f:
        pickle.dump(batch, f)
    return batch


def test_cifar10_tiny_batches_in_the_real_format(tmp_path):
    rng = np.random.default_rng(0)
    batches = [_write_cifar_batch(tmp_path / f"data_batch_{i}", 4, rng) for i in range(1, 6)]
    _write_cifar_batch(tmp_path / "test_batch", 3, rng)
    d = load_cifar10(tmp_path)
    assert d.train.x.shape == (20, 3, 32, 32) and d.test.x.shape == (3, 3, 32, 32)
    assert list(d.train.y[:4]) == batches[0][b"labels"]
    # channel-major layout: first 1024 bytes are the red plane
    red = batches[0][b"data"][0, :1024].reshape(32, 32) / 255.0
    assert np.allclose(d.train.x[0, 0], (red - 0.4914) / 0.2470, atol=1e-5)


def test_cifar10_missing_path_names_what_to_do(tmp_path, monkeypatch):
    monkeypatch.delenv("FEDPRUNE_CIFAR10_DIR", raising=False)
    with pytest.raises(DatasetMissingError, match="cifar-10-batches-py"):
        load_cifar10(None)
    with pytest.raises(DatasetMissingError, match="data_batch_1"):
        load_cifar10(tmp_path)


def test_digits_split():
    d = load_digits()
    assert d.train.x.shape[1:] == (1, 8, 8)
    assert len(d.train) + len(d.test) == 1797
