"""Client side of FedTiny's adaptive BN selection: re-estimate BatchNorm statistics, evaluate candidates.

The node rebuilds θ0 from the seed in the payload's manifest and checks it
against the server's digest (the weights never travel), applies each candidate
mask, and either re-estimates every BatchNorm layer's running mean/variance on
its local training data with forward passes only (no gradients, no weight
change) or evaluates each candidate with the pooled statistics the server sent
on its local held-out split.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from fedprune.client.local_data import LocalData
from fedprune.data import LabeledArrays
from fedprune.kernels.convert import sparsify
from fedprune.models import build_model
from fedprune.models.evaluation import evaluate
from fedprune.protos.codec import Decoded, Manifest, decode, encode
from fedprune.protos.contract import (
    CANDIDATE,
    THETA0_DIGEST,
    ConfigKey,
    Kind,
    MetricKey,
    Record,
    candidate_accuracy_key,
    candidate_key,
    candidate_loss_key,
    rebuild_theta0,
)
from fedprune.protos.flower_records import config_of, content_with_payload, payload_of
from flwr.app import Message, MetricRecord, RecordDict
from torch import nn


def _rebuilt_theta0(decoded: Decoded, input_shape: tuple, num_classes: int) -> dict[str, np.ndarray]:
    """θ0 from the candidates payload's manifest (architecture and seed), checked against the server's digest."""
    m = decoded.manifest
    return rebuild_theta0(m.architecture, m.model_seed, input_shape, num_classes,
                          decoded.tensors[THETA0_DIGEST].tobytes())


def candidates_of(tensors: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Per candidate index: its tensors (masks, and pooled statistics when sent), names without the prefix."""
    out: dict[int, dict[str, np.ndarray]] = {}
    for key, value in tensors.items():
        if key.startswith(CANDIDATE + "/"):
            _, index, name = key.split("/", 2)
            out.setdefault(int(index), {})[name] = value
    if sorted(out) != list(range(len(out))) or not out:
        raise ValueError("candidate indices are not 0..C-1")
    return [out[i] for i in range(len(out))]


def candidate_model(theta0: dict[str, np.ndarray], tensors: dict[str, np.ndarray], architecture: str,
                    input_shape: tuple, num_classes: int, batch: int) -> nn.Module:
    """θ0 on a candidate's mask (plus any statistics given), its layers swapped for compact sparse kernels."""
    model = build_model(architecture, input_shape, num_classes)
    state = {}
    for key, initial in theta0.items():
        given = tensors.get(key)
        value = initial if given is None else initial * given if given.dtype == bool else given
        if value.shape != initial.shape:
            raise ValueError(f"'{key}' has shape {value.shape}, expected {initial.shape}")
        state[key] = torch.from_numpy(np.asarray(value, dtype=initial.dtype, order="C"))
    model.load_state_dict(state)
    sparsify(model, {k: v for k, v in tensors.items() if v.dtype == bool}, batch=batch, training=False)
    return model


@torch.no_grad()
def reestimate_bn(model: nn.Module, data: LabeledArrays, batch_size: int) -> dict[str, np.ndarray]:
    """Reset every BatchNorm's running statistics and re-estimate them (cumulative average) by forward passes.

    Only running statistics change; parameters are untouched (no gradients are computed).
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # cumulative moving average: every batch counts equally
    was_training = model.training
    model.train()
    for start in range(0, len(data), batch_size):
        model(torch.from_numpy(data.x[start:start + batch_size]))
    model.train(was_training)
    return {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()
            if k.rsplit(".", 1)[-1] in ("running_mean", "running_var")}


def _reply(msg: Message, tensors: dict[str, np.ndarray] | None, metrics: dict) -> Message:
    if tensors is None:
        return Message(RecordDict({Record.METRICS: MetricRecord(metrics)}), reply_to=msg)
    blob = encode(tensors, manifest=Manifest(kind=Kind.FEDTINY_BN_STATISTICS))
    return Message(content_with_payload(blob, metrics=MetricRecord(metrics)), reply_to=msg)


def _for_each_candidate(msg: Message, input_shape: tuple, num_classes: int, batch: int,
                        work: Callable[[int, nn.Module], None]) -> None:
    decoded = decode(payload_of(msg))
    theta0 = _rebuilt_theta0(decoded, input_shape, num_classes)
    for index, tensors in enumerate(candidates_of(decoded.tensors)):
        work(index, candidate_model(theta0, tensors, decoded.manifest.architecture, input_shape, num_classes, batch))


def bn_statistics_reply(msg: Message, local: LocalData, input_shape: tuple, num_classes: int,
                        batch_size: int) -> Message:
    """Re-estimated running statistics of every candidate on the local training split."""
    stats: dict[str, np.ndarray] = {}

    def work(index: int, model: nn.Module) -> None:
        stats.update({candidate_key(index, k): v for k, v in reestimate_bn(model, local.train, batch_size).items()})

    _for_each_candidate(msg, input_shape, num_classes, batch_size, work)
    return _reply(msg, stats, {MetricKey.NUM_EXAMPLES: len(local.train), MetricKey.PARTITION_ID: local.partition_id})


def bn_evaluation_reply(msg: Message, local: LocalData, input_shape: tuple, num_classes: int) -> Message:
    """Validation loss and accuracy of every candidate with the pooled statistics (local held-out split,
    or the training split when the node holds out nothing)."""
    batch = int(config_of(msg).get(ConfigKey.EVAL_BATCH_SIZE, 1000))
    held_out = local.test if len(local.test) else local.train
    metrics: dict = {MetricKey.NUM_EXAMPLES: len(held_out), MetricKey.PARTITION_ID: local.partition_id}

    def work(index: int, model: nn.Module) -> None:
        loss, accuracy = evaluate(model, held_out.x, held_out.y, batch)
        metrics[candidate_loss_key(index)], metrics[candidate_accuracy_key(index)] = float(loss), float(accuracy)

    _for_each_candidate(msg, input_shape, num_classes, batch, work)
    return _reply(msg, None, metrics)

