"""The contract every fedprune strategy shares, on top of Flower's ``Strategy``.

Flower's ``Strategy`` names the four steps of a round (configure/aggregate for
train and evaluate). This base adds what every fedprune algorithm needs around
them, once:

* seeded sampling over *partition ids*, after all expected nodes registered, so
  the same seed picks the same clients in every run and after a resume;
* reply screening: error replies and replies whose content fails the strategy's
  own check are dropped, counted and logged with the node id; a round aggregates
  what arrived if at least ``min_train_nodes`` valid replies came back;
* state for checkpoints (``state_dict``/``load_state_dict``) and a per-round
  report the server folds into ``results.json``.

Byte accounting is not here: the server meters every message on the ``Grid`` it
hands to strategies (``server.metered_grid``), so a strategy cannot misreport.
"""

from __future__ import annotations

import random
from abc import abstractmethod
from collections.abc import Iterable
from logging import WARNING
from typing import Any

import numpy as np
from fedprune.protos.flower_records import error_reason
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy


def checked_state_arrays(what: str, value: Any, like: dict[str, np.ndarray], dtype: np.dtype | type) -> dict[
        str, np.ndarray]:
    """``value`` as restored from a checkpoint, if it holds exactly ``like``'s names and shapes as finite
    arrays of ``dtype``; else ``ValueError`` saying what differs (a resume must never continue from it)."""
    if not isinstance(value, dict) or set(value) != set(like):
        raise ValueError(f"strategy state '{what}' does not hold the model's tensors")
    out = {}
    for name, reference in like.items():
        array = value[name]
        if not isinstance(array, np.ndarray) or array.shape != reference.shape or array.dtype != np.dtype(dtype):
            raise ValueError(f"strategy state '{what}/{name}' is not {np.dtype(dtype)}{reference.shape}")
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            raise ValueError(f"strategy state '{what}/{name}' holds NaN or Inf")
        out[name] = array
    return out


class NodesMissingError(TimeoutError):
    """Fewer nodes registered than the run needs within the wait limit."""


