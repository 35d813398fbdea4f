"""FedAvg restricted to a fixed mask chosen on the server without data (static-mask baselines).

The server scores the seeded initial model (magnitude, random, ...), keeps the
top ``density`` fraction, and from then on only kept values travel, through
the wire codec: a node gets the coded mask the first time it is sampled (or
again after it lost it), and every message after that is encoded relative to
the mask's digest, so a node holding another mask cannot be misread
(``strategies.sparse_fedavg``, the part FedTiny is built on too).
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO
from typing import Any

import numpy as np
from fedprune.protos.codec import reference_digest
from fedprune.protos.contract import split_kept
from fedprune.strategies.base import FederatedStrategy
from fedprune.strategies.sparse_fedavg import SparseFedAvg, restrict
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid


class StaticMaskFedAvg(FederatedStrategy):
    """Sparse FedAvg over a server-chosen fixed mask; only kept values (and the mask once) travel."""

    def __init__(self, *, mask: dict[str, np.ndarray], architecture: str, model_seed: int, score: str,
                 clients_per_round: int, min_train_nodes: int = 1, seed: int = 0) -> None:
        super().__init__(clients_per_round=clients_per_round, min_train_nodes=min_train_nodes, seed=seed)
        self.mask = {k: np.asarray(v, dtype=bool) for k, v in mask.items()}
        self.mask_digest = reference_digest(self.mask)
        self.score = score
        total = sum(m.size for m in self.mask.values())
        self.density = sum(int(m.sum()) for m in self.mask.values()) / total
        self.sparse = SparseFedAvg(architecture=architecture, model_seed=model_seed, density=self.density)

    def summary(self) -> None:
        """Log the mask and sampling settings."""
        log(INFO, "StaticMaskFedAvg: %s mask at density %.4f, %d clients/round", self.score, self.density,
            self.clients_per_round)

    def initialize_arrays(self, arrays: ArrayRecord) -> ArrayRecord:
        """Zero the pruned weights of the initial model: the global model lives on the mask."""
        return restrict(arrays, self.mask)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Send each sampled node the kept values; the coded mask too if it does not hold it."""
        config = self.sparse.begin_round(server_round, arrays, config)
        kept = split_kept(self.sparse.template, self.mask)
        return [self.sparse.message(server_round, node, kept, self.mask, config, self.mask_digest)
                for node in self.sample_nodes(server_round, grid)]

    def check_reply(self, server_round: int, reply: Message) -> dict[str, np.ndarray]:
        """The reply's update, decoded against the mask (digest must match) and what was asked for."""
        self.check_metrics(reply)
        tensors, _ = self.sparse.decode_update(reply, self.mask, digest=self.mask_digest)
        return tensors

    def forget_node(self, node_id: int) -> None:
        """A node that failed may have lost its mask: send it again next time."""
        self.sparse.delivery.forget(node_id)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Weighted mean of kept values (and dense tensors) from the valid replies."""
        valid = self.screen_replies(server_round, replies)
        if not self.enough_replies(server_round, valid):
            return None, None
        weights = [self.weight_of(s.reply) for s in valid]
        arrays = self.sparse.mean([s.decoded for s in valid], weights, self.mask)
        return arrays, self.train_metrics([s.reply for s in valid], weights)

    def round_report(self, server_round: int) -> dict[str, Any]:
        """Adds the mask's density and score to the round entry."""
        return {**super().round_report(server_round), "density": self.density, "score": self.score}
