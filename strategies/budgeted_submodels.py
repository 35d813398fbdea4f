"""FedTiny's budgeted submodels as a part: each node's declared budget → the nested submodel it trains,
what that is estimated to cost it on the kernels the dispatcher picks for it, and the average when nodes
trained different submodels.

A node declares a memory (MB) and compute (FLOPs per sample) budget at discovery. A node whose budget is
below the global mask trains the nested submodel it allows: every layer keeps the share r of its kept
weights with the largest global magnitude, r the largest both budgets allow (``pruning.budgets``). Kept
values are then averaged over the nodes whose submodel holds them (``pruning.budgets.nested_mean``); a
weight no node trained keeps its global value. A budget no density satisfies is refused at setup.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from fedprune.protos.contract import KEPT_SUFFIX, MetricKey, split_kept
from fedprune.pruning import budgets
from fedprune.pruning.budgets import Budget, BudgetError, ModelCost

Mask = dict[str, np.ndarray]


class BudgetedSubmodels:
    """The nodes' budgets and, for the round under way, the mask each node trains (``begin_round``)."""

    def __init__(self, cost: ModelCost, batch: int) -> None:
        self.cost = cost
        self.batch = batch  # the batch size nodes train at (the dispatcher's choice, hence the cost, depends on it)
        self.budgets: dict[int, Budget] = {}
        self._mask: Mask = {}  # this round's global mask
        self._template: dict[str, np.ndarray] = {}  # this round's global model
        self._masks: dict[int, Mask] = {}  # node -> the mask it trains this round

    def bind(self, profiles: dict[int, dict[str, Any]], mask: Mask, template: dict[str, np.ndarray]) -> None:
        """Read each node's declared budgets (from its discovery reply); ``BudgetError`` naming the node and
        its partition if even the smallest submodel of ``mask`` (one weight per layer, the largest |w| in
        ``template``) exceeds it."""
        declared = {}
        smallest = budgets.nested_submask(mask, template, 0.0)
        for node, profile in profiles.items():
            budget = Budget(float(profile.get(MetricKey.MEMORY_BUDGET_MB, float("inf"))),
                            float(profile.get(MetricKey.FLOPS_BUDGET, float("inf"))))
            if not budget.unlimited:
                try:
                    budgets.check_smallest(self.cost, smallest, budget, batch=self.batch)
                except BudgetError as exc:
                    partition = profile.get(MetricKey.PARTITION_ID)
                    raise BudgetError(f"node {node} (partition {partition}): {exc}") from None
            declared[node] = budget
        self.budgets = declared

    def budgeted_nodes(self) -> int:
        """How many nodes declared a budget."""
        return sum(not b.unlimited for b in self.budgets.values())

    def begin_round(self, mask: Mask, template: dict[str, np.ndarray]) -> None:
        """Start a round on the global ``mask`` and model ``template`` (forgets last round's submodels)."""
        self._mask, self._template, self._masks = mask, template, {}

    def mask_for(self, node: int) -> Mask:
        """The global mask itself, or the nested submodel the node's budget allows (largest global magnitudes;
        ties by position)."""
        if node not in self._masks:
            ratio = self._ratio(node)
            self._masks[node] = (self._mask if ratio >= 1.0
                                 else budgets.nested_submask(self._mask, self._template, ratio))
        return self._masks[node]

    def _ratio(self, node: int) -> float:
        budget = self.budgets.get(node)
        if budget is None or budget.unlimited:
            return 1.0
        return budgets.ratio_for_budget(self.cost, self._mask, self._template, budget, batch=self.batch)

    def everyone_global(self) -> bool:
        """Whether every node of this round trains the global mask (then plain sparse FedAvg averages)."""
        return all(m is self._mask for m in self._masks.values())

    def kept_counts(self, node: int) -> dict[str, int]:
        """Per layer, how many weights the node's submodel keeps."""
        return {n: int(m.sum()) for n, m in self.mask_for(node).items()}

    def holds_tap(self, node: int, layers: list[str], capacities: dict[str, int] | None) -> bool:
        """Whether the node's budget holds its submodel plus the gradient tap on ``layers`` (dense, or buffered
        with ``capacities``)."""
        budget = self.budgets.get(node, Budget())
        return budget.unlimited or budgets.fits_budget(self.cost, self.mask_for(node), budget, batch=self.batch,
                                                       tap_layers=layers, tap_capacities=capacities)

    def cost_row(self, node: int, partition: int | None, tap: str | None, tap_layers: list[str],
                 capacities: dict[str, int] | None) -> dict[str, Any]:
        """The node's ``client_costs`` entry: its density, the estimated training state (bytes), FLOPs and
        backends of its submodel on the dispatcher's kernels, those of its gradient tap (``tap`` on
        ``tap_layers``), and its budget."""
        kept = self.kept_counts(node)
        budget = self.budgets.get(node, Budget())
        training = self.cost.training_cost(self.mask_for(node), self.batch)
        return {"node_id": node, "partition_id": partition,
                "density": sum(kept.values()) / sum(m.size for m in self._mask.values()),
                "est_param_memory_bytes": training.state_bytes,
                "est_flops_per_sample": training.flops_per_sample, "backends": training.backends,
                "reports_pairs": bool(tap_layers), "gradient_tap": tap,
                "est_tap_memory_bytes": self.cost.tap_memory_bytes(tap_layers, capacities),
                "est_tap_flops_per_sample": self.cost.tap_flops_per_sample(tap_layers),
                "memory_budget_mb": None if np.isinf(budget.memory_mb) else budget.memory_mb,
                "flops_budget": None if np.isinf(budget.flops_per_sample) else budget.flops_per_sample}

    def mean(self, updates: Sequence[tuple[int, dict[str, np.ndarray]]],
             weights: Sequence[float]) -> dict[str, np.ndarray]:
        """The global mask's kept values (and dense tensors) from (node, update) pairs on their submodels, in the
        given order: each kept value averaged over the nodes whose submodel holds it."""
        out = {}
        for name, current in split_kept(self._template, self._mask).items():
            if name.endswith(KEPT_SUFFIX):
                layer = self._mask[name[: -len(KEPT_SUFFIX)]].reshape(-1)
                covers = [self.mask_for(node)[name[: -len(KEPT_SUFFIX)]].reshape(-1)[layer] for node, _ in updates]
                values = [tensors[name] for _, tensors in updates]
            else:  # every node trains the dense tensors
                covers = [None] * len(updates)
                values = [tensors[name].astype(np.float64) for _, tensors in updates]
            out[name] = budgets.nested_mean(current, values, covers, weights)
        return out
