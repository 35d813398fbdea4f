"""FedTiny: adaptive BatchNorm selection of a coarse pruned model, then progressive pruning under budgets.

FedTiny is sparse FedAvg composed with three parts, each in its own module (DESIGN §1, §4):

* ``SparseFedAvg`` (``strategies.sparse_fedavg``) — every round, kept values travel, and the coded mask
  whenever the mask a node holds is not the one it trains; updates are averaged in fixed float64 order;
* ``BnSelection`` (``strategies.bn_selection``) — once, on the server and without data, θ0 from the run seed
  and C candidate masks (``pruning.candidates``); in ``prepare_round`` of round 1, two extra exchanges choose
  the candidate whose pooled BatchNorm statistics give the lowest validation loss;
* ``BudgetedSubmodels`` (``strategies.budgeted_submodels``) — a node whose declared memory/compute budget is
  below the global mask trains the nested submodel its budget allows, and kept values are averaged over the
  nodes that trained them;
* ``ProgressivePruning`` (``strategies.progressive_pruning``) — in every ``adjust-every``-th round up to
  ``adjust-until``, the training request asks the nodes whose budget also holds a gradient tap for top-K
  pruned-position gradient pairs, and after averaging the server grows/prunes the planned layer(s).

Hostile replies in any exchange (malformed or oversized payloads, wrong shapes, NaN statistics, more than
K pairs or pairs at active positions) are dropped with the node id and reason by the base's screening, each
exchange with its own check; the server never crashes on them.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from logging import INFO
from typing import Any

import numpy as np
from fedprune.protos.codec import reference_digest
from fedprune.protos.contract import split_kept
from fedprune.pruning.budgets import ModelCost
from fedprune.strategies.base import FederatedStrategy, checked_state_arrays
from fedprune.strategies.bn_selection import BnSelection, layer_densities
from fedprune.strategies.budgeted_submodels import BudgetedSubmodels
from fedprune.strategies.progressive_pruning import PairsUpload, ProgressivePruning, RoundPlan
from fedprune.strategies.sparse_fedavg import SparseFedAvg, restrict
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid


@dataclass(frozen=True)
class TrainingUpdate:
    """What FedTiny decodes from a training reply: the model update on the node's submodel, and its checked
    top-K pairs (``None`` when it carried none: a valid update without pairs only gives no growth signal)."""

    tensors: dict[str, np.ndarray]
    pairs: PairsUpload | None


class FedTiny(FederatedStrategy):
    """FedTiny (see module docstring). Options mirror the run config (``candidates``, ``adjust-*``, budgets)."""

    def __init__(self, *, theta0: dict[str, np.ndarray], candidates: list[dict[str, np.ndarray]], cost: ModelCost,
                 architecture: str, model_seed: int, score: str, clients_per_round: int, min_train_nodes: int = 1,
                 seed: int = 0, adjust_every: int = 0, adjust_until: int = 24, adjust_alpha: float = 0.05,
                 adjust_layers: str = "output-first", gradient_tap: str = "auto",
                 eval_batch_size: int = 1000, batch_size: int = 32, bn_selection_z: float = 2.0) -> None:
        self.progressive = ProgressivePruning(list(candidates[0]), every=adjust_every, until=adjust_until,
                                              alpha=adjust_alpha, layer_order=adjust_layers,
                                              gradient_tap=gradient_tap)
        super().__init__(clients_per_round=clients_per_round, min_train_nodes=min_train_nodes, seed=seed)
        self.score = score
        self._install_mask(candidates[0])
        self.density = sum(int(m.sum()) for m in self.mask.values()) / sum(m.size for m in self.mask.values())
        self.sparse = SparseFedAvg(architecture=architecture, model_seed=model_seed, density=self.density)
        self.bn_selection = BnSelection(theta0=theta0, candidates=candidates, architecture=architecture,
                                        model_seed=model_seed, density=self.density, eval_batch_size=eval_batch_size,
                                        evidence_z=bn_selection_z)
        self.submodels = BudgetedSubmodels(cost, batch_size)
        self.selection: dict[str, Any] | None = None
        self._plan = RoundPlan({}, {})  # what this round asks for pairs, and of whom
        self._costs: dict[int, list[dict[str, Any]]] = {}  # round -> client_costs rows

    def summary(self) -> None:
        """Log candidates, adjustment schedule and budgets."""
        pruning = self.progressive
        log(INFO, "FedTiny: %d candidates from %s at density %.4f; adjust every %d rounds until %d (alpha %.2f, %s); "
            "%d nodes with budgets", len(self.bn_selection.candidates), self.score, self.density, pruning.every,
            pruning.until, pruning.alpha, pruning.layer_order, self.submodels.budgeted_nodes())

    def _install_mask(self, mask: dict[str, np.ndarray]) -> None:
        self.mask = {k: np.asarray(v, dtype=bool) for k, v in mask.items()}
        self.mask_digest = reference_digest(self.mask)

    # -- setup hooks ----------------------------------------------------------------------------------------

    def initialize_arrays(self, arrays: ArrayRecord) -> ArrayRecord:
        """θ0 on candidate 0 (the score's own mask); BN selection may replace it in round 1."""
        return restrict(arrays, self.mask)

    def bind_node_profiles(self, profiles: dict[int, dict[str, Any]]) -> None:
        """Read each node's declared budgets (from its QUERY reply); refuse budgets no density satisfies."""
        self.submodels.bind(profiles, self.mask, self.bn_selection.theta0)

    def prepare_round(self, server_round: int, arrays: ArrayRecord, grid: Grid,
                      timeout: float | None = None) -> ArrayRecord | None:
        """The extra exchanges before round 1 trains: BN selection. Returns the arrays to train from."""
        if server_round == 1 and self.selection is None and len(self.bn_selection.candidates) > 1:
            arrays, self.selection = self.bn_selection.select(self, arrays, grid, timeout)
            if "fallback" not in self.selection:
                self._install_mask(self.bn_selection.candidates[self.selection["selected"]])
        return arrays

    # -- one round: sparse FedAvg on budgeted submodels, pairs asked for in an adjusting round ----------------

    def adjustment_plan(self, server_round: int) -> dict[str, int]:
        """Layers adjusted after round ``server_round`` and their K_t (empty when the round adjusts nothing)."""
        return self.progressive.plan(server_round, self.mask).k

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Sparse FedAvg messages, each node on the submodel its budget allows; in an adjusting round, every
        node whose budget also holds a gradient tap is asked for top-K pairs."""
        self._plan = self.progressive.plan(server_round, self.mask)
        config = self.sparse.begin_round(server_round, arrays, config)
        self.submodels.begin_round(self.mask, self.sparse.template)
        kept = split_kept(self.sparse.template, self.mask)
        nodes = self.sample_nodes(server_round, grid)
        messages = []
        for node in nodes:
            mask = self.submodels.mask_for(node)
            values = kept if mask is self.mask else split_kept(self.sparse.template, mask)
            messages.append(self.sparse.message(server_round, node, values, mask, self._node_config(node, config),
                                                self.mask_digest if mask is self.mask else None))
        self._costs[server_round] = [
            self.submodels.cost_row(node, self.node_partitions.get(node), self._plan.asked.get(node),
                                    self._plan.tap_layers(node), self._plan.tap_capacities(node)) for node in nodes]
        return messages

    def _node_config(self, node: int, config: ConfigRecord) -> ConfigRecord:
        """``config``, asking for pairs in an adjusting round with the first tap the node's budget holds (none:
        it trains without reporting pairs)."""
        if not self._plan.k:
            return config
        for tap in self.progressive.taps():
            capacities = self._plan.capacities if tap == "buffered" else None
            if self.submodels.holds_tap(node, list(self._plan.k), capacities):
                return self._plan.request(node, tap, config)
        return config

    def check_reply(self, server_round: int, reply: Message) -> TrainingUpdate:
        """The update on the node's submodel (decoded against it) and its top-K pairs if it was asked for them
        (checked against this round's plan)."""
        self.check_metrics(reply)
        node = reply.metadata.src_node_id
        mask = self.submodels.mask_for(node)
        tensors, pairs = self.sparse.decode_update(
            reply, mask, digest=self.mask_digest if mask is self.mask else None, pairs=self._plan.tap_layers(node),
            check_pairs=lambda grads, blob: self._plan.check_pairs(node, mask, self.mask, grads, blob))
        return TrainingUpdate(tensors, pairs)

    def forget_node(self, node_id: int) -> None:
        """A node that failed may have lost its mask: send it again next time."""
        self.sparse.delivery.forget(node_id)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Sparse FedAvg of the round's updates (over partial coverage when budgets gave nodes submodels); in a
        round with an adjustment plan, then the grow/prune step from the top-K pairs that rode on the valid
        updates (the new mask trains from the next round)."""
        valid = self.screen_replies(server_round, replies)
        if not self.enough_replies(server_round, valid):
            return None, None
        weights = [self.weight_of(s.reply) for s in valid]
        if self.submodels.everyone_global():
            arrays = self.sparse.mean([s.decoded.tensors for s in valid], weights, self.mask)
        else:
            kept = self.submodels.mean([(s.node, s.decoded.tensors) for s in valid], weights)
            arrays = self.sparse.joined(kept, self.mask)
        metrics = self.train_metrics([s.reply for s in valid], weights)
        if not self._plan.k:
            return arrays, metrics
        reporting = [s for s in valid if s.decoded.pairs is not None]
        if not reporting:
            self.progressive.skip(server_round, self._plan)
            return arrays, metrics
        arrays, mask = self.progressive.step(server_round, self._plan, arrays, self.mask,
                                             [(s.reply, s.decoded.pairs) for s in reporting],
                                             [self.weight_of(s.reply) for s in reporting])
        self._install_mask(mask)
        return arrays, metrics

    # -- state and reports ----------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The current mask, the selection and every adjustment so far (a resumed run continues from them)."""
        return {**super().state_dict(), "mask": self.mask, "selection": self.selection,
                "adjustments": json.loads(json.dumps(self.progressive.adjustments))}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the mask and history; every node gets the mask again after a restart."""
        super().load_state_dict(state)
        self._install_mask(checked_state_arrays("mask", state.get("mask"), self.mask, np.bool_))
        self.selection, self.progressive.adjustments = state.get("selection"), list(state.get("adjustments", []))
        self.sparse.delivery.forget_all()

    def round_report(self, server_round: int) -> dict[str, Any]:
        """Adds density, the BN selection (round 1), this round's adjustment, and each client's estimated cost."""
        dropped = self.bn_selection.rejected if server_round == 1 else []
        report = {**super().round_report(server_round), "density": self.density, "score": self.score,
                  "strategy": "fedtiny", "layer_densities": layer_densities(self.mask),
                  "client_costs": self._costs.pop(server_round, []),
                  "exchange_rejected_replies": [{"node_id": node, "reason": reason} for node, reason in dropped]}
        if server_round == 1 and self.selection is not None:
            report["bn_selection"] = self.selection
        adjustment = self.progressive.adjustment_after(server_round)
        if adjustment is not None:
            report["adjustment"] = adjustment
        return report

    def run_report(self) -> dict[str, Any]:
        """Run-level FedTiny figures for ``results.json``: selection, candidates' losses, adjustment counts."""
        selection = self.selection or {}
        return {"selected_candidate": selection.get("selected"), "candidate_losses": selection.get("losses"),
                "candidate_accuracies": selection.get("accuracies"),
                "selection_beyond_noise": selection.get("beyond_noise"),
                "adjustments": [{"after_round": a["after_round"], "skipped": a.get("skipped"),
                                 "layers": a["layers"]} for a in self.progressive.adjustments],
                "budgeted_nodes": self.submodels.budgeted_nodes()}
