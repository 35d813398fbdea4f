"""Dense FedAvg: the baseline every pruning method is compared against."""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO

import numpy as np
from fedprune.strategies.aggregation import weighted_mean
from fedprune.strategies.base import FederatedStrategy
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid


class DenseFedAvg(FederatedStrategy):
    """Send the full model, average the returned models weighted by local examples.

    Messages use Flower's FedAvg layout (``arrays`` + ``config`` in, ``arrays`` +
    ``metrics`` out), so the same ClientApp serves this strategy and Flower's own
    ``FedAvg`` in back-to-back comparisons.
    """

    arrays_key = "arrays"
    config_key = "config"

    def summary(self) -> None:
        """Log the sampling settings."""
        log(INFO, "DenseFedAvg: %d clients/round, min %d valid replies, seed %d",
            self.clients_per_round, self.min_train_nodes, self.seed)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample clients and send each the current global model."""
        nodes = self.sample_nodes(server_round, grid)
        self._expected = {key: arrays[key].shape for key in arrays.keys()}
        config = ConfigRecord({**dict(config), "server-round": server_round})
        content = RecordDict({self.arrays_key: arrays, self.config_key: config})
        return [Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN) for node in nodes]

    def check_reply(self, server_round: int, reply: Message) -> str | None:
        """A reply must carry every global tensor with its shape, finite, plus its example count."""
        reason = super().check_reply(server_round, reply)
        if reason:
            return reason
        record = reply.content.array_records.get(self.arrays_key)
        if record is None:
            return f"reply has no ArrayRecord '{self.arrays_key}'"
        if set(record.keys()) != set(self._expected):
            return "reply's tensors do not match the global model's"
        for key, shape in self._expected.items():
            if tuple(record[key].shape) != tuple(shape):
                return f"tensor {key} has shape {record[key].shape}, expected {shape}"
            values = record[key].numpy()
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                return f"tensor {key} holds NaN/Inf"
        return None

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Weighted mean of the valid replies' models; ``None`` if too few arrived."""
        valid = self.screen_replies(server_round, replies)
        if not self.enough_replies(server_round, valid):
            return None, None
        weights = [self.weight_of(m) for m in valid]
        arrays = weighted_mean([m.content[self.arrays_key] for m in valid], weights)
        losses = [float(next(iter(m.content.metric_records.values())).get("train-loss", 0.0)) for m in valid]
        metrics = MetricRecord({
            "train-loss": float(np.average(losses, weights=weights)),
            "num-examples": int(sum(weights)),
        })
        return arrays, metrics
