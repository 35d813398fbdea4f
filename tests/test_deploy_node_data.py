"""An edge node's own data (node config ``data-path``) instead of a partition of the run's dataset."""

import numpy as np
import pytest
from fedprune.client.local_data import load_local_data
from fedprune.client.settings import ClientSettings


def test_a_node_trains_on_its_own_npz_file_and_bad_files_are_refused(tmp_path):
    settings = ClientSettings(dataset="digits", model="digits-cnn", num_clients=3, local_test_fraction=0.25)
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(40, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, 40)
    np.savez(tmp_path / "own.npz", x=x, y=y)
    local = load_local_data({"partition-id": 1, "num-partitions": 3, "data-path": str(tmp_path / "own.npz")},
                            settings)
    assert (len(local.train), len(local.test)) == (30, 10) and local.partition_id == 1
    assert {tuple(row.ravel()[:3]) for row in local.train.x} <= {tuple(row.ravel()[:3]) for row in x}
    np.savez(tmp_path / "split.npz", x=x, y=y, x_test=x[:5], y_test=y[:5])
    local = load_local_data({"partition-id": 0, "data-path": str(tmp_path / "split.npz")}, settings)
    assert (len(local.train), len(local.test)) == (40, 5)
    np.savez(tmp_path / "wrong.npz", x=x[:, :, :4], y=y)
    with pytest.raises(ValueError, match="needs \\(N, 1, 8, 8\\)"):
        load_local_data({"partition-id": 0, "data-path": str(tmp_path / "wrong.npz")}, settings)
    np.savez(tmp_path / "labels.npz", x=x, y=y + 10)
    with pytest.raises(ValueError, match="labels must be in"):
        load_local_data({"partition-id": 0, "data-path": str(tmp_path / "labels.npz")}, settings)
    with pytest.raises(ValueError, match="is not a file"):
        load_local_data({"partition-id": 0, "data-path": str(tmp_path / "missing.npz")}, settings)
