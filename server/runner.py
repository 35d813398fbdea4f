"""The round loop: set up (or resume) a run, then train, evaluate, measure and record each round.

It follows Flower's ``Strategy.start`` step for step (configure_train ->
send_and_receive -> aggregate_train -> configure_evaluate -> aggregate_evaluate
-> centralized evaluation) and adds what a product run needs: measured bytes
per node and direction, a results file and an atomic checkpoint after every
round, and resume from that checkpoint.

A run has three parts, each a few small functions:

* setup (``set_up``): seeds, dataset, model, strategy, the nodes and their partitions
  (``meet_nodes``), the checkpoint of a resumed run (``resume``), the first ``results.json``;
* one round (``play_round``): the strategy's hooks on the metered grid, then the central evaluation;
* recording (``round_entry``, ``record_round``, ``count_failed_round``): the round's entry, results.json,
  the checkpoint, and the stop after ``--max-failed-rounds`` failed rounds in a row.

The loop calls only the hooks ``strategies.base.FederatedStrategy`` declares.
"""

from __future__ import annotations

import random
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from logging import ERROR, INFO, WARNING
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fedprune.data import LabeledArrays, run_dataset
from fedprune.models.device import on_device, resolve_device
from fedprune.models.evaluation import evaluate
from fedprune.protos.contract import ConfigKey, MetricKey, Record
from fedprune.protos.flower_records import error_reason
from fedprune.server.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from fedprune.server.metered_grid import MeteredGrid, Traffic
from fedprune.server.model_facts import dense_model_bytes
from fedprune.server.results import (
    environment,
    format_progress,
    mark_failed,
    per_client,
    summarize,
    write_results,
)
from fedprune.server.round_failures import failure_reasons, summarize_reasons
from fedprune.server.run_config import RunSettings
from fedprune.strategies.base import FederatedStrategy, NodesMissingError
from fedprune.strategies.registry import build_strategy, seeded_model
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from torch import nn

# Options that may differ between a run and its resume without changing its results.
_RESUMABLE = {"out", "resume", "rounds", "round_timeout", "max_failed_rounds"}


class RunFailedError(RuntimeError):
    """The run cannot go on (too many rounds in a row without a valid reply); the message says why."""


def peak_rss_bytes() -> int:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


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
        mapping[node] = int(reply.content[Record.NODE][MetricKey.PARTITION_ID])
        if profiles is not None:
            profiles[node] = dict(reply.content[Record.NODE])
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
    """Set up, then play and record every remaining round; the run is completed when the last one is."""
    run = set_up(grid, settings, out_dir)
    for server_round in range(run.start, settings.rounds + 1):
        started = time.perf_counter()
        outcome = play_round(run, server_round)
        entry = round_entry(run, server_round, outcome, started)
        record_round(run, server_round, entry)
        progress(format_progress(entry, settings.rounds))
        count_failed_round(run, entry)
    run.document["status"] = "completed"
    write_results(out_dir, run.document)
    return run.document


# -- setup ------------------------------------------------------------------------------------------------


@dataclass
class Federation:
    """One run between its steps: what setup built, the global arrays, the results document so far."""

    settings: RunSettings
    out_dir: Path
    test: LabeledArrays  # the server's central evaluation split
    model: nn.Module  # evaluates the global arrays
    param_count: int
    strategy: FederatedStrategy
    grid: MeteredGrid  # every message of the run goes through it, so every byte is measured
    partitions: dict[int, int]  # node id -> partition id
    setup: dict[str, Any]  # results.json's ``setup`` block: nodes, seconds and bytes of discovery
    arrays: ArrayRecord  # the global model
    fingerprint: dict[str, Any]  # what a checkpoint must match to be resumed
    rounds: list[dict[str, Any]] = field(default_factory=list)  # results.json's round entries
    start: int = 1  # the first round to play (after a resume: the one after the checkpoint's)
    document: dict[str, Any] = field(default_factory=dict)  # results.json
    failed_streak: int = 0  # rounds in a row without an update
    dense_model_bytes: int = 0  # the float32 model serialized as dense FedAvg sends it (one ArrayRecord)


