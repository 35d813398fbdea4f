"""The round loop: discover nodes, then train/aggregate/evaluate/record/checkpoint each round.

It follows Flower's ``Strategy.start`` step for step (configure_train ->
send_and_receive -> aggregate_train -> configure_evaluate -> aggregate_evaluate
-> centralized evaluation) and adds what a product run needs: measured bytes
per node and direction, a results file and an atomic checkpoint after every
round, and resume from that checkpoint.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from logging import INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

from data import load_dataset
from models import build_model
from models.evaluation import evaluate
from server.checkpoint import load_checkpoint, save_checkpoint
from server.metered_grid import MeteredGrid
from server.results import environment, format_progress, summarize, write_results
from server.run_config import RunSettings
from strategies import build_strategy
from strategies.base import NodesMissingError

# Options that may differ between a run and its resume without changing its results.
_RESUMABLE = {"out", "resume", "rounds", "round_timeout"}


def wait_for_nodes(grid: Grid, count: int, timeout: float) -> list[int]:
    """Block until ``count`` nodes are registered (round 1 can only sample registered nodes)."""
    deadline = time.monotonic() + timeout
    while len(nodes := sorted(grid.get_node_ids())) < count:
        if time.monotonic() > deadline:
            raise NodesMissingError(f"only {len(nodes)} of {count} nodes registered within {timeout:.0f}s")
        time.sleep(0.5)
    return nodes


def discover_partitions(grid: Grid, nodes: list[int], timeout: float,
                        profiles: dict[int, dict[str, Any]] | None = None) -> dict[int, int]:
    """Ask every node which partition it holds (one small query message each).

    With ``profiles``, also collect everything each node said about itself (e.g. FedTiny budgets).
    """
    messages = [Message(RecordDict(), dst_node_id=node, message_type=MessageType.QUERY) for node in nodes]
    mapping: dict[int, int] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        node = reply.metadata.src_node_id
        if reply.has_error():
            log(WARNING, "node %d did not describe itself: %s", node, reply.error.reason)
            continue
        mapping[node] = int(reply.content["node"]["partition-id"])
        if profiles is not None:
            profiles[node] = dict(reply.content["node"])
    duplicates = len(mapping) - len(set(mapping.values()))
    if duplicates:
        log(WARNING, "%d nodes report a partition id another node also holds", duplicates)
    return mapping


def fingerprint(settings: RunSettings) -> dict[str, Any]:
    """Settings a checkpoint must match to be resumed."""
    return {k: v for k, v in settings.to_run_config().items() if k.replace("-", "_") not in _RESUMABLE}


def run_federation(grid: Grid, settings: RunSettings, progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the federation ``settings`` describes; return the results document."""
    out_dir = Path(settings.out).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    random.seed(settings.seed)  # Flower's own strategies sample with the global RNG
    np.random.seed(settings.seed)
    torch.manual_seed(settings.seed)

    splits = load_dataset(settings.dataset, settings.dataset_path or None)
    model = build_model(settings.model, splits.input_shape, splits.num_classes, seed=settings.seed)
    arrays = ArrayRecord(model.state_dict())
    param_count = sum(p.numel() for p in model.parameters())
    strategy = build_strategy(settings)
    if hasattr(strategy, "initialize_arrays"):
        arrays = strategy.initialize_arrays(arrays)
    metered = MeteredGrid(grid)

    t_setup = time.perf_counter()
    nodes = wait_for_nodes(metered, settings.num_clients, settings.round_timeout)
    profiles: dict[int, dict[str, Any]] = {}
    partitions = discover_partitions(metered, nodes, settings.round_timeout, profiles)
    setup_traffic = metered.take_traffic()
    if hasattr(strategy, "bind_nodes"):
        strategy.bind_nodes(partitions)
    if hasattr(strategy, "bind_node_profiles"):  # e.g. FedTiny: declared budgets -> each node's density
        strategy.bind_node_profiles(profiles)
    setup = {"nodes": len(nodes), "seconds": time.perf_counter() - t_setup,
             "uplink_bytes": setup_traffic.uplink_bytes, "downlink_bytes": setup_traffic.downlink_bytes}

    print_fp = fingerprint(settings)
    rounds: list[dict[str, Any]] = []
    start = 1
    if settings.resume:
        checkpoint = load_checkpoint(out_dir, print_fp)
        arrays, rounds, start = checkpoint["arrays"], checkpoint["rounds"], checkpoint["round"] + 1
        if hasattr(strategy, "load_state_dict"):
            strategy.load_state_dict(checkpoint["strategy_state"])
        log(INFO, "resuming after round %d from %s", start - 1, out_dir)

    document = {"config": settings.to_run_config(), "environment": environment(), "setup": setup,
                "status": "running", "rounds": rounds, "summary": summarize(rounds, param_count)}
    write_results(out_dir, document)
    train_config = ConfigRecord({"lr": settings.lr, "momentum": settings.momentum,
                                 "local-epochs": settings.local_epochs, "batch-size": settings.batch_size})
    for server_round in range(start, settings.rounds + 1):
        t0 = time.perf_counter()
        # Optional hook for extra exchanges before training (FedTiny: BN selection, mask adjustments);
        # its traffic is metered into this round's bytes.
        if hasattr(strategy, "prepare_round"):
            prepared = strategy.prepare_round(server_round, arrays, metered, settings.round_timeout)
            if prepared is not None:
                arrays = prepared
        messages = list(strategy.configure_train(server_round, arrays, ConfigRecord(dict(train_config)), metered))
        replies = list(metered.send_and_receive(messages, timeout=settings.round_timeout))
        new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
        if new_arrays is not None:
            arrays = new_arrays
        eval_messages = list(strategy.configure_evaluate(server_round, arrays, ConfigRecord(), metered))
        federated = None
        if eval_messages:
            federated = strategy.aggregate_evaluate(
                server_round, metered.send_and_receive(eval_messages, timeout=settings.round_timeout))
        traffic = metered.take_traffic()

        model.load_state_dict(arrays.to_torch_state_dict())
        loss, accuracy = evaluate(model, splits.test.x, splits.test.y, settings.eval_batch_size)
        report = strategy.round_report(server_round) if hasattr(strategy, "round_report") else {}
        rejected = {item["node_id"] for item in report.get("rejected_replies", [])}
        sampled = {m.metadata.dst_node_id for m in messages}
        entry = {
            "round": server_round,
            "accuracy": float(accuracy),
            "loss": float(loss),
            "uplink_bytes": int(traffic.uplink_bytes),
            "downlink_bytes": int(traffic.downlink_bytes),
            "clients_sampled": len(sampled),
            "clients_failed": len((traffic.failed | rejected) & sampled),
            "seconds": time.perf_counter() - t0,
            "aggregated": new_arrays is not None,
            "train_loss": float(train_metrics["train-loss"]) if train_metrics and "train-loss" in train_metrics
            else None,
            "clients": [
                {"node_id": node, "partition_id": partitions.get(node), "uplink_bytes": traffic.uplink[node],
                 "downlink_bytes": traffic.downlink[node], "failed": node in traffic.failed or node in rejected}
                for node in sorted(sampled, key=lambda n: partitions.get(n, n))
            ],
            **report,
        }
        if federated is not None:
            entry["federated_evaluation"] = dict(federated)
        rounds.append(entry)
        document["rounds"], document["summary"] = rounds, summarize(rounds, param_count)
        if hasattr(strategy, "run_report"):  # run-level figures of the strategy (FedTiny: selection, adjustments)
            document["strategy_report"] = strategy.run_report()
        write_results(out_dir, document)
        save_checkpoint(out_dir, server_round=server_round, arrays=arrays,
                        strategy_state=strategy.state_dict() if hasattr(strategy, "state_dict") else {},
                        rounds=rounds, fingerprint=print_fp)
        progress(format_progress(entry, settings.rounds))

    document["status"] = "completed"
    write_results(out_dir, document)
    return document
