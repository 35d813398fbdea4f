import numpy as np
import pytest
import torch
from fedprune.kernels.sign_supermask import apply_sign_supermask, fold, folded_weights
from fedprune.models import build_model
from fedprune.pruning.aggregation import (
    server_step,
    sign_vote,
    signs_of,
    stochastic_ternary,
    tally_update,
    ternary_value,
)
from fedprune.pruning.schedules import data_free_mask


def _setup(seed=0, density=0.3):
    model = build_model("digits-cnn", (1, 8, 8), seed=seed)
    theta0 = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    mask = data_free_mask(model, "magnitude", density, seed)
    magnitude = {k: np.abs(theta0[k][m]) for k, m in mask.items()}
    return model, theta0, mask, magnitude


def test_parametrized_forward_equals_the_explicit_weight():
    model, theta0, mask, magnitude = _setup()
    rng = np.random.default_rng(0)
    z = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in magnitude.items()}
    apply_sign_supermask(model, mask, magnitude, z)
    explicit = build_model("digits-cnn", (1, 8, 8), seed=0)
    state = {k: torch.from_numpy(v) for k, v in theta0.items()}
    for name, m in mask.items():
        weight = np.where(m, np.abs(theta0[name]) * np.sign(np.where(m, 1, 0)), 0).astype(np.float32)
        weight[m] = magnitude[name] * np.where(z[name] >= 0, 1, -1)
        state[name] = torch.from_numpy(weight)
    explicit.load_state_dict(state)
    x = torch.randn(5, 1, 8, 8)
    assert torch.allclose(model(x), explicit(x), atol=1e-6)
    signs = {k: np.where(v >= 0, 1, -1) for k, v in z.items()}
    folded = folded_weights(mask, magnitude, signs)
    fold(model)
    for name in mask:
        assert np.array_equal(model.state_dict()[name].numpy(), folded[name])
        assert np.array_equal(folded[name], state[name].numpy())


def test_straight_through_gradient_reaches_scores_and_not_pruned_positions():
    model, _, mask, magnitude = _setup()
    latent = apply_sign_supermask(model, mask, magnitude, {k: v.copy() for k, v in magnitude.items()})
    loss = model(torch.randn(8, 1, 8, 8)).pow(2).sum()
    loss.backward()
    for name, z in latent.items():
        assert z.shape == (int(mask[name].sum()),)
        assert z.grad is not None and float(z.grad.abs().sum()) > 0
    # frozen magnitudes are buffers, not parameters: only scores and dense params train
    names = {n for n, _ in model.named_parameters()}
    assert not any(n.endswith(".weight") and "parametrizations" not in n and n in mask for n in names)


def test_vote_weights_and_ties():
    current = np.array([1, 1, -1, -1], dtype=np.int8)
    votes = [np.array([1, -1, 1, -1], np.int8), np.array([-1, -1, 1, 1], np.int8)]
    assert sign_vote(votes, [1.0, 1.0], current).tolist() == [1, -1, 1, -1]  # ties keep current
    assert sign_vote(votes, [3.0, 1.0], current).tolist() == [1, -1, 1, -1]
    assert sign_vote(votes, [1.0, 3.0], current).tolist() == [-1, -1, 1, 1]


def test_tally_update_is_an_unbiased_estimate_of_the_mean_score_change():
    rng = np.random.default_rng(0)
    n, clients, reach = 20000, 10, 0.02
    magnitude = rng.uniform(0, 0.05, n)
    sigma = np.where(rng.random(n) < 0.5, 1, -1).astype(np.int8)
    tally = sigma * magnitude
    changes = rng.uniform(-reach, reach, (clients, n))
    weights = rng.integers(50, 500, clients).astype(float)
    bits = []
    for c in range(clients):
        z = sigma * (magnitude + reach) + changes[c]
        p_plus = (1 + z / (magnitude + 2 * reach)) / 2
        bits.append(np.where(rng.random(n) < p_plus, 1, -1))
    new = tally_update(tally.astype(np.float32), bits, weights, sigma, magnitude, [reach] * clients)
    expected = tally + np.average(changes, axis=0, weights=weights)
    error = new - expected
    assert abs(error.mean()) < 3e-4  # unbiased
    assert signs_of(np.array([0.0, 1.0, -2.0]), np.array([-1, -1, 1])).tolist() == [-1, 1, -1]


