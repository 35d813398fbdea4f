"""Every sparse backend equals the dense-masked reference (forward and gradients); dispatcher; memory."""

import functools

import numpy as np
import pytest
import torch
from fedprune.kernels import (
    Backend,
    CompactConv2d,
    CompactLinear,
    CSRLinear,
    MaskedConv2d,
    MaskedLinear,
    choose_backend,
)
from fedprune.kernels.benchmark import training_state_bytes
from fedprune.kernels.convert import export_dense_state, sparsify
from fedprune.kernels.dispatch import CSR_BREAKEVEN, block_fraction, estimated_fraction
from fedprune.models import build_model
from fedprune.pruning.schedules import data_free_mask
from hypothesis import given, settings
from hypothesis import strategies as st


@functools.cache
def _fl_cnn_synflow_masks(density: float) -> dict[str, np.ndarray]:
    return data_free_mask(build_model("fl-cnn", (1, 28, 28), seed=0), "synflow", density, 0)


def _fl_cnn_synflow_mask(density: float) -> dict[str, np.ndarray]:
    """SynFlow's mask of the seed-0 FL CNN (the tests' ``base``) at ``density``, a fresh copy of one computed once
    per session: each takes seconds, and several tests check other properties of the same masks."""
    return {name: kept.copy() for name, kept in _fl_cnn_synflow_masks(density).items()}


def _same_output_and_input_gradient(ref: torch.nn.Module, layer: torch.nn.Module, x: torch.Tensor,
                                    g: torch.Generator) -> None:
    """``layer`` answers ``x`` as the reference does, and passes back the same input gradient for one random
    output gradient drawn from ``g`` (both layers keep their parameter gradients for the caller to compare)."""
    xr, xl = x.clone().requires_grad_(), x.clone().requires_grad_()
    yr, yl = ref(xr), layer(xl)
    assert torch.allclose(yr, yl, atol=1e-4, rtol=1e-4)
    grad = torch.randn(yr.shape, generator=g)
    yr.backward(grad)
    yl.backward(grad)
    assert torch.allclose(xr.grad, xl.grad, atol=1e-4, rtol=1e-4)


def _check_linear(cls, out_f, in_f, density, batch, seed):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(out_f, in_f, generator=g)
    mask = torch.rand(out_f, in_f, generator=g) < density
    bias = torch.randn(out_f, generator=g)
    x = torch.randn(batch, in_f, generator=g)
    ref, layer = MaskedLinear(weight, mask, bias), cls(weight, mask, bias)
    _same_output_and_input_gradient(ref, layer, x, g)
    assert torch.allclose(ref.bias.grad, layer.bias.grad, atol=1e-4, rtol=1e-4)
    ref_grad = ref.weight.grad * mask  # the reference's gradient at kept positions
    if cls is CSRLinear:
        assert torch.allclose(layer.values.grad, ref_grad[mask], atol=1e-4, rtol=1e-4)
    else:
        full = torch.zeros_like(weight)
        if layer.weight.grad is not None and layer.weight.numel():
            full[layer.rows.unsqueeze(1), layer.cols.unsqueeze(0)] = layer.weight.grad
            if layer.block_mask is not None:
                full[layer.rows.unsqueeze(1), layer.cols.unsqueeze(0)] *= layer.block_mask
        assert torch.allclose(full, ref_grad, atol=1e-4, rtol=1e-4)
    assert torch.allclose(layer.dense_weight(), ref.dense_weight())


@settings(max_examples=40, deadline=None)
@given(out_f=st.integers(1, 40), in_f=st.integers(1, 40), density=st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0]),
       batch=st.integers(1, 9), seed=st.integers(0, 10_000), cls=st.sampled_from([CompactLinear, CSRLinear]))
def test_linear_backends_match_reference(out_f, in_f, density, batch, seed, cls):
    _check_linear(cls, out_f, in_f, density, batch, seed)


