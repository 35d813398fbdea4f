import numpy as np
import pytest
import torch
from fedprune.models import build_model
from fedprune.pruning.schedules import data_free_mask, exponential_schedule
from fedprune.pruning.scores import global_topk_mask
from fedprune.pruning.synflow import synflow_scores
from torch import nn


# 0.01 (every layer down to a few weights) stays in `make test-fast`; 0.1 repeats it at ~13 s CPU
@pytest.mark.parametrize("density", [pytest.param(0.1, marks=pytest.mark.slow), 0.01])
def test_synflow_mask_exact_density_every_layer_kept_deterministic(density):
    model = build_model("fl-cnn", (1, 28, 28), seed=1)
    mask = data_free_mask(model, "synflow", density, seed=1)
    total = sum(m.size for m in mask.values())
    assert sum(int(m.sum()) for m in mask.values()) == round(density * total)
    assert all(m.any() for m in mask.values())
    again = data_free_mask(build_model("fl-cnn", (1, 28, 28), seed=1), "synflow", density, seed=1)
    assert all(np.array_equal(mask[k], again[k]) for k in mask)
    other = data_free_mask(build_model("fl-cnn", (1, 28, 28), seed=2), "synflow", density, seed=2)
    assert not all(np.array_equal(mask[k], other[k]) for k in mask)


def test_synflow_score_of_a_cut_network_is_zero():
    model = build_model("digits-cnn", (1, 8, 8), seed=0)
    scores = synflow_scores(model)
    assert all(float(s.sum()) > 0 for s in scores.values())
    cut = {k: np.ones(tuple(v.shape), dtype=bool) for k, v in scores.items()}
    cut["classifier.1.weight"][:] = False  # no path from input to output
    assert all(float(s.abs().sum()) == 0.0 for s in synflow_scores(model, mask=cut).values())


def test_synflow_matches_its_definition_on_a_tiny_linear_net():
    net = nn.Sequential(nn.Linear(3, 2), nn.ReLU(), nn.Linear(2, 1))
    net.synflow_input_shape = (3,)
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]]))
        net[2].weight.copy_(torch.tensor([[2.0, -1.0]]))
    scores = synflow_scores(net)
    # R = sum_j |w2_j| * sum_i |w1_ji|; score(w1_ji) = |w2_j| * |w1_ji|, score(w2_j) = |w2_j| * sum_i |w1_ji|
    assert torch.allclose(scores["0.weight"], torch.tensor([[2.0, 4.0, 1.0], [0.0, 3.0, 1.0]], dtype=torch.float64))
    assert torch.allclose(scores["2.weight"], torch.tensor([[7.0, 4.0]], dtype=torch.float64))


def test_synflow_ignores_data_batchnorm_statistics_and_weight_signs():
    model = build_model("fl-cnn-bn", (1, 28, 28), seed=0)
    before = synflow_scores(model)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.fill_(5.0)
            module.running_var.fill_(9.0)
    with torch.no_grad():
        model.features[0].weight.neg_()
    after = synflow_scores(model)
    assert all(torch.allclose(before[k], after[k]) for k in before)


def test_exponential_schedule():
    steps = exponential_schedule(0.01, 100)
    assert len(steps) == 100 and steps[-1] == pytest.approx(0.01)
    ratios = np.array(steps[1:]) / np.array(steps[:-1])
    assert np.allclose(ratios, ratios[0])


def test_topk_ties_break_by_position():
    scores = {"a": torch.ones(4, dtype=torch.float64), "b": torch.ones(4, dtype=torch.float64)}
    mask = global_topk_mask(scores, 0.5)
    assert mask["a"].tolist() == [True, True, True, True] or mask["a"].sum() + mask["b"].sum() == 4
    assert mask["b"].any()  # every layer keeps at least one
