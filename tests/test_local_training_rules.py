"""Client training rules: layer-normalized SGD on sign scores, logit-adjusted local loss, their settings."""

import dataclasses

import numpy as np
import pytest
import torch
from fedprune.client.local_loss import PRIOR_PSEUDO_COUNT, add_label_prior, label_prior_offset, logit_offset
from fedprune.client.local_training import train_epochs
from fedprune.client.score_optimizer import LayerNormalizedSGD, score_optimizer
from fedprune.data import LabeledArrays
from fedprune.server.run_config import ConfigError, RunSettings


def test_first_step_is_the_rms_normalized_gradient_times_lr_and_scale():
    p = torch.nn.Parameter(torch.zeros(4))
    opt = LayerNormalizedSGD([{"params": [p], "scale": 0.5}], lr=0.1, momentum=0.9)
    p.grad = torch.tensor([3.0, -1.0, 0.0, 1.0])
    opt.step()
    rms = float(np.sqrt(np.mean([9.0, 1.0, 0.0, 1.0])))
    assert torch.allclose(p.detach(), -0.05 * torch.tensor([3.0, -1.0, 0.0, 1.0]) / rms)
    # the step does not depend on the gradient's overall scale (layers with tiny gradients still move) ...
    q = torch.nn.Parameter(torch.zeros(4))
    opt_q = LayerNormalizedSGD([{"params": [q], "scale": 0.5}], lr=0.1, momentum=0.9)
    q.grad = 1e-6 * torch.tensor([3.0, -1.0, 0.0, 1.0])
    opt_q.step()
    assert torch.allclose(q.detach(), p.detach(), rtol=1e-4)
    # ... and momentum accumulates the normalized directions
    before = p.detach().clone()
    p.grad = torch.tensor([3.0, -1.0, 0.0, 1.0])
    opt.step()
    assert torch.allclose(p.detach() - before, 1.9 * before, rtol=1e-5)


def test_score_optimizer_scales_each_layer_by_its_weights_and_rejects_unknown_kinds():
    model = torch.nn.Module()
    model.a, model.b = torch.nn.Parameter(torch.ones(3)), torch.nn.Parameter(torch.ones(2))
    model.bias = torch.nn.Parameter(torch.zeros(2))
    scores = {"a": model.a, "b": model.b}
    magnitudes = {"a": np.array([0.3, 0.4, 0.0], np.float32), "b": np.array([0.02, 0.02], np.float32)}
    initial = {"bias": np.zeros(2, np.float32)}
    opt = score_optimizer("layer-sgd", model, scores, magnitudes, initial, 0.1, 0.9)
    scales = [g["scale"] for g in opt.param_groups]
    assert scales[0] == pytest.approx(np.sqrt((0.09 + 0.16) / 3)) and scales[1] == pytest.approx(0.02)
    assert scales[2] == pytest.approx(0.01)  # all-zero initial bias: the floor
    assert [g["params"][0] for g in opt.param_groups][2] is model.bias  # the model's other parameters train too
    adam = score_optimizer("adam", model, scores, magnitudes, initial, 1e-3, 0.9)
    assert isinstance(adam, torch.optim.Adam) and len(adam.param_groups[0]["params"]) == 3
    with pytest.raises(ValueError, match="not one of"):
        score_optimizer("rmsprop", model, scores, magnitudes, initial, 0.1, 0.9)
    with pytest.raises(ValueError):
        LayerNormalizedSGD([torch.nn.Parameter(torch.ones(1))], lr=0.1, momentum=1.0)


def test_label_prior_offset_is_the_log_of_smoothed_frequencies():
    offset = label_prior_offset(np.array([0, 0, 0, 2]), 3).numpy()
    counts = np.array([3, 0, 1]) + PRIOR_PSEUDO_COUNT
    assert np.allclose(offset, np.log(counts / counts.sum()))
    assert logit_offset("cross-entropy", np.array([0]), 3) is None
    with pytest.raises(ValueError, match="outside"):
        label_prior_offset(np.array([0, 3]), 3)
    with pytest.raises(ValueError, match="not one of"):
        logit_offset("focal", np.array([0]), 3)


def _bias_after_training(offset):
    torch.manual_seed(0)
    model = torch.nn.Linear(2, 3)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()
    model.weight.requires_grad_(False)
    y = np.array([0] * 45 + [1] * 5, dtype=np.int64)
    data = LabeledArrays(np.zeros((50, 2), np.float32), y)
    train_epochs(model, data, torch.optim.SGD([model.bias], lr=0.5), epochs=20, batch_size=10, seed=0,
                 logit_offset=offset)
    return model.bias.detach().numpy()


def test_logit_adjustment_keeps_a_skewed_client_from_learning_its_label_prior():
    plain = _bias_after_training(None)
    adjusted = _bias_after_training(label_prior_offset(np.array([0] * 45 + [1] * 5), 3))
    assert plain[0] - plain[1] > 1.5  # plain cross-entropy learns the 9:1 prior into the bias
    assert abs(adjusted[0] - adjusted[1]) < 0.3  # logit-adjusted: the offset carries the prior
    assert plain[0] - plain[2] > adjusted[0] - adjusted[2]  # an absent class is pushed down less


def test_settings_resolve_the_local_loss_and_refuse_bad_combinations():
    assert RunSettings(strategy="hidenseek").resolved_local_loss() == "logit-adjusted"
    assert RunSettings(strategy="fedavg").resolved_local_loss() == "cross-entropy"
    assert RunSettings(strategy="fedavg", local_loss="logit-adjusted").resolved_local_loss() == "logit-adjusted"
    base = RunSettings(strategy="hidenseek", density=0.1)
    for change, option in (({"score_optimizer": "sgd"}, "score-optimizer"),
                           ({"local_loss": "focal"}, "local-loss"),
                           ({"score_momentum": 1.0}, "score-momentum"),
                           ({"aggregation": "tally"}, "score-optimizer")):
        with pytest.raises(ConfigError) as err:
            dataclasses.replace(base, **change).validate(check_out_dir=False)
        assert err.value.option == option
    dataclasses.replace(base, aggregation="tally", score_optimizer="adam").validate(check_out_dir=False)


def test_label_prior_folds_into_the_last_bias_exactly():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 3))
    x = torch.randn(5, 4)
    before = model(x).detach()
    offset = label_prior_offset(np.array([0, 0, 1]), 3)
    add_label_prior(model, offset)
    assert torch.allclose(model(x).detach(), before + offset, atol=1e-6)
    with pytest.raises(ValueError, match="final Linear"):
        add_label_prior(model, np.zeros(4, np.float32))
