"""What a trial will cost a client, known before it runs: training state, FLOPs per sample, model bytes.

The figures come from ``kernels.training_cost`` — the same arithmetic FedTiny's budgets use, priced on the
kernels the dispatcher will pick for the run's masks at its batch size — so a constraint on memory or FLOPs
is decided before a SuperLink starts. Per strategy, the client's training path:

* fedavg: the dense model with SGD (momentum state when the run's momentum is non-zero);
* static-*: the run's data-free mask (θ0 from the run seed) on the sparse kernels;
* hidenseek: the sign-supermask path (scores and their optimizer state at kept positions);
* fedtiny: the costliest of its candidate masks, plus, in an adjusting round, the gradient tap on the layer
  whose tap costs most (dense: one float32 accumulator; buffered: its chunk and running sums).

``min_model_bytes``: bytes each way a client-round cannot go below (float32 kept values and dense values) —
known for dense and static-mask models; 0 where coding decides (HideNseek).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedprune.data.sources import DATASET_FACTS
from fedprune.kernels.training_cost import (
    TrainingCost,
    dense_training_cost,
    masked_training_cost,
    sign_training_cost,
)
from fedprune.models import build_model
from fedprune.pruning import progressive
from fedprune.pruning.budgets import ModelCost
from fedprune.pruning.candidates import candidate_masks
from fedprune.pruning.schedules import data_free_mask
from fedprune.server.run_config import RunSettings
from fedprune.tuning.search_space import SearchSpace, settings_for

STATIC_SCORES = {"static-synflow": "synflow", "static-magnitude": "magnitude", "static-random": "random"}


@dataclass(frozen=True)
class PreRunCosts:
    """A client's costs for one run of a trial (the largest any client of the run holds)."""

    memory_bytes: int
    flops_per_sample: int
    min_model_bytes: int
    backends: dict[str, str] = field(default_factory=dict)

    def figures(self) -> dict[str, float]:
        """The figures constraints read before a run: memory and FLOPs (bytes are lower bounds only)."""
        return {"memory_bytes": float(self.memory_bytes), "flops_per_sample": float(self.flops_per_sample)}


def pre_run_costs(settings: RunSettings) -> PreRunCosts:
    """The client costs of ``settings``' run (builds θ0 and the masks as the server will)."""
    facts = DATASET_FACTS[settings.dataset]  # θ0 as the server builds it, without loading the data
    shape = tuple(facts.input_shape)
    model = build_model(settings.model, shape, facts.num_classes, seed=settings.seed)
    momentum = settings.momentum > 0
    profile = ModelCost.of(model, shape)
    dense_values = profile.geometry.dense_values
    if settings.strategy in ("fedavg", "flwr-fedavg"):
        cost = dense_training_cost(model, shape, momentum=momentum)
        return _costs(cost, 4 * sum(p.numel() for p in model.parameters()))
    if settings.strategy in STATIC_SCORES:
        mask = data_free_mask(model, STATIC_SCORES[settings.strategy], settings.density, settings.seed)
        cost = masked_training_cost(model, shape, mask, batch=settings.batch_size, momentum=momentum)
        return _costs(cost, 4 * (_kept(mask) + dense_values))
    if settings.strategy == "hidenseek":
        mask = data_free_mask(model, settings.score, settings.density, settings.seed)
        return _costs(sign_training_cost(model, shape, mask, batch=settings.batch_size,
                                         optimizer=settings.score_optimizer), 0)
    if settings.strategy == "fedtiny":
        return _fedtiny_costs(settings, model, shape, momentum, profile)
    raise ValueError(f"no cost model for strategy '{settings.strategy}'")


def _fedtiny_costs(settings: RunSettings, model, shape, momentum: bool, profile: ModelCost) -> PreRunCosts:
    masks = candidate_masks(model, settings.score, settings.density, settings.candidates, settings.seed,
                            settings.candidate_spread, settings.candidate_ranking)
    costs = [masked_training_cost(model, shape, m, batch=settings.batch_size, momentum=momentum) for m in masks]
    worst = max(costs, key=lambda c: (c.state_bytes, c.flops_per_sample))
    tap_memory = tap_flops = 0
    if settings.adjust_every > 0 and settings.adjust_until > 0:
        for layer, size in profile.sizes.items():
            capacities = None
            if settings.gradient_tap == "buffered":
                k = progressive.cosine_k(settings.adjust_every, settings.adjust_until, settings.adjust_alpha,
                                         int(masks[0][layer].sum()))
                capacities = {layer: progressive.tap_buffer_capacity(max(1, k), size)}
            tap_memory = max(tap_memory, profile.tap_memory_bytes([layer], capacities))
            tap_flops = max(tap_flops, profile.tap_flops_per_sample([layer]))
    cost = TrainingCost(worst.state_bytes + tap_memory, worst.flops_per_sample + tap_flops, worst.backends)
    return _costs(cost, 4 * (_kept(masks[0]) + profile.geometry.dense_values))


def _kept(mask: dict) -> int:
    return int(sum(int(m.sum()) for m in mask.values()))


def _costs(cost: TrainingCost, min_model_bytes: int) -> PreRunCosts:
    return PreRunCosts(int(cost.state_bytes), int(cost.flops_per_sample), int(min_model_bytes),
                       dict(cost.backends))


def cheapest_per_strategy(space: SearchSpace, rounds: int | None = None) -> dict[str, PreRunCosts]:
    """Each strategy of ``space`` at its smallest density (other parameters at their anchor defaults): the
    least memory and FLOPs the space can offer, to refuse a constraint no trial could meet."""
    out = {}
    for strategy in space.parameters[0].choices:
        chosen: dict = {}
        for parameter in space.parameters:
            if not parameter.applies(chosen):
                continue
            if parameter.name == "strategy":
                chosen["strategy"] = strategy
            elif parameter.name == "density":
                chosen["density"] = min(parameter.grid) if parameter.low is None else parameter.low
            else:
                chosen[parameter.name] = parameter.default
        options = space.trial_options(chosen) | ({"rounds": rounds} if rounds else {})
        out[strategy] = pre_run_costs(settings_for(options, seed=0, out=""))
    return out
