"""The round loop: discover nodes, then train/aggregate/evaluate/record/checkpoint each round.

It follows Flower's ``Strategy.start`` step for step (configure_train ->
send_and_receive -> aggregate_train -> configure_evaluate -> aggregate_evaluate
-> centralized evaluation) and adds what a product run needs: measured bytes
per node and direction, a results file and an atomic checkpoint after every
round, and resume from that checkpoint.
"""

from __future__ import annotations

import random
import resource
import time
from collections.abc import Callable
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fedprune.data import load_dataset
from fedprune.models import build_model
from fedprune.models.evaluation import evaluate
from fedprune.protos.flower_records import error_reason
from fedprune.server.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fedprune.server.metered_grid import MeteredGrid, Traffic
from fedprune.server.results import environment, format_progress, mark_failed, summarize, write_results
from fedprune.server.run_config import RunSettings
from fedprune.strategies import build_strategy
from fedprune.strategies.base import NodesMissingError
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.common import log
from flwr.serverapp import Grid

# Options that may differ between a run and its resume without changing its results.
_RESUMABLE = {"out", "resume", "rounds", "round_timeout", "max_failed_rounds"}


class RunFailedError(RuntimeError):
    """The run cannot go on (too many rounds in a row without a valid reply); the message says why."""


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def failure_reasons(traffic: Traffic, rejected: list[dict[str, Any]], sampled: set[int]) -> list[dict[str, Any]]:
    """Why each sampled node gave no usable reply this round: the strategy's screening reason, else the
    transport's (error reply, no reply), one entry per node in node order."""
    reasons = {item["node_id"]: item["reason"] for item in rejected if item["node_id"] in sampled}
    for node, reason in traffic.errors.items():
        if node in sampled:
            reasons.setdefault(node, reason)
    return [{"node_id": node, "reason": reason} for node, reason in sorted(reasons.items())]


def summarize_reasons(reasons: list[dict[str, Any]], limit: int = 3) -> str:
    """The most common reasons with their counts, for one console/error line."""
    counts: dict[str, int] = {}
    for item in reasons:
        counts[item["reason"]] = counts.get(item["reason"], 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    text = "; ".join(f"{n}x {reason[:300]}" for reason, n in ranked[:limit])
    return text + (f"; and {len(ranked) - limit} other reasons" if len(ranked) > limit else "") if ranked \
        else "no reply was sent or received"


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
            log(WARNING, "node %d did not describe itself: %s", node, error_reason(reply))
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
    """Run (or resume) the federation ``settings`` describes; return the results document.

    Any failure (a bad checkpoint, a run whose rounds all fail, an error) marks ``results.json`` failed with
    the reason, keeping every round already recorded, and is raised again for Flower to see."""
    out_dir = Path(settings.out).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _run_federation(grid, settings, out_dir, progress)
    except Exception as exc:
        message = str(exc) if isinstance(exc, CheckpointError | RunFailedError) else f"{type(exc).__name__}: {exc}"
        mark_failed(out_dir, message)
        log(ERROR, "run failed: %s", message)
        raise


def _run_federation(grid: Grid, settings: RunSettings, out_dir: Path,
                    progress: Callable[[str], None]) -> dict[str, Any]:
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
        checkpoint = load_checkpoint(out_dir, print_fp, model_state=arrays.to_torch_state_dict(),
                                     total_rounds=settings.rounds)
        arrays, rounds, start = checkpoint["arrays"], checkpoint["rounds"], checkpoint["round"] + 1
        if hasattr(strategy, "load_state_dict"):
            try:
                strategy.load_state_dict(checkpoint["strategy_state"])
            except (ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(f"--resume: {out_dir / 'checkpoint.pt'}: {exc}") from None
        log(INFO, "resuming after round %d from %s", start - 1, out_dir)

    document = {"config": settings.to_run_config(), "environment": environment(), "setup": setup,
                "status": "running", "rounds": rounds, "summary": summarize(rounds, param_count)}
    write_results(out_dir, document)
    failed_streak = 0
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
        failed_round = new_arrays is None
        entry = {
            "round": server_round,
            "accuracy": float(accuracy),
            "loss": float(loss),
            "uplink_bytes": int(traffic.uplink_bytes),
            "downlink_bytes": int(traffic.downlink_bytes),
            "clients_sampled": len(sampled),
            "clients_failed": len((traffic.failed | rejected) & sampled),
            "seconds": time.perf_counter() - t0,
            "aggregated": not failed_round,
            "failed": failed_round,
            "server_peak_rss_bytes": peak_rss_bytes(),
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
        if failed_round:  # no update: say why, node by node
            entry["failure_reasons"] = failure_reasons(traffic, report.get("rejected_replies", []), sampled)
        rounds.append(entry)
        document["rounds"], document["summary"] = rounds, summarize(rounds, param_count)
        if hasattr(strategy, "run_report"):  # run-level figures of the strategy (FedTiny: selection, adjustments)
            document["strategy_report"] = strategy.run_report()
        write_results(out_dir, document)
        save_checkpoint(out_dir, server_round=server_round, arrays=arrays,
                        strategy_state=strategy.state_dict() if hasattr(strategy, "state_dict") else {},
                        rounds=rounds, fingerprint=print_fp)
        progress(format_progress(entry, settings.rounds))
        failed_streak = failed_streak + 1 if failed_round else 0
        if settings.max_failed_rounds and failed_streak >= settings.max_failed_rounds:
            first = server_round - failed_streak + 1
            raise RunFailedError(
                f"rounds {first}-{server_round} had too few valid replies to update the model "
                f"(--max-failed-rounds {settings.max_failed_rounds}): {summarize_reasons(entry['failure_reasons'])}")

    document["status"] = "completed"
    write_results(out_dir, document)
    return document
