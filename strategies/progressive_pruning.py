"""FedTiny's progressive pruning as a part: plan a round's adjustment, check the pairs that ride on training
replies, and step the mask.

In every ``adjust-every``-th round up to ``adjust-until`` (``pruning.progressive``: the schedule, which
layers, K_t), riding on training with no extra exchange: the training request names the layer(s) to adjust
and K_t (``RoundPlan.request``); each trainer taps the gradient a dense layer would have had at its pruned
positions during its local steps and adds only the top-K magnitudes, coded as (index, value) pairs, to its
update (``gradient_tap``: ``dense`` — an exact accumulator the size of the adjusted layer; ``buffered`` —
running sums at 8·K positions, formed a few rows at a time; ``auto`` — dense where the budget holds it, else
buffered, else none). The server checks each reply's pairs (``RoundPlan.check_pairs``: asked-for layers,
at most K, magnitudes >= 0, only at positions the node's mask prunes), and after averaging the updates
grows the K best by aggregate magnitude (new weights start at 0) and prunes the K smallest active weights
of that layer (``ProgressivePruning.step``); the next round trains the new mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from logging import INFO
from typing import Any

import numpy as np
from fedprune.protos.codec import pairs_cost
from fedprune.protos.contract import ConfigKey
from fedprune.protos.wire_size import content_bytes
from fedprune.pruning import progressive
from flwr.app import Array, ArrayRecord, ConfigRecord, Message
from flwr.common import log

Mask = dict[str, np.ndarray]
TAP_PREFERENCE = {"auto": ("dense", "buffered"), "dense": ("dense",), "buffered": ("buffered",)}


@dataclass(frozen=True)
class PairsUpload:
    """One reply's checked top-K pairs and what they cost on the wire."""

    pairs_of: dict[str, tuple[np.ndarray, np.ndarray]]  # layer -> (flat indices, magnitudes) the step may grow
    pairs: int  # how many of them
    pairs_bytes: int  # bytes the pairs add to the reply's payload
    coded_pairs_bytes: int  # bytes of their coded indices and values alone
    payload_bytes: int  # the whole payload

    def row(self) -> dict[str, int]:
        """Its figures for the adjustment's ``uploads`` report."""
        return {"payload_bytes": self.payload_bytes, "pairs_bytes": self.pairs_bytes,
                "coded_pairs_bytes": self.coded_pairs_bytes, "pairs": self.pairs}


@dataclass
class RoundPlan:
    """What one round asks for: K per adjusted layer (empty: it adjusts nothing), the buffered tap's capacity
    per layer, and which nodes were asked for pairs with which tap."""

    k: dict[str, int]
    capacities: dict[str, int]
    asked: dict[int, str] = field(default_factory=dict)  # node -> "dense" | "buffered"

    def request(self, node: int, tap: str, config: ConfigRecord) -> ConfigRecord:
        """``config`` asking ``node`` for top-K pairs with ``tap`` (and remember that it was asked)."""
        self.asked[node] = tap
        extra: dict[str, Any] = {ConfigKey.ADJUST_LAYERS: list(self.k),
                                 ConfigKey.ADJUST_K: [int(k) for k in self.k.values()]}
        if tap == "buffered":
            extra[ConfigKey.ADJUST_BUFFER] = [self.capacities[name] for name in self.k]
        return ConfigRecord({**dict(config), **extra})

    def tap_layers(self, node: int) -> list[str]:
        """Layers ``node`` taps gradients of this round (none if it was not asked)."""
        return list(self.k) if node in self.asked else []

    def tap_capacities(self, node: int) -> dict[str, int] | None:
        """The buffered tap's capacities if ``node`` runs it; ``None`` for the dense tap or none."""
        return self.capacities if self.asked.get(node) == "buffered" else None

    def check_pairs(self, node: int, node_mask: Mask, mask: Mask, grads: dict[str, np.ndarray],
                    blob: bytes) -> PairsUpload:
        """One reply's pairs, if they are for requested layers only, at most K each, magnitudes >= 0, and only at
        positions the node's own mask prunes; else ``ValueError``. Positions the global ``mask`` keeps (a
        budgeted node's submodel prunes more) carry no growth signal and are dropped."""
        expected = set(self.tap_layers(node))
        if set(grads) - expected:
            raise ValueError(f"top-K pairs for {sorted(set(grads) - expected)[:3]}, requested {sorted(expected)}")
        pairs_of, total = {}, 0
        for name, k in self.k.items():
            value = grads.get(name, np.zeros(mask[name].shape, np.float32))
            flat = value.reshape(-1)
            indices = np.flatnonzero(flat)
            if indices.size > k:
                raise ValueError(f"pairs for '{name}': {indices.size} of them, more than K = {k}")
            if (flat[indices] < 0).any():
                raise ValueError(f"pairs for '{name}' carry negative magnitudes")
            if node_mask[name].reshape(-1)[indices].any():
                raise ValueError(f"pairs for '{name}' report gradients at active positions")
            indices = indices[~mask[name].reshape(-1)[indices]]
            pairs_of[name] = (indices, flat[indices])
            total += int(indices.size)
        added, coded = pairs_cost(blob)
        return PairsUpload(pairs_of, total, added, coded, len(blob))