def test_stratified_rounding_is_unbiased_and_less_noisy_than_independent():
    rng = np.random.default_rng(1)
    n, clients = 50_000, 10
    p = rng.uniform(0.0, 1.0, n)  # the same target probability at every client
    shared = rng.random(n)
    stratified = np.mean([np.mod(shared + c / clients, 1.0) < p for c in range(clients)], axis=0)
    independent = np.mean([rng.random(n) < p for _ in range(clients)], axis=0)
    assert abs(float((stratified - p).mean())) < 5e-3
    assert np.abs(stratified - p).max() <= 1 / clients + 1e-9  # never off by more than one slot
    assert float(((stratified - p) ** 2).mean()) < 0.3 * float(((independent - p) ** 2).mean())


def test_stochastic_ternary_is_unbiased_never_clips_and_costs_what_moves():
    rng = np.random.default_rng(1)
    delta = rng.normal(0, 0.003, 50_000)
    delta[7] = 0.02  # the scale is the largest change: nothing is clipped
    draws = [stochastic_ternary(delta, np.random.default_rng(seed)) for seed in range(200)]
    assert all(scale == abs(delta).max() for _, _, scale in draws)
    estimates = np.array([ternary_value(*draw) for draw in draws])
    assert set(np.unique(estimates[0] / draws[0][2]).tolist()) <= {-1.0, 0.0, 1.0}
    error = estimates.mean(axis=0) - delta
    assert abs(error.mean()) < 2e-5 and np.abs(error).max() < 0.02 * 0.5
    moved_share = np.mean([moved.mean() for moved, _, _ in draws])
    assert abs(moved_share - np.abs(delta).mean() / 0.02) < 0.005  # P(move) = |delta| / r
    moved, signs, _ = draws[0]
    assert signs.size == moved.sum() and (signs == np.sign(delta[moved])).all()


def test_stochastic_ternary_edge_cases_and_inverse_checks_lengths():
    moved, signs, scale = stochastic_ternary(np.zeros(5), np.random.default_rng(0))
    assert scale == 0.0 and not moved.any() and signs.size == 0
    assert ternary_value(moved, signs, scale).tolist() == [0.0] * 5
    with pytest.raises(ValueError, match="signs for"):
        ternary_value(np.array([True, False]), np.array([1, -1], np.int8), 0.1)


def test_moved_share_caps_what_moves_and_stays_unbiased():
    rng = np.random.default_rng(2)
    delta = rng.uniform(-0.01, 0.01, 40_000)  # Adam-like: most scores move a similar amount
    full = np.mean([stochastic_ternary(delta, np.random.default_rng(s))[0].mean() for s in range(20)])
    assert full > 0.45  # r = max |delta|: about half the entries move
    draws = [stochastic_ternary(delta, np.random.default_rng(s), moved_share=0.15) for s in range(300)]
    assert abs(np.mean([moved.mean() for moved, _, _ in draws]) - 0.15) < 0.005
    estimate = np.mean([ternary_value(*d) for d in draws], axis=0)
    assert abs((estimate - delta).mean()) < 2e-5
    with pytest.raises(ValueError, match="moved_share"):
        stochastic_ternary(delta, rng, moved_share=0.0)


def test_server_step_applies_lr_and_accumulates_momentum():
    scores, velocity = np.zeros(3, np.float32), np.zeros(3, np.float32)
    change = np.array([1.0, -1.0, 0.0])
    scores, velocity = server_step(scores, change, velocity, lr=0.5, momentum=0.0)
    assert scores.tolist() == [0.5, -0.5, 0.0]
    scores, velocity = server_step(np.zeros(3, np.float32), change, velocity, lr=1.0, momentum=0.5)
    assert velocity.tolist() == [1.5, -1.5, 0.0] and scores.tolist() == [1.5, -1.5, 0.0]