def set_up(grid: Grid, settings: RunSettings, out_dir: Path) -> Federation:
    """Seed every RNG, build the dataset, model and strategy, meet the nodes, resume if asked, and write the
    first ``results.json`` (status ``running``)."""
    random.seed(settings.seed)  # Flower's own strategies sample with the global RNG
    np.random.seed(settings.seed)
    torch.manual_seed(settings.seed)

    splits = run_dataset(settings)
    model, _ = seeded_model(settings)
    arrays = ArrayRecord(model.state_dict())
    strategy = build_strategy(settings)
    arrays = strategy.initialize_arrays(arrays)
    metered = MeteredGrid(grid)
    partitions, setup = meet_nodes(metered, strategy, settings)
    run = Federation(settings=settings, out_dir=out_dir, test=splits.test, model=model,
                     param_count=sum(p.numel() for p in model.parameters()), strategy=strategy, grid=metered,
                     partitions=partitions, setup=setup, arrays=arrays, fingerprint=fingerprint(settings),
                     dense_model_bytes=dense_model_bytes(model))
    if settings.resume:
        resume(run)
    summary = summarize(run.rounds, run.param_count, run.setup, run.dense_model_bytes)
    run.document = {"config": settings.to_run_config(), "environment": environment(), "setup": run.setup,
                    "status": "running", "rounds": run.rounds, "summary": summary}
    write_results(out_dir, run.document)
    return run


def meet_nodes(grid: MeteredGrid, strategy: FederatedStrategy,
               settings: RunSettings) -> tuple[dict[int, int], dict[str, Any]]:
    """Wait for every node, ask each which partition it holds and what it declares, and tell the strategy.

    Returns each node's partition and results.json's ``setup`` block (nodes, seconds, bytes of discovery)."""
    started = time.perf_counter()
    nodes = wait_for_nodes(grid, settings.num_clients, settings.round_timeout)
    profiles: dict[int, dict[str, Any]] = {}
    partitions = discover_partitions(grid, nodes, settings.round_timeout, profiles)
    traffic = grid.take_traffic()
    strategy.bind_nodes(partitions)
    strategy.bind_node_profiles(profiles)  # e.g. FedTiny: declared budgets -> each node's density
    return partitions, {"nodes": len(nodes), "seconds": time.perf_counter() - started,
                        "uplink_bytes": traffic.uplink_bytes, "downlink_bytes": traffic.downlink_bytes}


