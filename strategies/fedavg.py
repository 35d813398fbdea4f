"""FedAvg: the dense baseline every pruning method is compared against, ours and Flower's own.

``DenseFedAvg`` is fedprune's (seeded sampling over partition ids, reply screening). ``FlowerStrategy``
runs one of Flower's strategies unchanged behind the same hooks (``--strategy flwr-fedavg``: Flower's
``FedAvg``), so the round loop treats both alike and the comparison measures only the strategies.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO
from typing import Any

import numpy as np
from fedprune.protos.contract import ConfigKey, Record
from fedprune.pruning.aggregation import weighted_mean
from fedprune.strategies.base import FederatedStrategy, ReplyRejected
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy


class DenseFedAvg(FederatedStrategy):
    """Send the full model, average the returned models weighted by local examples.

    Messages use Flower's FedAvg layout (``arrays`` + ``config`` in, ``arrays`` +
    ``metrics`` out), so the same ClientApp serves this strategy and Flower's own
    ``FedAvg`` in back-to-back comparisons.
    """

    arrays_key = Record.ARRAYS
    config_key = Record.CONFIG

    def summary(self) -> None:
        """Log the sampling settings."""
        log(INFO, "DenseFedAvg: %d clients/round, min %d valid replies, seed %d",
            self.clients_per_round, self.min_train_nodes, self.seed)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample clients and send each the current global model."""
        nodes = self.sample_nodes(server_round, grid)
        self._expected = {key: arrays[key].shape for key in arrays.keys()}
        config = ConfigRecord({**dict(config), ConfigKey.SERVER_ROUND: server_round})
        content = RecordDict({self.arrays_key: arrays, self.config_key: config})
        return [Message(content=content, dst_node_id=node, message_type=MessageType.TRAIN) for node in nodes]

    def check_reply(self, server_round: int, reply: Message) -> ArrayRecord:
        """The reply's model: every global tensor with its shape, finite, plus its example count."""
        self.check_metrics(reply)
        record = reply.content.array_records.get(self.arrays_key)
        if record is None:
            raise ReplyRejected(f"reply has no ArrayRecord '{self.arrays_key}'")
        if set(record.keys()) != set(self._expected):
            raise ReplyRejected("reply's tensors do not match the global model's")
        for key, shape in self._expected.items():
            if tuple(record[key].shape) != tuple(shape):
                raise ReplyRejected(f"tensor {key} has shape {record[key].shape}, expected {shape}")
            values = record[key].numpy()
            if values.dtype.kind == "f" and not np.isfinite(values).all():
                raise ReplyRejected(f"tensor {key} holds NaN/Inf")
        return record

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Weighted mean of the valid replies' models; ``None`` if too few arrived."""
        valid = self.screen_replies(server_round, replies)
        if not self.enough_replies(server_round, valid):
            return None, None
        weights = [self.weight_of(s.reply) for s in valid]
        arrays = weighted_mean([s.decoded for s in valid], weights)
        return arrays, self.train_metrics([s.reply for s in valid], weights)


class FlowerStrategy(FederatedStrategy):
    """A Flower ``Strategy`` run unchanged behind fedprune's hooks (``--strategy flwr-fedavg``: ``FedAvg``).

    The four round steps and ``summary`` go to ``inner`` as they are: it samples and screens by its own
    rules (Flower's ``FedAvg`` samples with the global ``random``, which the runner seeds). Every other hook
    keeps the base's do-nothing default, and it reports and checkpoints nothing of its own: its round
    entries hold the runner's figures only, and a resume restarts Flower's sampling from the seed.

    Parameters
    ----------
    inner : Strategy
        The Flower strategy to run.
    clients_per_round : int
        Nodes ``inner`` samples per round (the base's bookkeeping; ``inner`` decides the sampling).
    """

    def __init__(self, inner: Strategy, *, clients_per_round: int) -> None:
        super().__init__(clients_per_round=clients_per_round)
        self.inner = inner

    def summary(self) -> None:
        """Flower's own summary of ``inner``."""
        self.inner.summary()

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """``inner``'s training messages."""
        return self.inner.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """``inner``'s aggregate."""
        return self.inner.aggregate_train(server_round, replies)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """``inner``'s evaluation messages (none for ``flwr-fedavg``: ``fraction_evaluate`` is 0)."""
        return self.inner.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """``inner``'s evaluation metrics."""
        return self.inner.aggregate_evaluate(server_round, replies)

    def round_report(self, server_round: int) -> dict[str, Any]:
        """Nothing: ``inner`` screens replies itself, so there are no fedprune rejections to report."""
        return {}

    def state_dict(self) -> dict[str, Any]:
        """Nothing: Flower's ``FedAvg`` keeps no state between rounds (a stateful Flower strategy would start
        afresh after a resume)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore (``state_dict`` saves nothing)."""
