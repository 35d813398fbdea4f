"""What a node declares about itself at discovery: its memory and compute budget (FedTiny).

A deployed node sets ``memory-budget-mb`` (MB of parameter memory for training)
and ``flops-budget`` (training FLOPs per sample) in its node config. Flower's
simulation gives nodes only a partition id, so a simulated federation can assign
budget tiers round-robin by partition with the run config's ``budget-tiers``
(``"MB:FLOPS,..."``). A node's own node config always wins.
"""

from __future__ import annotations

import math

from fedprune.client.settings import ClientSettings
from fedprune.protos.contract import MetricKey
from fedprune.pruning.budgets import parse_budget_tiers


def declared_budget(node_config: dict, partition_id: int, settings: ClientSettings) -> dict[str, float]:
    """The budgets this node declares (finite ones only): node config first, else its simulated tier."""
    declared: dict[str, float] = {}
    tiers = parse_budget_tiers(settings.budget_tiers)
    if tiers:
        tier = tiers[partition_id % len(tiers)]
        declared.update({MetricKey.MEMORY_BUDGET_MB: tier.memory_mb, MetricKey.FLOPS_BUDGET: tier.flops_per_sample})
    for key in (MetricKey.MEMORY_BUDGET_MB, MetricKey.FLOPS_BUDGET):
        if key in node_config:
            declared[key] = float(node_config[key])
    return {k: float(v) for k, v in declared.items() if math.isfinite(float(v))}
