"""The contract between the round loop (``server.runner``) and every fedprune strategy.

``FederatedStrategy`` declares every hook the runner calls, in the order it calls them, each with its role
in the round and, where a round can go without it, a default that does nothing (Flower's own ``Strategy``
declares its four round steps the same way)::

    once:        initialize_arrays -> bind_nodes -> bind_node_profiles -> load_state_dict (resume only)
    each round:  prepare_round -> configure_train -> aggregate_train -> configure_evaluate
                 -> aggregate_evaluate -> round_report -> run_report -> state_dict (checkpoint)

The runner calls nothing else, so a strategy is exactly what this class declares. Around the hooks the
base gives what every fedprune algorithm needs, once:

* seeded sampling over *partition ids*, after all expected nodes registered, so
  the same seed picks the same clients in every run and after a resume;
* reply screening (``screen_replies``): each reply goes through a check (``check_reply`` for training
  replies; an extra exchange passes its own) that returns what it decoded from the reply or raises
  ``ReplyRejected`` with the reason; error replies and rejected ones are dropped, counted and logged with
  the node id, and the valid ones come back with what was decoded from each (``Screened``), in
  partition order, so nothing decoded travels to ``aggregate_train`` through the instance; a round
  aggregates what arrived if at least ``min_train_nodes`` valid replies came back;
* reading a reply's metrics (``reply_metrics``) and the round's training metrics
  (``train_metrics``: example-weighted mean train loss, example count).

Byte accounting is not here: the server meters every message on the ``Grid`` it
hands to strategies (``server.metered_grid``), so a strategy cannot misreport.
"""

from __future__ import annotations

import random
from abc import abstractmethod
from collections.abc import Callable, Iterable, Sequence, Sized
from dataclasses import dataclass
from logging import WARNING
from typing import Any, Generic, TypeVar

import numpy as np
from fedprune.protos.contract import MetricKey
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


def reply_metrics(reply: Message) -> MetricRecord:
    """The metrics a client answered with: the first ``MetricRecord`` of ``reply`` (fedprune replies carry one).

    ``StopIteration`` if it has none; ``FederatedStrategy.check_reply`` refuses such replies first."""
    return next(iter(reply.content.metric_records.values()))


class NodesMissingError(TimeoutError):
    """Fewer nodes registered than the run needs within the wait limit."""


class ReplyRejected(Exception):  # noqa: N818 - a verdict on a reply, not an error of the server
    """A check's verdict that a reply is unusable; its message is the reason recorded with the node id.

    A check raises it for content it understood and refused; any other exception a check raises means the
    reply could not be read at all, and screening records it as ``unreadable reply`` and forgets the node."""


T = TypeVar("T")


@dataclass(frozen=True)
class Screened(Generic[T]):
    """A reply that passed screening, with what its check decoded from it (a strategy aggregates ``decoded``,
    never a copy kept on the instance)."""

    reply: Message
    decoded: T

    @property
    def node(self) -> int:
        """The node that sent the reply."""
        return self.reply.metadata.src_node_id


