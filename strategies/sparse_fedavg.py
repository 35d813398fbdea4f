"""Sparse FedAvg over masks: the part every masked strategy (static masks, FedTiny) is built on.

Only kept values travel, through the wire codec: a node gets the coded mask the first time it trains on it
(or again after it lost it, ``MaskDelivery``), and every message after that is encoded relative to the mask's
digest, so a node holding another mask cannot be misread. A reply is decoded against the mask that node
was sent and what was asked of it (names, dtypes, shapes, checked before anything is decoded); kept values
are averaged in fixed float64 order (``pruning.aggregation.weighted_mean``).

The part knows nothing of how a strategy picks its masks: the strategy passes, per node, the mask it trains.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from typing import TypeVar

import numpy as np
from fedprune.protos.codec import Expected, Manifest, TensorSpec, decode
from fedprune.protos.contract import KEPT_SUFFIX, ConfigKey, Kind, Task, join_kept
from fedprune.protos.flower_records import content_with_payload, payload_of
from fedprune.pruning.aggregation import weighted_mean
from fedprune.strategies.base import ReplyRejected
from fedprune.strategies.mask_delivery import MaskDelivery
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType

Mask = dict[str, np.ndarray]
T = TypeVar("T")


def expected_update(template: dict[str, np.ndarray], mask: Mask, pairs: Collection[str] = frozenset()) -> Expected:
    """What a training reply on ``mask`` must hold: the kept values of every masked layer and every other
    tensor of the model, as float32/int64 of exactly those shapes; reference pairs only for ``pairs``."""
    specs = {}
    for name, like in template.items():
        if name in mask:
            specs[name + KEPT_SUFFIX] = TensorSpec("float32", (int(mask[name].sum()),))
        else:
            specs[name] = TensorSpec.of(like)
    return Expected(specs, frozenset(), frozenset(pairs))


def restrict(arrays: ArrayRecord, mask: Mask) -> ArrayRecord:
    """``arrays`` with the weights ``mask`` prunes set to zero: a global model that lives on the mask."""
    state = {k: arrays[k].numpy() for k in arrays.keys()}
    return ArrayRecord({k: Array(v * mask[k] if k in mask else v) for k, v in state.items()})


class SparseFedAvg:
    """Per-node coded training messages, reply decoding against the node's mask, and the weighted mean.

    Parameters
    ----------
    architecture, model_seed : str, int
        Name the model in every payload's manifest (a node rebuilds nothing from them, it checks them).
    density : float
        The global mask's density, recorded in the manifest.
    """

    def __init__(self, *, architecture: str, model_seed: int, density: float) -> None:
        self.architecture, self.model_seed, self.density = architecture, model_seed, density
        self.delivery = MaskDelivery()
        self.template: dict[str, np.ndarray] = {}  # this round's global model: shapes, and what pruned weights hold

    def begin_round(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord) -> ConfigRecord:
        """Take this round's global model; the training config every node gets (masked SGD, the round)."""
        self.template = {k: arrays[k].numpy() for k in arrays.keys()}
        return ConfigRecord({**dict(config), ConfigKey.SERVER_ROUND: server_round, ConfigKey.TASK: Task.MASKED_SGD})

    def message(self, server_round: int, node: int, values: dict[str, np.ndarray], mask: Mask,
                config: ConfigRecord, digest: bytes | None = None) -> Message:
        """The training message for ``node``: ``values`` (the kept values of ``mask``) coded against the mask
        if it holds it (by ``digest``), else with the coded mask."""
        manifest = Manifest(self.architecture, self.model_seed, self.density, server_round, Kind.STATIC_MASK)
        blob = self.delivery.payload(node, values, mask, manifest, digest)
        return Message(content=content_with_payload(blob, config=config), dst_node_id=node,
                       message_type=MessageType.TRAIN)

    def decode_update(self, reply: Message, mask: Mask, *, digest: bytes | None = None,
                      pairs: Collection[str] = frozenset(),
                      check_pairs: Callable[[dict[str, np.ndarray], bytes], T] | None = None,
                      ) -> tuple[dict[str, np.ndarray], T | None]:
        """The model update of a training reply on ``mask`` and what ``check_pairs`` made of its reference
        pairs (``None`` without pairs); ``ReplyRejected`` if anything is off.

        Pairs are accepted only for ``pairs`` and only with a ``check_pairs`` (which raises ``ValueError`` on
        bad ones). A refused payload also forgets the node's mask: it gets it again next time, never a
        silent desync. An accepted one confirms the node holds ``mask``."""
        node = reply.metadata.src_node_id
        try:
            blob = payload_of(reply)
            decoded = decode(blob, reference=mask, expect=expected_update(self.template, mask, pairs))
            if decoded.pairs and check_pairs is None:
                raise ValueError(f"unexpected reference pairs for {sorted(decoded.pairs)[:3]}")
            checked = check_pairs(decoded.pairs, blob) if decoded.pairs and check_pairs else None
            join_kept(decoded.tensors, mask, self.template)
        except (ValueError, KeyError) as exc:  # WireFormatError is a ValueError
            self.delivery.forget(node)
            raise ReplyRejected(f"payload rejected: {exc}") from None
        self.delivery.confirm(node, mask, digest)
        return decoded.tensors, checked

    def mean(self, updates: Sequence[dict[str, np.ndarray]], weights: Sequence[float], mask: Mask) -> ArrayRecord:
        """The new global model: the weighted mean of the updates' kept values (and dense tensors), in the
        given order, in float64; weights ``mask`` prunes stay as in the template."""
        records = [ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in u.items()}) for u in updates]
        mean = weighted_mean(records, weights)
        return self.joined({k: mean[k].numpy() for k in mean.keys()}, mask)

    def joined(self, kept: dict[str, np.ndarray], mask: Mask) -> ArrayRecord:
        """Kept values of ``mask`` placed back into the template: the global model as arrays."""
        joined = join_kept(kept, mask, self.template)
        return ArrayRecord({k: Array(np.asarray(v, order="C")) for k, v in joined.items()})
