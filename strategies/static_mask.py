"""FedAvg restricted to a fixed mask chosen on the server without data (static-mask baselines).

The server scores the seeded initial model (magnitude, random, ...), keeps the
top ``density`` fraction, and from then on only kept values travel, through
the wire codec: a node gets the coded mask the first time it is sampled (or
again after it lost it), and every message after that is encoded relative to
the mask's digest, so a node holding another mask cannot be misread.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO
from typing import Any

import numpy as np
from fedprune.protos.codec import Decoded, Expected, Manifest, TensorSpec, decode, reference_digest
from fedprune.protos.contract import KEPT_SUFFIX, ConfigKey, Kind, MetricKey, Task, join_kept, split_kept
from fedprune.protos.flower_records import content_with_payload, payload_of
from fedprune.pruning.aggregation import weighted_mean
from fedprune.strategies.base import FederatedStrategy
from fedprune.strategies.mask_delivery import MaskDelivery
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid


class StaticMaskFedAvg(FederatedStrategy):
    """Sparse FedAvg over a server-chosen fixed mask; only kept values (and the mask once) travel."""

    def __init__(self, *, mask: dict[str, np.ndarray], architecture: str, model_seed: int, score: str,
                 clients_per_round: int, min_train_nodes: int = 1, seed: int = 0) -> None:
        super().__init__(clients_per_round=clients_per_round, min_train_nodes=min_train_nodes, seed=seed)
        self.mask = {k: np.asarray(v, dtype=bool) for k, v in mask.items()}
        self.mask_digest = reference_digest(self.mask)
        self.architecture, self.model_seed, self.score = architecture, model_seed, score
        total = sum(m.size for m in self.mask.values())
        self.density = sum(int(m.sum()) for m in self.mask.values()) / total
        self.delivery = MaskDelivery()
        self._template: dict[str, np.ndarray] = {}
        self._decoded: dict[int, dict[str, np.ndarray]] = {}

    def summary(self) -> None:
        """Log the mask and sampling settings."""
        log(INFO, "StaticMaskFedAvg: %s mask at density %.4f, %d clients/round", self.score, self.density,
            self.clients_per_round)

    def initialize_arrays(self, arrays: ArrayRecord) -> ArrayRecord:
        """Zero the pruned weights of the initial model: the global model lives on the mask."""
        state = {k: arrays[k].numpy() for k in arrays.keys()}
        return ArrayRecord({k: Array(v * self.mask[k] if k in self.mask else v) for k, v in state.items()})

    def _manifest(self, server_round: int) -> Manifest:
        return Manifest(self.architecture, self.model_seed, self.density, server_round, Kind.STATIC_MASK)

    def mask_for(self, node: int) -> dict[str, np.ndarray]:
        """The mask ``node`` trains this round: the global one here (FedTiny narrows it to a client's budget)."""
        return self.mask

    def _digest_of(self, mask: dict[str, np.ndarray]) -> bytes:
        return self.mask_digest if mask is self.mask else reference_digest(mask)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Send each sampled node the kept values; the coded mask too if it does not hold it."""
        self._template = {k: arrays[k].numpy() for k in arrays.keys()}
        kept = split_kept(self._template, self.mask)
        config = ConfigRecord({**dict(config), ConfigKey.SERVER_ROUND: server_round, ConfigKey.TASK: Task.MASKED_SGD})
        messages = []
        for node in self.sample_nodes(server_round, grid):
            mask = self.mask_for(node)
            values = kept if mask is self.mask else split_kept(self._template, mask)
            blob = self.delivery.payload(node, values, mask, self._manifest(server_round), self._digest_of(mask))
            messages.append(Message(content=content_with_payload(blob, config=self.node_config(node, config)),
                                    dst_node_id=node, message_type=MessageType.TRAIN))
        return messages

    def node_config(self, node: int, config: ConfigRecord) -> ConfigRecord:
        """The training config one node gets (here: the round's, for everyone). A subclass asks some nodes
        for more (FedTiny: top-K pairs from those whose budget holds the gradient tap)."""
        return config

    def expected_reply(self, node: int) -> Expected:
        """What a training reply from ``node`` must hold: the kept values of its mask and every other tensor of
        the model, as float32/int64 of exactly those shapes (checked before anything is decoded)."""
        mask = self.mask_for(node)
        specs = {}
        for name, like in self._template.items():
            if name in mask:
                specs[name + KEPT_SUFFIX] = TensorSpec("float32", (int(mask[name].sum()),))
            else:
                specs[name] = TensorSpec.of(like)
        return Expected(specs)

    def check_reply(self, server_round: int, reply: Message) -> str | None:
        """Decode the reply against the mask (digest must match) and what was asked for; check every tensor."""
        reason = super().check_reply(server_round, reply)
        if reason:
            return reason
        node = reply.metadata.src_node_id
        mask = self.mask_for(node)
        try:
            blob = payload_of(reply)
            decoded = decode(blob, reference=mask, expect=self.expected_reply(node))
            tensors = self.model_tensors(server_round, reply, blob, decoded)
            join_kept(tensors, mask, self._template)
        except (ValueError, KeyError) as exc:  # WireFormatError is a ValueError
            self.forget_node(node)  # resend the full mask next time: never a silent desync
            return f"payload rejected: {exc}"
        self.delivery.confirm(node, mask, self._digest_of(mask))
        self._decoded[node] = tensors
        return None

    def model_tensors(self, server_round: int, reply: Message, blob: bytes,
                      decoded: Decoded) -> dict[str, np.ndarray]:
        """The tensors of a decoded training reply that update the model (here: all of them; reference
        pairs are not expected). A subclass takes what else its replies carry (FedTiny: top-K gradient
        pairs) and raises ``ValueError`` on bad ones."""
        if decoded.pairs:
            raise ValueError(f"unexpected reference pairs for {sorted(decoded.pairs)[:3]}")
        return decoded.tensors

    def forget_node(self, node_id: int) -> None:
        """A node that failed may have lost its mask: send it again next time."""
        self.delivery.forget(node_id)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Weighted mean of kept values (and dense tensors) from the valid replies."""
        self._decoded = {}
        valid = self.screen_replies(server_round, replies)
        if not self.enough_replies(server_round, valid):
            return None, None
        weights = [self.weight_of(m) for m in valid]
        records = [ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in
                                self._decoded[m.metadata.src_node_id].items()}) for m in valid]
        mean = weighted_mean(records, weights)
        joined = join_kept({k: mean[k].numpy() for k in mean.keys()}, self.mask, self._template)
        losses = [float(next(iter(m.content.metric_records.values())).get(MetricKey.TRAIN_LOSS, 0.0))
                  for m in valid]
        self._decoded = {}
        return ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in joined.items()}), MetricRecord(
            {MetricKey.TRAIN_LOSS: float(np.average(losses, weights=weights)),
             MetricKey.NUM_EXAMPLES: int(sum(weights))})

    def round_report(self, server_round: int) -> dict[str, Any]:
        """Adds the mask's density and score to the round entry."""
        return {**super().round_report(server_round), "density": self.density, "score": self.score}