class FederatedStrategy(Strategy):
    """Every hook the round loop calls (see the module docstring for their order), plus the sampling, reply
    screening and checkpointable state shared by fedprune strategies.

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
                 weighted_by_key: str = MetricKey.NUM_EXAMPLES) -> None:
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

    # -- hooks of the run's setup (once, before round 1 or the resumed round) -------------------------------

    def initialize_arrays(self, arrays: ArrayRecord) -> ArrayRecord:
        """The global model round 1 starts from, given the seeded initial model (default: unchanged).

        Pruning strategies restrict it to their mask here. A resume replaces it with the checkpoint's."""
        return arrays

    def bind_nodes(self, node_partitions: dict[int, int]) -> None:
        """Tell the strategy which partition each registered node holds (the server discovers it); sampling
        and aggregation order go by partition id."""
        self.node_partitions = dict(node_partitions)

    def bind_node_profiles(self, profiles: dict[int, dict[str, Any]]) -> None:
        """Everything each node said about itself at discovery (its ``node`` record: partition id, declared
        budgets, ...). Default: nothing to read (FedTiny turns budgets into each node's density)."""

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """On resume: restore what ``state_dict`` saved; ``ValueError`` if it is not what ``state_dict`` writes
        (the runner then refuses the checkpoint)."""
        try:
            self.rejected = {int(k): [(int(node), str(reason)) for node, reason in v]
                             for k, v in state.get("rejected", {}).items()}
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"strategy state 'rejected' is malformed: {exc}") from None

    # -- hooks of one round, in the order the runner calls them --------------------------------------------

    def prepare_round(self, server_round: int, arrays: ArrayRecord, grid: Grid,
                      timeout: float | None = None) -> ArrayRecord | None:
        """Extra exchanges before the round trains (FedTiny: BN selection in round 1), on the metered ``grid``
        so their bytes count in this round. Returns the arrays to train from; ``None`` (default) keeps them."""
        return None

    @abstractmethod
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sample this round's nodes and build one training message for each (``config``: the run's training
        options); the runner sends them and collects the replies within the round timeout."""

    @abstractmethod
    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The new global arrays and training metrics from this round's replies; ``(None, None)`` when too few
        valid replies came back (the round then failed: the global model stays and the runner says why)."""

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Federated evaluation messages after training (HideNseek: personalized accuracy). Default: none; the
        server evaluates the global model centrally every round anyway."""
        return []

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Merge the evaluation replies into the round's ``federated_evaluation``; called only when
        ``configure_evaluate`` sent messages. Default: nothing."""
        return None

    def round_report(self, server_round: int) -> dict[str, Any]:
        """Strategy-specific figures for this round's entry in ``results.json``, after central evaluation.

        The base reports the replies it dropped (``rejected_replies``: the runner counts these nodes failed
        and gives their reasons when the round failed); subclasses add their own keys to it."""
        return {"rejected_replies": [
            {"node_id": node, "reason": reason} for node, reason in self.rejected.get(server_round, [])
        ]}

    def run_report(self) -> dict[str, Any] | None:
        """Run-level figures, rewritten into ``results.json`` as ``strategy_report`` after every round (FedTiny:
        selection, adjustments). Default: ``None``, no such key."""
        return None

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run after a restart (beyond the global arrays), saved in the
        checkpoint after every round."""
        return {"rejected": {str(k): v for k, v in self.rejected.items()}}

    @abstractmethod
    def summary(self) -> None:
        """Log the strategy's configuration."""

    # -- sampling ------------------------------------------------------------------------------------------

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

    # -- replies -------------------------------------------------------------------------------------------

    def check_metrics(self, reply: Message) -> MetricRecord:
        """The reply's metrics, if it carries a ``MetricRecord`` with a positive aggregation weight; else
        ``ReplyRejected``. Every check of a fedprune reply starts with it."""
        if not reply.content.metric_records:
            raise ReplyRejected("reply carries no MetricRecord")
        metrics = reply_metrics(reply)
        weight = metrics.get(self.weighted_by_key)
        if not isinstance(weight, int | float) or weight <= 0:
            raise ReplyRejected(f"metric '{self.weighted_by_key}' missing or not positive")
        return metrics

    def check_reply(self, server_round: int, reply: Message) -> Any:
        """What the strategy decoded from a training reply (``aggregate_train`` gets it back from
        ``screen_replies``); ``ReplyRejected`` with the reason if the reply is unusable.

        Default: the reply's metrics (``check_metrics``). Strategies whose replies carry tensors decode and
        check them against what they asked of that node."""
        return self.check_metrics(reply)

    def screen_replies(self, server_round: int, replies: Iterable[Message],
                       check: Callable[[int, Message], T] | None = None, *,
                       rejected: list[tuple[int, str]] | None = None) -> list[Screened[T]]:
        """The usable replies with what ``check`` decoded from each, sorted by partition id; log and record
        the rest with their reason.

        ``check``: this exchange's check (default ``check_reply``: training replies); ``rejected``: where
        dropped replies are recorded (default: this round's ``rejected_replies``, which the runner counts as
        failed nodes; an extra exchange keeps its own). An error reply or an unreadable one also forgets what
        the node holds (``forget_node``)."""
        check = self.check_reply if check is None else check
        valid, dropped = [], []
        for reply in replies:
            node, reason = reply.metadata.src_node_id, None
            if reply.has_error():
                self.forget_node(node)
                reason = f"error reply: {error_reason(reply)}"
            else:
                try:
                    decoded = check(server_round, reply)
                except ReplyRejected as exc:
                    reason = str(exc)
                except Exception as exc:  # a malformed reply must not stop the server
                    self.forget_node(node)  # whatever the node holds is unknown now: resend it in full
                    reason = f"unreadable reply: {type(exc).__name__}: {exc}"
            if reason is None:
                valid.append(Screened(reply, decoded))
            else:
                dropped.append((node, reason))
                log(WARNING, "round %d: dropped reply from node %d: %s", server_round, node, reason)
        (self.rejected.setdefault(server_round, []) if rejected is None else rejected).extend(dropped)
        valid.sort(key=lambda screened: self.partition_order(screened.reply))
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

    def enough_replies(self, server_round: int, valid: Sized) -> bool:
        """Whether ``valid`` meets ``min_train_nodes``; logs the decision when it does not."""
        if len(valid) >= self.min_train_nodes:
            return True
        log(WARNING, "round %d: %d valid replies < min_train_nodes=%d; global state unchanged",
            server_round, len(valid), self.min_train_nodes)
        return False

    def weight_of(self, reply: Message) -> float:
        """Aggregation weight of a screened reply."""
        return float(reply_metrics(reply)[self.weighted_by_key])

    @staticmethod
    def train_metrics(valid: Sequence[Message], weights: Sequence[float]) -> MetricRecord:
        """The round's training metrics from its valid replies: the example-weighted mean of their train loss
        (0 where a reply reports none), the number of examples trained on, and the most training state any of
        them reports holding (when one does)."""
        losses = [float(reply_metrics(m).get(MetricKey.TRAIN_LOSS, 0.0)) for m in valid]
        held = [int(reply_metrics(m)[MetricKey.TRAIN_STATE_BYTES]) for m in valid
                if isinstance(reply_metrics(m).get(MetricKey.TRAIN_STATE_BYTES), int | float)]
        return MetricRecord({MetricKey.TRAIN_LOSS: float(np.average(losses, weights=weights)),
                             MetricKey.NUM_EXAMPLES: int(sum(weights)),
                             **({MetricKey.TRAIN_STATE_BYTES: max(held)} if held else {})})
