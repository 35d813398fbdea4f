"""Work a deployed node repeats every message is done once per node and run, and checked when reused.

A warm executor runs each message in a new child process, so in-memory caches do not survive between
messages: the data partition is kept in the node's ``cache-dir`` (checked by digest), the mask a node
rebuilds from θ0 in the run's ``Context.state`` (checked against the server's digest).
"""

import dataclasses
import logging

import numpy as np
import pytest
import torch
from fedprune.client import hidenseek as hidenseek_client
from fedprune.client import local_data as local_data_module
from fedprune.client import node_cache
from fedprune.client.app import app as client_app
from fedprune.client.app import use_threads
from fedprune.client.hidenseek import STATE_REBUILT_MASK
from fedprune.client.local_data import load_local_data
from fedprune.client.settings import client_settings
from fedprune.protos.codec import decode, encode
from fedprune.protos.contract import NodeKey
from fedprune.server.runner import run_federation
from flwr.app import ConfigRecord

from tests.inprocess_grid import InProcessGrid


@pytest.fixture
def settings(digits_settings):
    return client_settings(dataclasses.replace(digits_settings, num_clients=4).to_run_config())


def _node(pid: int, cache_dir=None) -> dict:
    config = {NodeKey.PARTITION_ID: pid, NodeKey.NUM_PARTITIONS: 4}
    if cache_dir is not None:
        config[NodeKey.CACHE_DIR] = str(cache_dir)
    return config


def test_a_cached_partition_equals_the_partition_and_is_read_back_not_rebuilt(settings, tmp_path, monkeypatch):
    direct = load_local_data(_node(1), settings)
    cached = load_local_data(_node(1, tmp_path), settings)
    for a, b in ((direct.train, cached.train), (direct.test, cached.test)):
        assert np.array_equal(a.x, b.x) and np.array_equal(a.y, b.y) and a.x.dtype == b.x.dtype
    [stored] = tmp_path.glob("partition-1-*.npz")
    local_data_module._cached.cache_clear()  # a new process: nothing in memory
    monkeypatch.setattr(local_data_module, "_partition", lambda *a: pytest.fail("rebuilt instead of read"))
    again = load_local_data(_node(1, tmp_path), settings)
    assert np.array_equal(again.train.x, direct.train.x) and np.array_equal(again.test.y, direct.test.y)
    assert list(tmp_path.glob("partition-1-*.npz")) == [stored]


def test_a_damaged_cache_file_is_rebuilt_with_a_warning(settings, tmp_path, caplog):
    direct = load_local_data(_node(2, tmp_path), settings)
    [stored] = tmp_path.glob("partition-2-*.npz")
    with np.load(stored) as arrays:
        tampered = {name: arrays[name] for name in arrays.files}
    tampered["train_y"] = (tampered["train_y"] + 1) % 10  # same shapes, other labels: only the digest sees it
    with open(stored, "wb") as handle:
        np.savez(handle, **tampered)
    local_data_module._cached.cache_clear()
    with caplog.at_level(logging.WARNING):
        again = load_local_data(_node(2, tmp_path), settings)
    assert np.array_equal(again.train.y, direct.train.y)
    assert "do not match the digest" in caplog.text


def test_the_cache_key_follows_what_decides_the_partition(settings):
    key = node_cache.partition_key(settings, 0)
    assert node_cache.partition_key(settings, 1) != key
    assert node_cache.partition_key(dataclasses.replace(settings, seed=settings.seed + 1), 0) != key
    assert node_cache.partition_key(dataclasses.replace(settings, alpha=settings.alpha * 2), 0) != key
    assert node_cache.partition_key(dataclasses.replace(settings, local_epochs=7), 0) == key  # not a data setting


def test_a_cache_dir_keeps_only_the_latest_partitions(settings, tmp_path, monkeypatch):
    monkeypatch.setattr(node_cache, "KEEP_FILES", 2)
    for seed in range(4):
        load_local_data(_node(0, tmp_path), dataclasses.replace(settings, seed=seed))
    assert len(list(tmp_path.glob("partition-*.npz"))) == 2


def test_num_threads_comes_from_the_node_config():
    before = torch.get_num_threads()
    try:
        assert use_threads({NodeKey.NUM_THREADS: 2}) == 2 and torch.get_num_threads() == 2
        assert use_threads({}) == 1 and torch.get_num_threads() == 1  # a simulated node: one per Ray CPU
    finally:
        torch.set_num_threads(before)


def test_a_rebuilt_mask_is_computed_once_per_node_and_a_tampered_copy_is_not_used(digits_settings, monkeypatch):
    settings = dataclasses.replace(digits_settings, strategy="hidenseek", mask_transfer="recompute",
                                   score="synflow", density=0.3, num_clients=3, clients_per_round=3, rounds=3,
                                   personal_eval_every=0)
    rebuilt, calls = hidenseek_client._recomputed_mask.__wrapped__, []

    def counted(*args):
        calls.append(args)
        return rebuilt(*args)

    monkeypatch.setattr(hidenseek_client, "_recomputed_mask", counted)  # no in-memory cache: a new process each time
    grid = InProcessGrid(client_app, 3, settings.to_run_config())
    doc = run_federation(grid, settings, progress=lambda line: None)
    assert doc["status"] == "completed" and all(e["clients_failed"] == 0 for e in doc["rounds"])
    assert len(calls) == 3  # once per node, not once per message

    node = grid.node_ids[0]
    kept = decode(grid.contexts[node].state.config_records[STATE_REBUILT_MASK]["payload"]).tensors
    name = sorted(kept)[0]
    kept[name].flat[0] = not kept[name].flat[0]
    grid.contexts[node].state[STATE_REBUILT_MASK] = ConfigRecord({"payload": encode(kept)})
    more = dataclasses.replace(settings, rounds=4, resume=True)
    doc = run_federation(grid, more, progress=lambda line: None)
    assert doc["rounds"][-1]["clients_failed"] == 0
    assert len(calls) == 4  # the tampered copy failed its digest: rebuilt for that node only


def test_a_nodes_device_node_config_wins_over_the_runs_and_is_checked():
    from fedprune.client.app import _settings
    from fedprune.client.settings import ClientConfigError

    class NodeContext:
        def __init__(self, run_config: dict, node_config: dict) -> None:
            self.run_config, self.node_config = run_config, node_config

    assert _settings(NodeContext({"device": "auto"}, {})).device == "auto"
    assert _settings(NodeContext({"device": "auto"}, {NodeKey.DEVICE: "cpu"})).device == "cpu"
    with pytest.raises(ClientConfigError, match="device"):
        _settings(NodeContext({}, {NodeKey.DEVICE: "tpu"}))


@pytest.mark.skipif(torch.cuda.is_available(), reason="asserts what a host without a GPU answers")
def test_deploy_supernode_device_option_reaches_the_node_config_and_cuda_is_refused_here(capsys):
    from fedprune.cli import main

    base = ["deploy", "supernode", "--superlink", "h:9092", "--partition-id", "0", "--num-partitions", "2",
            "--insecure", "--print"]
    assert main([*base, "--device", "cpu"]) == 0
    assert 'device="cpu"' in capsys.readouterr().out  # in the SuperNode's --node-config
    assert main([*base, "--device", "cuda"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("WARNING: --insecure")]
    assert len(errors) == 1 and errors[0].startswith("fedprune deploy: error: --device: ")
    assert "no CUDA GPU" in errors[0]