def resume(run: Federation) -> None:
    """Continue from the checkpoint in ``run.out_dir``: its arrays, rounds and strategy state; a checkpoint
    of other settings, another model or a state the strategy refuses raises ``CheckpointError``."""
    checkpoint = load_checkpoint(run.out_dir, run.fingerprint, model_state=run.arrays.to_torch_state_dict(),
                                 total_rounds=run.settings.rounds)
    run.arrays, run.rounds, run.start = checkpoint["arrays"], checkpoint["rounds"], checkpoint["round"] + 1
    try:
        run.strategy.load_state_dict(checkpoint["strategy_state"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"--resume: {run.out_dir / 'checkpoint.pt'}: {exc}") from None
    log(INFO, "resuming after round %d from %s", run.start - 1, run.out_dir)


# -- one round --------------------------------------------------------------------------------------------


@dataclass
class RoundOutcome:
    """What one round did, for its entry in results.json."""

    sampled: set[int]  # nodes sent a training message
    aggregated: bool  # the strategy updated the global model
    train_metrics: MetricRecord | None
    federated: MetricRecord | None  # the strategy's federated evaluation, if it ran one
    traffic: Traffic  # bytes per node and direction, failed nodes and why
    loss: float  # central evaluation of the global model after the round
    accuracy: float


def train_config(settings: RunSettings) -> ConfigRecord:
    """The training options every client gets each round (strategies add their own keys to a copy)."""
    return ConfigRecord({ConfigKey.LR: settings.lr, ConfigKey.MOMENTUM: settings.momentum,
                         ConfigKey.LOCAL_EPOCHS: settings.local_epochs, ConfigKey.BATCH_SIZE: settings.batch_size})


def play_round(run: Federation, server_round: int) -> RoundOutcome:
    """One round on the metered grid: the strategy's extra exchanges, training, aggregation and federated
    evaluation (all their bytes count in this round), then the central evaluation of the global model."""
    strategy, grid, timeout = run.strategy, run.grid, run.settings.round_timeout
    prepared = strategy.prepare_round(server_round, run.arrays, grid, timeout)
    if prepared is not None:
        run.arrays = prepared
    messages = list(strategy.configure_train(server_round, run.arrays, train_config(run.settings), grid))
    replies = list(grid.send_and_receive(messages, timeout=timeout))
    new_arrays, train_metrics = strategy.aggregate_train(server_round, replies)
    if new_arrays is not None:
        run.arrays = new_arrays
    eval_messages = list(strategy.configure_evaluate(server_round, run.arrays, ConfigRecord(), grid))
    federated = None
    if eval_messages:
        federated = strategy.aggregate_evaluate(server_round, grid.send_and_receive(eval_messages, timeout=timeout))
    traffic = grid.take_traffic()

    run.model.load_state_dict(run.arrays.to_torch_state_dict())
    with on_device(run.model, resolve_device(run.settings.device)):
        loss, accuracy = evaluate(run.model, run.test.x, run.test.y, run.settings.eval_batch_size)
    return RoundOutcome(sampled={m.metadata.dst_node_id for m in messages}, aggregated=new_arrays is not None,
                        train_metrics=train_metrics, federated=federated, traffic=traffic, loss=loss,
                        accuracy=accuracy)


# -- recording --------------------------------------------------------------------------------------------


def round_entry(run: Federation, server_round: int, outcome: RoundOutcome, started: float) -> dict[str, Any]:
    """The round's entry in results.json: the runner's figures, each sampled node's bytes, the strategy's
    ``round_report``, and why each node gave no usable reply when the round failed."""
    report = run.strategy.round_report(server_round)
    rejected = {item["node_id"] for item in report.get("rejected_replies", [])}
    traffic, sampled, partitions = outcome.traffic, outcome.sampled, run.partitions
    train_metrics = outcome.train_metrics
    entry = {
        "round": server_round,
        "accuracy": float(outcome.accuracy),
        "loss": float(outcome.loss),
        "uplink_bytes": int(traffic.uplink_bytes),
        "downlink_bytes": int(traffic.downlink_bytes),
        "clients_sampled": len(sampled),
        "clients_failed": len((traffic.failed | rejected) & sampled),
        "seconds": time.perf_counter() - started,
        "reply_wait_seconds": traffic.wait_seconds,  # of those, waiting for the nodes' replies
        "aggregated": outcome.aggregated,
        "failed": not outcome.aggregated,
        "server_peak_rss_bytes": peak_rss_bytes(),
        "train_loss": float(train_metrics[MetricKey.TRAIN_LOSS])
        if train_metrics and MetricKey.TRAIN_LOSS in train_metrics else None,
        "client_train_state_bytes": int(train_metrics[MetricKey.TRAIN_STATE_BYTES])
        if train_metrics and MetricKey.TRAIN_STATE_BYTES in train_metrics else None,
        "clients": [
            {"node_id": node, "partition_id": partitions.get(node), "uplink_bytes": traffic.uplink[node],
             "downlink_bytes": traffic.downlink[node], "failed": node in traffic.failed or node in rejected}
            for node in sorted(sampled, key=lambda n: partitions.get(n, n))
        ],
        **report,
    }
    entry |= per_client(entry, run.dense_model_bytes)
    if outcome.federated is not None:
        entry["federated_evaluation"] = dict(outcome.federated)
    if not outcome.aggregated or entry["clients_failed"]:  # say why each failed node failed
        entry["failure_reasons"] = failure_reasons(traffic, report.get("rejected_replies", []), sampled)
    return entry


def record_round(run: Federation, server_round: int, entry: dict[str, Any]) -> None:
    """Add ``entry`` to results.json (with the summary and the strategy's run report), then checkpoint the
    global arrays, the strategy's state and every round so far."""
    run.rounds.append(entry)
    run.document["rounds"], run.document["summary"] = run.rounds, summarize(run.rounds, run.param_count, run.setup,
                                                                                 run.dense_model_bytes)
    report = run.strategy.run_report()
    if report is not None:  # run-level figures of the strategy (FedTiny: selection, adjustments)
        run.document["strategy_report"] = report
    write_results(run.out_dir, run.document)
    save_checkpoint(run.out_dir, server_round=server_round, arrays=run.arrays,
                    strategy_state=run.strategy.state_dict(), rounds=run.rounds, fingerprint=run.fingerprint)


def count_failed_round(run: Federation, entry: dict[str, Any]) -> None:
    """Count rounds in a row without an update; ``RunFailedError`` with the reasons once there are
    ``--max-failed-rounds`` of them (0: never stop)."""
    run.failed_streak = run.failed_streak + 1 if entry["failed"] else 0
    limit = run.settings.max_failed_rounds
    if limit and run.failed_streak >= limit:
        first = entry["round"] - run.failed_streak + 1
        raise RunFailedError(
            f"rounds {first}-{entry['round']} had too few valid replies to update the model "
            f"(--max-failed-rounds {limit}): {summarize_reasons(entry['failure_reasons'])}")
