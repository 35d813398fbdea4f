"""Strategy names a run config may choose, and how each is built from the run settings."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedprune.strategies.fedavg import DenseFedAvg
from fedprune.strategies.hidenseek import HideNseek
from fedprune.strategies.static_mask import StaticMaskFedAvg
from flwr.serverapp.strategy import FedAvg, Strategy

if TYPE_CHECKING:
    from fedprune.server.run_config import RunSettings


def _dense_fedavg(settings: RunSettings) -> Strategy:
    return DenseFedAvg(clients_per_round=settings.clients_per_round,
                       min_train_nodes=settings.min_train_nodes, seed=settings.seed)


def _flower_fedavg(settings: RunSettings) -> Strategy:
    """Flower's own FedAvg, unchanged: the reference for overhead and byte comparisons."""
    return FedAvg(
        fraction_train=settings.clients_per_round / settings.num_clients,
        fraction_evaluate=0.0,
        min_train_nodes=settings.clients_per_round,
        min_evaluate_nodes=0,
        min_available_nodes=settings.num_clients,
    )


def _static_mask(score: str):
    def build(settings: RunSettings) -> Strategy:
        from fedprune.data import load_dataset
        from fedprune.models import build_model
        from fedprune.strategies.scores import data_free_mask

        splits = load_dataset(settings.dataset, settings.dataset_path or None)
        model = build_model(settings.model, splits.input_shape, splits.num_classes, seed=settings.seed)
        mask = data_free_mask(model, score, settings.density, settings.seed)
        return StaticMaskFedAvg(mask=mask, architecture=settings.model, model_seed=settings.seed, score=score,
                                clients_per_round=settings.clients_per_round,
                                min_train_nodes=settings.min_train_nodes, seed=settings.seed)
    return build


def _hidenseek(settings: RunSettings) -> Strategy:
    from fedprune.data import load_dataset
    from fedprune.models import build_model
    from fedprune.strategies.scores import data_free_mask

    splits = load_dataset(settings.dataset, settings.dataset_path or None)
    model = build_model(settings.model, splits.input_shape, splits.num_classes, seed=settings.seed)
    theta0 = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    mask = data_free_mask(model, settings.score, settings.density, settings.seed)
    return HideNseek(theta0=theta0, mask=mask, architecture=settings.model, model_seed=settings.seed,
                     score=settings.score, density=settings.density, clients_per_round=settings.clients_per_round,
                     min_train_nodes=settings.min_train_nodes, seed=settings.seed, aggregation=settings.aggregation,
                     dense_params=settings.dense_params, mask_transfer=settings.mask_transfer,
                     personal_eval_every=settings.personal_eval_every, server_lr=settings.server_lr,
                     server_momentum=settings.server_momentum)


def _fedtiny(settings: RunSettings) -> Strategy:
    from fedprune.data import load_dataset
    from fedprune.models import build_model
    from fedprune.strategies.candidates import candidate_masks
    from fedprune.strategies.fedtiny import FedTiny

    splits = load_dataset(settings.dataset, settings.dataset_path or None)
    model = build_model(settings.model, splits.input_shape, splits.num_classes, seed=settings.seed)
    theta0 = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    candidates = candidate_masks(model, settings.score, settings.density, settings.candidates, settings.seed,
                                 settings.candidate_spread, settings.candidate_ranking)
    return FedTiny(theta0=theta0, candidates=candidates, cost=check_budget_tiers(settings, model, splits.input_shape),
                   architecture=settings.model, model_seed=settings.seed, score=settings.score,
                   clients_per_round=settings.clients_per_round, min_train_nodes=settings.min_train_nodes,
                   seed=settings.seed, adjust_every=settings.adjust_every, adjust_until=settings.adjust_until,
                   adjust_alpha=settings.adjust_alpha, adjust_layers=settings.adjust_layers,
                   gradient_tap=settings.gradient_tap, eval_batch_size=settings.eval_batch_size)


def check_budget_tiers(settings: RunSettings, model=None, input_shape=None):
    """The model's cost profile; ``ConfigError('budget-tiers')`` if a simulated tier no density satisfies."""
    from fedprune.data import load_dataset
    from fedprune.models import build_model
    from fedprune.server.run_config import ConfigError
    from fedprune.strategies.budgets import BudgetError, ModelCost, parse_budget_tiers, ratio_for_budget

    if model is None:
        splits = load_dataset(settings.dataset, settings.dataset_path or None)
        input_shape = splits.input_shape
        model = build_model(settings.model, input_shape, splits.num_classes, seed=settings.seed)
    cost = ModelCost.of(model, input_shape)
    for tier in parse_budget_tiers(settings.budget_tiers):
        try:
            ratio_for_budget(cost, dict.fromkeys(cost.sizes, 1), tier)
        except BudgetError as exc:
            raise ConfigError("budget-tiers", str(exc)) from None
    return cost


STRATEGIES = {
    "fedavg": _dense_fedavg,
    "flwr-fedavg": _flower_fedavg,
    "static-magnitude": _static_mask("magnitude"),
    "static-random": _static_mask("random"),
    "static-synflow": _static_mask("synflow"),
    "hidenseek": _hidenseek,
    "fedtiny": _fedtiny,
}


def build_strategy(settings: RunSettings) -> Strategy:
    """Instantiate the strategy ``settings.strategy`` names."""
    if settings.strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy '{settings.strategy}'; choose one of {sorted(STRATEGIES)}")
    return STRATEGIES[settings.strategy](settings)
