"""The fedprune ClientApp: answers discovery, trains and evaluates on the node's local data."""

from __future__ import annotations

import dataclasses
from logging import WARNING

import torch
from fedprune.client.bn_statistics import bn_evaluation_reply, bn_statistics_reply
from fedprune.client.device_budget import declared_budget
from fedprune.client.edge_model import export_after_training
from fedprune.client.hidenseek import evaluate_hidenseek, train_hidenseek
from fedprune.client.local_data import LocalData, load_local_data, partition_of
from fedprune.client.local_training import train_as_configured
from fedprune.client.masked_training import train_masked
from fedprune.client.settings import ClientConfigError, ClientSettings, client_settings
from fedprune.data.sources import DATASET_FACTS, DatasetFacts
from fedprune.models import build_model
from fedprune.models.device import DEVICES
from fedprune.models.evaluation import evaluate as evaluate_model
from fedprune.protos.contract import ConfigKey, MetricKey, NodeKey, Record, Task
from fedprune.protos.flower_records import config_of
from fedprune.protos.option_rules import check_choice
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import log

app = ClientApp()


def _settings(context: Context) -> ClientSettings:
    """The run's client options, with the node's own ``device`` (node config) over the run's."""
    settings = client_settings(context.run_config)
    device = context.node_config.get(NodeKey.DEVICE)
    if device is None or device == settings.device:
        return settings
    check_choice(NodeKey.DEVICE, str(device), DEVICES, ClientConfigError)
    return dataclasses.replace(settings, device=str(device))


def use_threads(node_config: dict) -> int:
    """Set torch's intra-op threads to the node config's ``num-threads`` (absent: 1, as in a simulation,
    where Ray runs one actor per CPU and more threads only oversubscribe the cores); returns the count."""
    threads = max(1, int(node_config.get(NodeKey.NUM_THREADS, 1)))
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    return threads


def _node_inputs(context: Context) -> tuple[ClientSettings, LocalData, DatasetFacts]:
    """What training and evaluation start from: the run's settings, this node's data and the dataset's facts
    (input shape, class count; known without loading it), with the node's threads set."""
    use_threads(context.node_config)
    settings = _settings(context)
    return settings, load_local_data(context.node_config, settings), DATASET_FACTS[settings.dataset]


@app.query()
def describe(msg: Message, context: Context) -> Message:
    """Tell the server which partition this node holds (sampling is seeded by partition) and any
    memory/compute budget it declares (FedTiny turns budgets into the density the node trains)."""
    settings = _settings(context)
    pid, count = partition_of(context.node_config, settings)
    budget = declared_budget(context.node_config, pid, settings)
    return Message(RecordDict({Record.NODE: MetricRecord({MetricKey.PARTITION_ID: pid,
                                                           MetricKey.NUM_PARTITIONS: count, **budget})}),
                   reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Train locally; a node with ``model-dir`` in its node config also keeps the result for edge inference."""
    reply = _train(msg, context)
    if context.node_config.get(NodeKey.MODEL_DIR):
        settings = _settings(context)
        data = DATASET_FACTS[settings.dataset]
        try:
            export_after_training(reply, msg, context, settings, data.input_shape, data.num_classes)
        except (OSError, ValueError, KeyError) as exc:  # a full disk on the device must not cost the round
            log(WARNING, "could not keep the trained model in %s: %s", context.node_config[NodeKey.MODEL_DIR], exc)
    return reply


def _train(msg: Message, context: Context) -> Message:
    """Load the global model, run local SGD, return the model and the example count."""
    settings, local, data = _node_inputs(context)
    config = config_of(msg)
    model = build_model(settings.model, data.input_shape, data.num_classes)
    task = config.get(ConfigKey.TASK)
    batch_size = int(config.get(ConfigKey.BATCH_SIZE, settings.batch_size))
    if task == Task.MASKED_SGD:
        return train_masked(msg, context, settings, local, model, data.num_classes)
    if task == Task.BN_STATISTICS:
        return bn_statistics_reply(msg, local, data.input_shape, data.num_classes, batch_size)
    if task == Task.HIDENSEEK:
        return train_hidenseek(msg, context, settings, local, data.input_shape, data.num_classes)
    model.load_state_dict(msg.content.array_records[Record.ARRAYS].to_torch_state_dict())
    stats = train_as_configured(model, local, config, settings, data.num_classes)
    metrics = MetricRecord({MetricKey.NUM_EXAMPLES: stats.num_examples, MetricKey.TRAIN_LOSS: stats.mean_loss,
                            MetricKey.PARTITION_ID: local.partition_id, MetricKey.TRAIN_STATE_BYTES: stats.state_bytes})
    return Message(RecordDict({Record.ARRAYS: ArrayRecord(model.state_dict()), Record.METRICS: metrics}),
                   reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Evaluate the received global model on this node's local test split."""
    settings, local, data = _node_inputs(context)
    task = config_of(msg).get(ConfigKey.TASK)
    if task == Task.HIDENSEEK:
        return evaluate_hidenseek(msg, context, settings, local, data.input_shape, data.num_classes)
    if task == Task.BN_EVALUATE:
        return bn_evaluation_reply(msg, local, data.input_shape, data.num_classes)
    model = build_model(settings.model, data.input_shape, data.num_classes)
    model.load_state_dict(msg.content.array_records[Record.ARRAYS].to_torch_state_dict())
    loss, accuracy = evaluate_model(model, local.test.x, local.test.y, settings.eval_batch_size)
    metrics = MetricRecord({MetricKey.NUM_EXAMPLES: len(local.test), MetricKey.LOSS: loss,
                            MetricKey.ACCURACY: accuracy})
    return Message(RecordDict({Record.METRICS: metrics}), reply_to=msg)