class FederatedStrategy(Strategy):
    """Sampling, reply screening and checkpointable state shared by fedprune strategies.

    Parameters
    ----------
    clients_per_round : int
        Nodes sampled for training each round.
    min_train_nodes : int
        Valid training replies a round needs to update the global state.
    seed : int
        Seeds node sampling (per round, over partition ids).
    weighted_by_key : str
        Metric in each reply that weights aggregation (number of local examples).
    """

    def __init__(self, *, clients_per_round: int, min_train_nodes: int = 1, seed: int = 0,
                 weighted_by_key: str = "num-examples") -> None:
        if clients_per_round < 1:
            raise ValueError("clients_per_round must be >= 1")
        if not 1 <= min_train_nodes <= clients_per_round:
            raise ValueError("min_train_nodes must be in [1, clients_per_round]")
        self.clients_per_round = clients_per_round
        self.min_train_nodes = min_train_nodes
        self.seed = seed
        self.weighted_by_key = weighted_by_key
        self.node_partitions: dict[int, int] = {}
        self.rejected: dict[int, list[tuple[int, str]]] = {}

    # -- nodes ---------------------------------------------------------------

    def bind_nodes(self, node_partitions: dict[int, int]) -> None:
        """Tell the strategy which partition each registered node holds (server discovers it)."""
        self.node_partitions = dict(node_partitions)

    def sample_nodes(self, server_round: int, grid: Grid, count: int | None = None) -> list[int]:
        """Sample ``count`` connected nodes with an RNG seeded by (seed, round).

        Sampling is over partition ids, not node ids (which change every run),
        so a resumed run samples exactly what an uninterrupted one would.
        """
        count = self.clients_per_round if count is None else count
        connected = set(grid.get_node_ids())
        known = sorted(
            (partition, node) for node, partition in self.node_partitions.items() if node in connected
        )
        if not known:  # no discovery happened (e.g. a bare Grid): fall back to node ids
            known = [(node, node) for node in sorted(connected)]
        if len(known) < count:
            log(WARNING, "round %d: only %d nodes connected, sampling all of them", server_round, len(known))
            count = len(known)
        rng = random.Random(f"{self.seed}/{server_round}")
        return [node for _, node in rng.sample(known, count)]

    # -- replies -------------------------------------------------------------

    def check_reply(self, server_round: int, reply: Message) -> str | None:
        """Return why ``reply`` is unusable, or ``None``. Subclasses add their own checks."""
        if not reply.content.metric_records:
            return "reply carries no MetricRecord"
        metrics = next(iter(reply.content.metric_records.values()))
        weight = metrics.get(self.weighted_by_key)
        if not isinstance(weight, int | float) or weight <= 0:
            return f"metric '{self.weighted_by_key}' missing or not positive"
        return None

    def screen_replies(self, server_round: int, replies: Iterable[Message]) -> list[Message]:
        """Keep usable replies (sorted by partition id); log and count the rest."""
        valid, rejected = [], []
        for reply in replies:
            node = reply.metadata.src_node_id
            if reply.has_error():
                self.forget_node(node)
                reason = f"error reply: {error_reason(reply)}"
            else:
                try:
                    reason = self.check_reply(server_round, reply)
                except Exception as exc:  # a malformed reply must not stop the server
                    self.forget_node(node)  # whatever the node holds is unknown now: resend it in full
                    reason = f"unreadable reply: {type(exc).__name__}: {exc}"
            if reason is None:
                valid.append(reply)
            else:
                rejected.append((node, reason))
                log(WARNING, "round %d: dropped reply from node %d: %s", server_round, node, reason)
        self.rejected.setdefault(server_round, []).extend(rejected)
        valid.sort(key=self.partition_order)
        return valid

    def partition_order(self, message: Message) -> int:
        """Sort key of a reply: its node's partition id (the node id if unknown), so aggregation sums in an
        order fixed by the run seed, not by arrival."""
        return self.node_partitions.get(message.metadata.src_node_id, message.metadata.src_node_id)

    def forget_node(self, node_id: int) -> None:
        """Drop what the server believes ``node_id`` holds: it failed and may have lost its state.

        ``screen_replies`` calls this for every error reply; strategies that code messages
        against per-node state override it so the node gets everything again next time.
        """

    def enough_replies(self, server_round: int, valid: list[Message]) -> bool:
        """Whether ``valid`` meets ``min_train_nodes``; logs the decision when it does not."""
        if len(valid) >= self.min_train_nodes:
            return True
        log(WARNING, "round %d: %d valid replies < min_train_nodes=%d; global state unchanged",
            server_round, len(valid), self.min_train_nodes)
        return False

    def weight_of(self, reply: Message) -> float:
        """Aggregation weight of a screened reply."""
        metrics = next(iter(reply.content.metric_records.values()))
        return float(metrics[self.weighted_by_key])

    # -- evaluation: off unless a strategy asks for it -----------------------

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """No federated evaluation by default; the server evaluates centrally each round."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Nothing to aggregate unless ``configure_evaluate`` sent messages."""
        return None

    # -- state ---------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run after a restart (beyond the global arrays)."""
        return {"rejected": {str(k): v for k, v in self.rejected.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` saved; ``ValueError`` if it is not what ``state_dict`` writes."""
        try:
            self.rejected = {int(k): [(int(node), str(reason)) for node, reason in v]
                             for k, v in state.get("rejected", {}).items()}
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"strategy state 'rejected' is malformed: {exc}") from None

    def round_report(self, server_round: int) -> dict[str, Any]:
        """Strategy-specific figures for this round's entry in ``results.json``."""
        return {"rejected_replies": [
            {"node_id": node, "reason": reason} for node, reason in self.rejected.get(server_round, [])
        ]}

    @abstractmethod
    def summary(self) -> None:
        """Log the strategy's configuration."""
