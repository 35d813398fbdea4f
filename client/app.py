"""The fedprune ClientApp: answers discovery, trains and evaluates on the node's local data."""

from __future__ import annotations

from logging import WARNING

import torch
from fedprune.client.bn_statistics import bn_evaluation_reply, bn_statistics_reply
from fedprune.client.device_budget import declared_budget
from fedprune.client.hidenseek import evaluate_hidenseek, train_hidenseek
from fedprune.client.local_data import load_local_data, partition_of
from fedprune.client.local_loss import logit_offset
from fedprune.client.local_training import local_seed, train_sgd
from fedprune.client.masked_training import train_masked
from fedprune.data import load_dataset
from fedprune.data.sources import DatasetSplits
from fedprune.models import build_model
from fedprune.models.evaluation import evaluate as evaluate_model
from fedprune.server.run_config import RunSettings, settings_from_run_config
from fedprune.strategies.fedtiny import BN_EVAL_TASK, BN_STATS_TASK
from fedprune.strategies.hidenseek import TASK as HIDENSEEK_TASK
from fedprune.strategies.static_mask import TASK as MASKED_TASK
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import log

app = ClientApp()


def _settings(context: Context) -> RunSettings:
    return settings_from_run_config(context.run_config)


def _setup_threads() -> None:
    # One Ray actor per CPU: more intra-op threads only oversubscribe the cores.
    if torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@app.query()
def describe(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (sampling is seeded by partition) and any
    memory/compute budget it declares (FedTiny turns budgets into the density the node trains)."""
    settings = _settings(context)
    pid, count = partition_of(context.node_config, settings)
    budget = declared_budget(context.node_config, pid, settings)
    return Message(RecordDict({"node": MetricRecord({"partition-id": pid, "num-partitions": count, **budget})}),
                   reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train locally; a node with ``model-dir`` in its node config also keeps the result for edge inference."""
    reply = _train(msg, context)
    if context.node_config.get("model-dir"):
        from fedprune.client.edge_model import export_after_training

        settings = _settings(context)
        data = load_dataset_shape(settings)
        try:
            export_after_training(reply, msg, context, settings, data.input_shape, data.num_classes)
        except (OSError, ValueError, KeyError) as exc:  # a full disk on the device must not cost the round
            log(WARNING, "could not keep the trained model in %s: %s", context.node_config["model-dir"], exc)
    return reply


def _train(msg: Message, context: Context) -> Message:
    """Load the global model, run local SGD, return the model and the example count."""
    _setup_threads()
    settings = _settings(context)
    local = load_local_data(context.node_config, settings)
    config = msg.content.config_records.get("config", {})
    server_round = int(config.get("server-round", 0))
    data = load_dataset_shape(settings)
    model = build_model(settings.model, data.input_shape, data.num_classes)
    task = config.get("task")
    batch_size = int(config.get("batch-size", settings.batch_size))
    if task == MASKED_TASK:
        return train_masked(msg, context, settings, local, model, data.num_classes)
    if task == BN_STATS_TASK:
        return bn_statistics_reply(msg, local, data.input_shape, data.num_classes, batch_size)
    if config.get("task") == HIDENSEEK_TASK:
        return train_hidenseek(msg, context, settings, local, data.input_shape, data.num_classes)
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    stats = train_sgd(
        model, local.train,
        epochs=int(config.get("local-epochs", settings.local_epochs)),
        lr=float(config.get("lr", settings.lr)),
        momentum=float(config.get("momentum", settings.momentum)),
        batch_size=int(config.get("batch-size", settings.batch_size)),
        seed=local_seed(settings.seed, server_round, local.partition_id),
        logit_offset=logit_offset(settings.resolved_local_loss(), local.train.y, data.num_classes),
    )
    metrics = MetricRecord({"num-examples": stats.num_examples, "train-loss": stats.mean_loss,
                            "partition-id": local.partition_id})
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this node's local test split."""
    _setup_threads()
    settings = _settings(context)
    local = load_local_data(context.node_config, settings)
    data = load_dataset_shape(settings)
    config = msg.content.config_records.get("config", {})
    if config.get("task") == HIDENSEEK_TASK:
        return evaluate_hidenseek(msg, context, settings, local, data.input_shape, data.num_classes)
    if config.get("task") == BN_EVAL_TASK:
        return bn_evaluation_reply(msg, local, data.input_shape, data.num_classes)
    model = build_model(settings.model, data.input_shape, data.num_classes)
    model.load_state_dict(msg.content.array_records["arrays"].to_torch_state_dict())
    loss, accuracy = evaluate_model(model, local.test.x, local.test.y, settings.eval_batch_size)
    metrics = MetricRecord({"num-examples": len(local.test), "loss": loss, "accuracy": accuracy})
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)


def load_dataset_shape(settings: RunSettings) -> DatasetSplits:
    """The dataset's splits (cached per process) for input shape and class count."""
    return load_dataset(settings.dataset, settings.dataset_path or None)