@settings(max_examples=25, deadline=None)
@given(cout=st.integers(1, 12), cin=st.integers(1, 8), k=st.sampled_from([1, 3, 5]),
       density=st.sampled_from([0.0, 0.05, 0.3, 1.0]), batch=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_conv_compact_matches_reference(cout, cin, k, density, batch, seed):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(cout, cin, k, k, generator=g)
    mask = torch.rand(weight.shape, generator=g) < density
    if density == 0.05:  # make some whole channels empty so slicing really happens
        mask[: cout // 2] = False
    bias = torch.randn(cout, generator=g)
    x = torch.randn(batch, cin, 7, 7, generator=g)
    ref, layer = MaskedConv2d(weight, mask, bias, padding=k // 2), CompactConv2d(weight, mask, bias, padding=k // 2)
    _same_output_and_input_gradient(ref, layer, x, g)
    assert torch.allclose(layer.dense_weight(), ref.dense_weight())


def test_dispatcher_follows_its_table():
    g = torch.Generator().manual_seed(0)
    for (training, batch), breakeven in CSR_BREAKEVEN.items():
        below = torch.rand(512, 512, generator=g) < breakeven * 0.5
        above = torch.rand(512, 512, generator=g) < min(0.95, breakeven * 1.5)
        assert choose_backend(below, batch=batch, training=training) == Backend.CSR
        assert choose_backend(above, batch=batch, training=training) != Backend.CSR
    # whole rows/columns pruned: the compact block is what the table prices
    structured = torch.zeros(512, 512, dtype=torch.bool)
    structured[:64, :64] = True
    assert block_fraction(structured) == pytest.approx(1 / 64)
    assert choose_backend(structured, batch=32, training=True) == Backend.COMPACT
    dense = torch.ones(64, 64, dtype=torch.bool)
    assert choose_backend(dense, batch=32, training=True) == Backend.MASKED  # nothing beats dense-masked
    conv = torch.rand(32, 16, 3, 3, generator=g) < 0.01
    assert choose_backend(conv, batch=32, training=True) in (Backend.MASKED, Backend.COMPACT)
    assert estimated_fraction(Backend.CSR, conv, 32, True) == float("inf")


def test_unsupported_dtype_falls_back_with_one_warning(caplog):
    mask = torch.rand(256, 256) < 0.01
    with caplog.at_level("WARNING"):
        first = choose_backend(mask, batch=32, training=True, dtype=torch.float64)
        second = choose_backend(mask, batch=32, training=True, dtype=torch.float64)
    assert first == second != Backend.CSR
    assert sum("does not support" in r.getMessage() for r in caplog.records) <= 1


@pytest.mark.parametrize("density", [0.1, 0.01])
def test_sparsified_model_equals_masked_model_and_exports_dense_state(density):
    base = build_model("fl-cnn", (1, 28, 28), seed=0)
    mask = _fl_cnn_synflow_mask(density)
    import copy

    ref, fast = copy.deepcopy(base), copy.deepcopy(base)
    sparsify(ref, mask, batch=32, training=True, backends={k: Backend.MASKED for k in mask})
    chosen = sparsify(fast, mask, batch=32, training=True)
    x = torch.randn(4, 1, 28, 28)
    assert torch.allclose(ref(x), fast(x), atol=1e-5)
    state = export_dense_state(fast)
    assert set(state) == set(base.state_dict())
    for name, m in mask.items():
        assert not state[name].numpy()[~m].any()
    assert chosen["classifier.1.weight"] != Backend.MASKED


def test_compact_training_state_is_proportional_to_kept_weights():
    base = build_model("fl-cnn", (1, 28, 28), seed=0)
    x = torch.randn(2, 1, 28, 28)
    sizes = {}
    import copy

    for density in (0.1, 0.01):
        mask = _fl_cnn_synflow_mask(density)
        fast, ref = copy.deepcopy(base), copy.deepcopy(base)
        sparsify(fast, mask, batch=32, training=True)
        sparsify(ref, mask, batch=32, training=True, backends={k: Backend.MASKED for k in mask})
        sizes[density] = training_state_bytes(fast, x)
        kept = sum(int(m.sum()) for m in mask.values())
        # params + grads + 2 Adam moments = 16 bytes per kept weight, plus index structures and dense layers
        assert sizes[density] < 40 * kept + 20 * 10_000
        assert sizes[density] < 0.3 * training_state_bytes(ref, x)
    assert sizes[0.01] < 0.25 * sizes[0.1]


def test_memory_at_density_001_is_under_10_percent_of_dense_masked():
    base = build_model("fl-cnn", (1, 28, 28), seed=0)
    mask = _fl_cnn_synflow_mask(0.01)
    import copy

    fast, ref = copy.deepcopy(base), copy.deepcopy(base)
    sparsify(fast, mask, batch=32, training=True)
    sparsify(ref, mask, batch=32, training=True, backends={k: Backend.MASKED for k in mask})
    x = torch.randn(2, 1, 28, 28)
    assert training_state_bytes(fast, x) <= 0.10 * training_state_bytes(ref, x)
    np.testing.assert_allclose(fast(x).detach().numpy(), ref(x).detach().numpy(), atol=1e-5)


def test_export_for_inference_folds_signs_into_compact_backends():
    import copy

    from fedprune.kernels.convert import export_for_inference
    from fedprune.kernels.sign_supermask import apply_sign_supermask, fold

    base = build_model("fl-cnn", (1, 28, 28), seed=0)
    theta0 = {k: v.detach().numpy().copy() for k, v in base.state_dict().items()}
    mask = _fl_cnn_synflow_mask(0.05)
    magnitude = {k: np.abs(theta0[k][m]) for k, m in mask.items()}
    rng = np.random.default_rng(0)
    scores = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in magnitude.items()}
    trained = copy.deepcopy(base)
    apply_sign_supermask(trained, mask, magnitude, scores)
    x = torch.randn(3, 1, 28, 28)
    expected = trained(x).detach()
    edge = export_for_inference(fold(trained), mask)
    assert not any(p.requires_grad for p in edge.parameters())
    assert type(edge.classifier[1]).__name__ in ("CSRLinear", "CompactLinear")
    assert torch.allclose(edge(x), expected, atol=1e-5)