class ProgressivePruning:
    """The schedule, the tap choice and the grow/prune step, with every adjustment so far (``adjustments``).

    Parameters
    ----------
    layer_names : list[str]
        Prunable layers, input to output (``output-first`` adjusts them in reverse, one per step).
    every, until, alpha : int, int, float
        Adjust after every ``every``-th round up to ``until``; K_t = α/2·(1 + cos(π t / until)) × active.
    layer_order : str
        ``output-first`` or ``all`` (``pruning.progressive.LAYER_ORDERS``).
    gradient_tap : str
        ``auto``, ``dense`` or ``buffered`` (``pruning.progressive.GRADIENT_TAPS``).
    """

    def __init__(self, layer_names: list[str], *, every: int = 3, until: int = 24, alpha: float = 0.2,
                 layer_order: str = "output-first", gradient_tap: str = "auto") -> None:
        if layer_order not in progressive.LAYER_ORDERS:
            raise ValueError(f"fedtiny adjust-layers '{layer_order}' is not one of {progressive.LAYER_ORDERS}")
        if gradient_tap not in progressive.GRADIENT_TAPS:
            raise ValueError(f"fedtiny gradient-tap '{gradient_tap}' is not one of {progressive.GRADIENT_TAPS}")
        self.layer_names = list(layer_names)
        self.every, self.until, self.alpha = every, until, alpha
        self.layer_order, self.gradient_tap = layer_order, gradient_tap
        self.adjustments: list[dict[str, Any]] = []

    def plan(self, server_round: int, mask: Mask) -> RoundPlan:
        """The layers adjusted after ``server_round`` and their K_t (from ``mask``'s active counts; layers whose
        K_t is 0 are left out), with nobody asked yet."""
        schedule = progressive.adjustment_rounds(self.every, self.until)
        if server_round not in schedule:
            return RoundPlan({}, {})
        layers = progressive.layers_to_adjust(self.layer_names, schedule.index(server_round), self.layer_order)
        ks = {name: progressive.cosine_k(server_round, self.until, self.alpha, int(mask[name].sum()))
              for name in layers}
        k = {name: value for name, value in ks.items() if value > 0}
        return RoundPlan(k, {name: progressive.tap_buffer_capacity(value, mask[name].size)
                             for name, value in k.items()})

    def taps(self) -> tuple[str, ...]:
        """The taps a node may be given, most preferred first (the first its budget holds is its tap)."""
        return TAP_PREFERENCE[self.gradient_tap]

    def step(self, server_round: int, plan: RoundPlan, arrays: ArrayRecord, mask: Mask,
             reporting: Sequence[tuple[Message, PairsUpload]], weights: Sequence[float]) -> tuple[ArrayRecord, Mask]:
        """Grow/prune each planned layer of the averaged ``arrays`` from the pairs of ``reporting`` (valid
        replies with pairs, in partition order, weighted by ``weights``); the new arrays and mask."""
        uploads = [{"node_id": reply.metadata.src_node_id, "content_bytes": content_bytes(reply), **upload.row()}
                   for reply, upload in reporting]
        entry: dict[str, Any] = {"after_round": server_round, "layers": {}, "uploads": uploads,
                                 "nodes_asked": len(plan.asked)}
        state = {k: arrays[k].numpy() for k in arrays.keys()}
        new_mask = dict(mask)
        for name, k in plan.k.items():
            size = mask[name].size
            score = progressive.aggregate_magnitudes([upload.pairs_of[name] for _, upload in reporting],
                                                     list(weights), size)
            weights_new, mask_new, moved = progressive.grow_and_prune(state[name], mask[name], score, k)
            state[name], new_mask[name] = weights_new, mask_new
            entry["layers"][name] = {"k": k, "grown": int(moved.grown.size), "pruned": int(moved.pruned.size),
                                     "active": int(mask_new.sum()), "size": int(size),
                                     "candidates_reported": int((score > 0).sum())}
        self.adjustments.append(entry)
        log(INFO, "FedTiny adjustment after round %d: %s", server_round,
            {n: (v["grown"], v["pruned"]) for n, v in entry["layers"].items()})
        return ArrayRecord({k: Array(np.asarray(state[k], order="C")) for k in arrays.keys()}), new_mask

    def skip(self, server_round: int, plan: RoundPlan) -> None:
        """Record a planned adjustment that could not run: no valid reply carried pairs."""
        self.adjustments.append({"after_round": server_round, "layers": {}, "uploads": [],
                                 "nodes_asked": len(plan.asked), "skipped": "no valid top-K pairs"})

    def adjustment_after(self, server_round: int) -> dict[str, Any] | None:
        """The adjustment made after ``server_round``, if any."""
        return next((a for a in self.adjustments if a["after_round"] == server_round), None)
