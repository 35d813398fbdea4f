"""The training-cost estimate against the real tensors and FLOPs of a client's training step, and budgets
enforced against it: a budgeted FedTiny node's measured training state never exceeds its budget."""

from __future__ import annotations

import copy
import functools

import numpy as np
import pytest
import torch
from fedprune.client.score_optimizer import score_optimizer
from fedprune.kernels.convert import sparsify
from fedprune.kernels.sign_supermask import apply_sign_supermask_sparse
from fedprune.kernels.training_cost import (
    counted_flops_per_sample,
    dense_training_cost,
    masked_training_cost,
    measured_state_bytes,
    sign_training_cost,
)
from fedprune.models import build_model
from fedprune.pruning import budgets
from fedprune.pruning.budgets import MB, Budget, ModelCost
from fedprune.pruning.schedules import data_free_mask
from torch.nn import functional as F

SHAPE = (1, 28, 28)
ARCHITECTURES = ("fl-cnn", "fl-cnn-bn")
DENSITIES = (1.0, 0.2, 0.05, 0.01, 0.002)
BATCHES = (1, 32, 256)


@functools.cache
def _model(architecture: str) -> torch.nn.Module:
    return build_model(architecture, SHAPE, 10, seed=0)


@functools.cache
def _mask(architecture: str, score: str, density: float) -> dict[str, np.ndarray]:
    return data_free_mask(_model(architecture), score, density, 0)


def _batch(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(size)
    return torch.randn(size, *SHAPE, generator=generator), torch.randint(0, 10, (size,), generator=generator)


def _two_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: int) -> tuple[int, float]:
    """Two real optimizer steps (as ``client.local_training.train_epochs``); (measured state bytes, corrected
    FLOPs per sample of one more forward + backward step)."""
    x, y = _batch(batch)
    model.train()
    for _ in range(2):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    state = measured_state_bytes(model, optimizer)
    return state, counted_flops_per_sample(model, x, y)[1]


def _trained_masked(architecture: str, mask: dict[str, np.ndarray], batch: int) -> tuple[dict, int, float]:
    model = copy.deepcopy(_model(architecture))
    backends = sparsify(model, mask, batch=batch, training=True)
    state, flops = _two_steps(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9), batch)
    return {k: v.value for k, v in backends.items()}, state, flops


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_masked_estimate_equals_the_measured_state_and_bounds_the_flops(architecture):
    torch.set_num_threads(1)
    seen = set()
    for score in ("synflow", "magnitude", "random"):
        for density in DENSITIES:
            mask = _mask(architecture, score, density)
            for batch in BATCHES if score == "synflow" else (32,):  # every batch bucket on one score
                estimate = masked_training_cost(_model(architecture), SHAPE, mask, batch=batch)
                backends, state, flops = _trained_masked(architecture, mask, batch)
                case = (score, density, batch)
                assert estimate.backends == backends, case
                assert estimate.state_bytes == state, case
                assert estimate.flops_per_sample >= flops, case
                seen |= set(backends.values())
    assert {"masked", "compact", "csr"} <= seen


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("kind", ["layer-sgd", "adam"])
def test_sign_estimate_equals_the_measured_state_of_a_hidenseek_client(architecture, kind):
    torch.set_num_threads(1)
    base = _model(architecture)
    theta0 = {k: v.detach().numpy().copy() for k, v in base.state_dict().items()}
    seen = set()
    for density, batch in ((1.0, 32), (0.2, 1), (0.05, 256), (0.01, 32), (0.002, 1)):
        mask = _mask(architecture, "synflow", density)
        magnitude = {k: np.abs(theta0[k][m]).astype(np.float32) for k, m in mask.items()}
        estimate = sign_training_cost(base, SHAPE, mask, batch=batch, optimizer=kind)
        model = copy.deepcopy(base)
        latent = apply_sign_supermask_sparse(model, mask, magnitude, {k: theta0[k][m] for k, m in mask.items()},
                                             batch=batch)
        optimizer = score_optimizer(kind, model, latent, magnitude, theta0, 0.01, 0.9)
        state, flops = _two_steps(model, optimizer, batch)
        assert estimate.state_bytes == state, (density, batch)
        assert estimate.flops_per_sample >= flops, (density, batch)
        seen |= set(estimate.backends.values())
    assert seen == {"sign-csr", "sign-param"}


@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_dense_estimate_equals_the_plain_model(architecture, momentum):
    model = copy.deepcopy(_model(architecture))
    estimate = dense_training_cost(model, SHAPE, momentum=momentum > 0)
    state, flops = _two_steps(model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=momentum), 8)
    assert estimate.state_bytes == state and estimate.flops_per_sample >= flops
    assert set(estimate.backends.values()) == {"dense"}


def _budgets(cost: ModelCost, mask: dict[str, np.ndarray], weights: dict[str, np.ndarray], batch: int
             ) -> list[Budget]:
    """Memory and FLOPs budgets from just above the smallest submodel to just below the full mask."""
    smallest = cost.training_cost(budgets.nested_submask(mask, weights, 0.0), batch)
    full = cost.training_cost(mask, batch)
    out = []
    for share in (0.0, 0.1, 0.4, 0.8, 0.99):
        memory = smallest.state_bytes + share * (full.state_bytes - smallest.state_bytes) + 1
        flops = smallest.flops_per_sample + share * (full.flops_per_sample - smallest.flops_per_sample) + 1
        out += [Budget(memory_mb=memory / MB), Budget(flops_per_sample=flops), Budget(memory / MB, flops * 1.2)]
    return out


@pytest.mark.parametrize("density", [0.2, 0.05])
def test_a_budgeted_fedtiny_node_holds_no_more_than_its_budget(density):
    torch.set_num_threads(1)
    base = _model("fl-cnn-bn")
    cost = ModelCost.of(base, SHAPE)
    mask = _mask("fl-cnn-bn", "synflow", density)
    weights = {k: v.detach().numpy() for k, v in base.state_dict().items()}
    batch = 32
    ratios = set()
    for budget in _budgets(cost, mask, weights, batch):
        ratio = budgets.ratio_for_budget(cost, mask, weights, budget, batch=batch)
        ratios.add(ratio)
        submask = budgets.nested_submask(mask, weights, ratio)
        _, state, flops = _trained_masked("fl-cnn-bn", submask, batch)
        assert state <= budget.memory_mb * MB, budget
        assert flops <= budget.flops_per_sample, budget
    assert len(ratios) > 3  # the budgets gave different submodels


def test_the_smallest_submodel_is_checked_on_its_real_kernels():
    base = _model("fl-cnn-bn")
    cost = ModelCost.of(base, SHAPE)
    mask = _mask("fl-cnn-bn", "synflow", 0.05)
    weights = {k: v.detach().numpy() for k, v in base.state_dict().items()}
    smallest = budgets.nested_submask(mask, weights, 0.0)
    need = cost.training_cost(smallest, 32)
    assert need == cost.training_cost(budgets.one_weight_mask(cost), 32)  # wherever the one weight is
    ratio = budgets.ratio_for_budget(cost, mask, weights, Budget(memory_mb=need.state_bytes / MB), batch=32)
    assert cost.training_cost(budgets.nested_submask(mask, weights, ratio), 32) == need
    with pytest.raises(budgets.BudgetError, match="cannot be met by any density"):
        budgets.ratio_for_budget(cost, mask, weights, Budget(memory_mb=(need.state_bytes - 1) / MB), batch=32)
