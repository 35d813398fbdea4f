"""Strategy names a run config may choose, and how each is built from the run settings.

The names are ``protos.contract.STRATEGY_NAMES`` (what ``RunSettings`` validates against without importing
strategies); ``STRATEGIES`` maps each to its builder here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from fedprune.data import run_dataset
from fedprune.models import build_model
from fedprune.models.device import resolve_device
from fedprune.pruning.budgets import BudgetError, ModelCost, check_smallest, one_weight_mask, parse_budget_tiers
from fedprune.pruning.candidates import candidate_masks
from fedprune.pruning.schedules import data_free_mask
from fedprune.server.run_config import ConfigError, RunSettings
from fedprune.strategies.base import FederatedStrategy
from fedprune.strategies.fedavg import DenseFedAvg, FlowerStrategy
from fedprune.strategies.fedtiny import FedTiny
from fedprune.strategies.hidenseek import HideNseek
from fedprune.strategies.static_mask import StaticMaskFedAvg
from flwr.serverapp.strategy import FedAvg
from torch import nn


def seeded_model(settings: RunSettings) -> tuple[nn.Module, tuple[int, ...]]:
    """The run's initial model (θ0 from the run seed, as the server builds it) and the dataset's input shape."""
    splits = run_dataset(settings)
    return build_model(settings.model, splits.input_shape, splits.num_classes, seed=settings.seed), splits.input_shape


def _theta0(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def _dense_fedavg(settings: RunSettings) -> FederatedStrategy:
    return DenseFedAvg(clients_per_round=settings.clients_per_round,
                       min_train_nodes=settings.min_train_nodes, seed=settings.seed)


def _flower_fedavg(settings: RunSettings) -> FederatedStrategy:
    """Flower's own FedAvg, unchanged behind the hooks: the reference for overhead and byte comparisons."""
    return FlowerStrategy(FedAvg(
        fraction_train=settings.clients_per_round / settings.num_clients,
        fraction_evaluate=0.0,
        min_train_nodes=settings.clients_per_round,
        min_evaluate_nodes=0,
        min_available_nodes=settings.num_clients,
    ), clients_per_round=settings.clients_per_round)


def _static_mask(score: str) -> Callable[[RunSettings], FederatedStrategy]:
    def build(settings: RunSettings) -> FederatedStrategy:
        model, _ = seeded_model(settings)
        mask = data_free_mask(model, score, settings.density, settings.seed, granularity=settings.mask_granularity,
                              device=resolve_device(settings.device))
        return StaticMaskFedAvg(mask=mask, architecture=settings.model, model_seed=settings.seed, score=score,
                                clients_per_round=settings.clients_per_round,
                                min_train_nodes=settings.min_train_nodes, seed=settings.seed)
    return build


def _hidenseek(settings: RunSettings) -> FederatedStrategy:
    model, _ = seeded_model(settings)
    theta0 = _theta0(model)
    mask = data_free_mask(model, settings.score, settings.density, settings.seed,
                          granularity=settings.mask_granularity, device=resolve_device(settings.device))
    return HideNseek(theta0=theta0, mask=mask, architecture=settings.model, model_seed=settings.seed,
                     score=settings.score, density=settings.density, clients_per_round=settings.clients_per_round,
                     min_train_nodes=settings.min_train_nodes, seed=settings.seed, aggregation=settings.aggregation,
                     dense_params=settings.dense_params, mask_transfer=settings.mask_transfer,
                     personal_eval_every=settings.personal_eval_every, server_lr=settings.server_lr,
                     server_momentum=settings.server_momentum, score_step=settings.resolved_score_step(),
                     score_grid=settings.score_grid, mask_granularity=settings.mask_granularity)


def _fedtiny(settings: RunSettings) -> FederatedStrategy:
    model, input_shape = seeded_model(settings)
    theta0 = _theta0(model)
    candidates = candidate_masks(model, settings.score, settings.density, settings.candidates, settings.seed,
                                 settings.candidate_spread, settings.candidate_ranking)
    return FedTiny(theta0=theta0, candidates=candidates, cost=check_budget_tiers(settings, model, input_shape),
                   architecture=settings.model, model_seed=settings.seed, score=settings.score,
                   clients_per_round=settings.clients_per_round, min_train_nodes=settings.min_train_nodes,
                   seed=settings.seed, adjust_every=settings.adjust_every, adjust_until=settings.adjust_until,
                   adjust_alpha=settings.adjust_alpha, adjust_layers=settings.adjust_layers,
                   gradient_tap=settings.gradient_tap, eval_batch_size=settings.eval_batch_size,
                   batch_size=settings.batch_size, bn_selection_z=settings.bn_selection_z)


def check_budget_tiers(settings: RunSettings, model: nn.Module | None = None,
                       input_shape: tuple[int, ...] | None = None) -> ModelCost:
    """The model's cost profile; ``ConfigError('budget-tiers')`` if a simulated tier no density satisfies.

    ``model``/``input_shape``: the run's initial model if the caller has it (else it is built here)."""
    if model is None:
        model, input_shape = seeded_model(settings)
    cost = ModelCost.of(model, input_shape)
    smallest = one_weight_mask(cost)
    for tier in parse_budget_tiers(settings.budget_tiers):
        try:
            check_smallest(cost, smallest, tier, batch=settings.batch_size)
        except BudgetError as exc:
            raise ConfigError("budget-tiers", str(exc)) from None
    return cost


STRATEGIES: dict[str, Callable[[RunSettings], FederatedStrategy]] = {
    "fedavg": _dense_fedavg,
    "flwr-fedavg": _flower_fedavg,
    "static-magnitude": _static_mask("magnitude"),
    "static-random": _static_mask("random"),
    "static-synflow": _static_mask("synflow"),
    "hidenseek": _hidenseek,
    "fedtiny": _fedtiny,
}


def build_strategy(settings: RunSettings) -> FederatedStrategy:
    """Instantiate the strategy ``settings.strategy`` names."""
    if settings.strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy '{settings.strategy}'; choose one of {sorted(STRATEGIES)}")
    return STRATEGIES[settings.strategy](settings)
