"""FedTiny's pieces on their own: candidates, BN re-estimation, pooling, selection, K schedule, grow/prune,
top-K coding, budget arithmetic, option validation."""

import copy
import math

import numpy as np
import pytest
import torch
from fedprune.client.bn_statistics import reestimate_bn
from fedprune.client.topk_gradients import (
    PrunedGradientTap,
    TopKBuffer,
    requested_adjustment,
    requested_capacities,
    top_k_pairs,
)
from fedprune.data import LabeledArrays
from fedprune.kernels.convert import sparsify
from fedprune.kernels.dispatch import Backend
from fedprune.kernels.training_cost import masked_training_cost
from fedprune.models import build_model, prunable_names
from fedprune.protos import fedprune_wire_pb2 as pb
from fedprune.protos.codec import Manifest, decode, encode
from fedprune.pruning import progressive
from fedprune.pruning.budgets import (
    Budget,
    BudgetError,
    ModelCost,
    nested_submask,
    parse_budget_tiers,
    ratio_for_budget,
)
from fedprune.pruning.candidates import (
    candidate_masks,
    channel_block,
    gated_candidate,
    loss_margins,
    perturbed_counts,
    pool_statistics,
    select_candidate,
    select_with_evidence,
)
from fedprune.pruning.progressive import (
    adjustment_rounds,
    aggregate_magnitudes,
    cosine_k,
    grow_and_prune,
    layers_to_adjust,
)
from fedprune.pruning.schedules import data_free_mask
from fedprune.server.run_config import ConfigError, RunSettings

SHAPE = (1, 8, 8)


@pytest.mark.parametrize(("score", "density"), [("magnitude", 0.01), ("magnitude", 0.3), ("random", 0.05),
                                               ("synflow", 0.05)])
def test_candidate_densities_are_exact_and_candidates_differ(score, density):
    model = build_model("digits-cnn-bn", SHAPE, seed=4)
    masks = candidate_masks(model, score, density, 5, seed=4, spread=0.5, ranking="score")
    total = sum(m.size for m in masks[0].values())
    for mask in masks:
        assert list(mask) == prunable_names(model)
        assert sum(int(m.sum()) for m in mask.values()) == max(len(mask), round(density * total))
        assert all(1 <= int(m.sum()) <= m.size for m in mask.values())
    allocations = {tuple(int(m.sum()) for m in mask.values()) for mask in masks}
    assert len(allocations) > 1  # layer-wise densities really are perturbed
    if score == "synflow":
        return  # 100 SynFlow iterations: the checks below run on the cheap scores
    base = data_free_mask(build_model("digits-cnn-bn", SHAPE, seed=4), score, density, 4)
    assert all(np.array_equal(masks[0][k], base[k]) for k in base)  # candidate 0 = the score's own mask
    again = candidate_masks(build_model("digits-cnn-bn", SHAPE, seed=4), score, density, 5, seed=4, spread=0.5,
                            ranking="score")
    assert all(np.array_equal(a[k], b[k]) for a, b in zip(masks, again, strict=True) for k in a)


@pytest.mark.parametrize("density", [0.01, 0.05])
def test_magnitude_ranking_keeps_the_scores_layer_counts_and_the_largest_weights(density):
    """Default ranking: the score sets each layer's count, θ0 magnitude picks the weights; candidates nest."""
    model = build_model("digits-cnn-bn", SHAPE, seed=3)
    base = data_free_mask(build_model("digits-cnn-bn", SHAPE, seed=3), "synflow", density, 3)
    masks = candidate_masks(model, "synflow", density, 4, seed=3, spread=0.5, ranking="magnitude")
    by_score = candidate_masks(build_model("digits-cnn-bn", SHAPE, seed=3), "synflow", density, 4, seed=3,
                               spread=0.5, ranking="score")
    params = dict(model.named_parameters())
    total = sum(int(m.sum()) for m in base.values())
    assert [int(m.sum()) for m in masks[0].values()] == [int(m.sum()) for m in base.values()]
    assert any(not np.array_equal(masks[0][k], base[k]) for k in base)  # magnitude really picks differently
    for mask, scored in zip(masks, by_score, strict=True):
        assert sum(int(m.sum()) for m in mask.values()) == total
        assert [int(m.sum()) for m in mask.values()] == [int(m.sum()) for m in scored.values()]  # same allocation
        for name, kept in mask.items():
            weight = params[name].detach().abs().numpy()
            if 0 < kept.sum() < kept.size:
                assert weight[kept].min() >= weight[~kept].max()
            for other in masks:  # nested: more kept in a layer means a superset
                if other[name].sum() >= kept.sum():
                    assert not (kept & ~other[name]).any()
    with pytest.raises(ValueError, match="ranking"):
        candidate_masks(model, "magnitude", density, 2, seed=3, ranking="synflow")


def test_channel_block_is_kept_rows_by_kept_columns_and_every_tap_of_a_conv():
    linear = np.zeros((4, 5), dtype=bool)
    linear[1, 3] = linear[2, 0] = True
    expected = np.zeros((4, 5), dtype=bool)
    expected[np.ix_([1, 2], [0, 3])] = True
    assert np.array_equal(channel_block(linear), expected)
    conv = np.zeros((3, 2, 2, 2), dtype=bool)
    conv[0, 1, 1, 0] = True
    block = channel_block(conv)
    assert block[0, 1].all() and block.sum() == 4  # one channel pair, all four kernel taps


def test_block_magnitude_candidates_stay_in_the_scores_channels_and_cost_no_more():
    """Every candidate keeps the largest |θ0| inside the channel block of the score's mask, with the exact
    total; so a client never trains more FLOPs than on the score's mask (FL CNN-BN, SynFlow, density 0.01)."""
    density = 0.01
    model = build_model("fl-cnn-bn", (1, 28, 28), seed=2)
    base = data_free_mask(build_model("fl-cnn-bn", (1, 28, 28), seed=2), "synflow", density, 2)
    masks = candidate_masks(model, "synflow", density, 5, seed=2, spread=0.5, ranking="block-magnitude")
    params = dict(model.named_parameters())
    total = sum(int(m.sum()) for m in base.values())
    assert [int(m.sum()) for m in masks[0].values()] == [int(m.sum()) for m in base.values()]
    assert len({tuple(int(m.sum()) for m in mask.values()) for mask in masks}) > 1  # allocations perturbed
    base_cost = masked_training_cost(model, (1, 28, 28), base, batch=32)
    for mask in masks:
        assert sum(int(m.sum()) for m in mask.values()) == total
        for name, kept in mask.items():
            block = channel_block(base[name])
            assert not (kept & ~block).any()
            weight = params[name].detach().abs().numpy()
            if 0 < kept.sum() < block.sum():
                assert weight[kept].min() >= weight[block & ~kept].max()
            for other in masks:  # nested: more kept in a layer means a superset
                if other[name].sum() >= kept.sum():
                    assert not (kept & ~other[name]).any()
        cost = masked_training_cost(model, (1, 28, 28), mask, batch=32)
        assert cost.flops_per_sample <= base_cost.flops_per_sample
        assert cost.backends["features.4.weight"] == base_cost.backends["features.4.weight"] == "compact"
    spread_out = candidate_masks(build_model("fl-cnn-bn", (1, 28, 28), seed=2), "synflow", density, 1, seed=2,
                                 ranking="magnitude")[0]
    assert masked_training_cost(model, (1, 28, 28), spread_out, batch=32).flops_per_sample > 1.3 * \
        base_cost.flops_per_sample  # what the block saves: magnitude ranking spreads conv2 over every channel


def test_a_lower_loss_replaces_candidate_0_only_beyond_z_standard_errors():
    weights = [1.0, 1.0, 1.0, 1.0]
    noisy = [[2.30, 2.31, 2.29], [2.31, 2.29, 2.31], [2.30, 2.30, 2.29], [2.30, 2.31, 2.30]]  # 2 lowest by noise
    clear = [[2.30, 2.31, 2.20], [2.31, 2.29, 2.22], [2.30, 2.30, 2.21], [2.30, 2.31, 2.19]]  # 2 lowest everywhere
    assert select_candidate(noisy, weights)[0] == 2
    assert select_with_evidence(noisy, weights, 2.0) == (0, 2)  # margin 0.0025 ± 0.0048: candidate 0 stays
    assert select_with_evidence(noisy, weights, 0.0) == (2, 2)  # z = 0: the lowest loss wins, as before
    assert select_with_evidence(clear, weights, 2.0) == (2, 2)  # margin 0.095 ± 0.0029: replaced
    assert select_with_evidence([[2.0, 2.3], [2.1, 2.2]], [1.0, 1.0], 2.0) == (0, 0)  # candidate 0 lowest
    assert [gated_candidate(2, 0.0025, 0.0048, 2.0), gated_candidate(2, 0.0025, 0.0048, 0.0),
            gated_candidate(2, 0.095, 0.0029, 2.0), gated_candidate(2, 0.01, 0.005, 2.0)] == [0, 2, 2, 0]  # tie keeps 0
    assert select_with_evidence([[2.3, 2.2]], [1.0], 2.0) == (1, 1)  # one client: no spread, any lead counts


def test_perturbed_counts_sum_exactly_within_layer_bounds():
    rng = np.random.default_rng(0)
    sizes = {"a": 10, "b": 1000, "c": 50_000, "d": 7}
    for _ in range(200):
        base = {k: int(rng.integers(1, v + 1)) for k, v in sizes.items()}
        counts = perturbed_counts(base, sizes, rng, spread=float(rng.uniform(0, 2)))
        assert sum(counts.values()) == sum(base.values())
        assert all(1 <= counts[k] <= sizes[k] for k in sizes)


def test_perturbation_keeps_a_nearly_dense_layer_nearly_dense():
    # FedTiny at 0.01 on the FL CNN: SynFlow keeps 97% of conv1 and ~0.5% of fc1
    sizes = {"conv1": 800, "conv2": 51_200, "fc1": 1_605_632, "fc2": 5_120}
    base = {"conv1": 776, "conv2": 6_000, "fc1": 8_000, "fc2": 1_850}
    rng = np.random.default_rng(1)
    drawn = [perturbed_counts(base, sizes, rng, spread=0.5) for _ in range(50)]
    assert min(c["conv1"] for c in drawn) >= 0.85 * 800
    ratios = [c["fc1"] / base["fc1"] for c in drawn]
    assert max(ratios) / min(ratios) > 1.5  # sparse layers really are perturbed


def _digits_batch(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return LabeledArrays(rng.normal(size=(n, *SHAPE)).astype(np.float32), rng.integers(0, 10, n).astype(np.int64))


def test_bn_reestimation_changes_only_running_statistics():
    model = build_model("digits-cnn-bn", SHAPE, seed=1)
    before = copy.deepcopy(model.state_dict())
    params_before = {k: v.detach().clone() for k, v in model.named_parameters()}
    data = _digits_batch()
    stats = reestimate_bn(model, data, batch_size=16)
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")
                           for k in changed)
    assert any(k.endswith("running_mean") for k in changed) and any(k.endswith("running_var") for k in changed)
    assert all(torch.equal(p, params_before[k]) and p.grad is None for k, p in model.named_parameters())
    assert set(stats) == {k for k in before if k.endswith(("running_mean", "running_var"))}
    # Cumulative average over all batches = the statistics of the whole set at the first BN's input.
    conv = model.features[0]
    with torch.no_grad():
        pre = conv(torch.from_numpy(data.x))
    assert np.allclose(stats["features.1.running_mean"], pre.mean((0, 2, 3)).numpy(), atol=1e-5)


def test_pooled_statistics_equal_those_of_the_union():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1.0, 2.0, (300, 4)), rng.normal(-1.0, 0.5, (100, 4))
    uploads = [{"bn.running_mean": x.mean(0).astype(np.float32), "bn.running_var": x.var(0).astype(np.float32)}
               for x in (a, b)]
    pooled = pool_statistics(uploads, [300, 100])
    union = np.concatenate([a, b])
    assert np.allclose(pooled["bn.running_mean"], union.mean(0), atol=1e-5)
    assert np.allclose(pooled["bn.running_var"], union.var(0), atol=1e-4)


def test_selection_takes_the_lowest_sample_weighted_loss():
    losses = [[1.0, 2.0, 0.5], [1.0, 0.1, 3.0]]
    chosen, mean = select_candidate(losses, [3.0, 1.0])
    assert np.allclose(mean, [1.0, 1.525, 1.125]) and chosen == 0
    assert select_candidate(losses, [1.0, 3.0])[0] == 1
    assert select_candidate([[1.0, 1.0]], [1.0])[0] == 0  # ties: lowest index


def test_loss_margins_are_paired_differences_with_their_standard_error():
    losses = [[1.0, 1.5, 0.9], [2.0, 2.1, 2.3], [1.0, 1.3, 1.1], [3.0, 3.1, 2.9]]
    margins = loss_margins(losses, [1.0, 1.0, 1.0, 1.0], chosen=0)
    assert margins[0] == (0.0, 0.0)
    diffs = np.array([0.5, 0.1, 0.3, 0.1])  # candidate 1 − candidate 0, client by client
    assert np.isclose(margins[1][0], diffs.mean()) and np.isclose(margins[1][1], diffs.std(ddof=1) / 2)
    assert margins[1][0] > 2 * margins[1][1]  # consistently worse on every client: beyond noise
    assert abs(margins[2][0]) < 2 * margins[2][1]  # better on some clients, worse on others: within noise
    weighted = loss_margins(losses, [3.0, 1.0, 0.0, 0.0], chosen=0)
    assert np.isclose(weighted[1][0], 0.75 * 0.5 + 0.25 * 0.1)
    assert loss_margins([[1.0, 2.0]], [1.0], chosen=1) == [(-1.0, 0.0), (0.0, 0.0)]


def test_cosine_k_schedule_and_adjustment_rounds():
    assert cosine_k(0, 20, 0.3, 1000) == 300
    assert cosine_k(10, 20, 0.3, 1000) == 150
    assert cosine_k(20, 20, 0.3, 1000) == 0
    ks = [cosine_k(t, 20, 0.3, 1000) for t in range(21)]
    assert all(x >= y for x, y in zip(ks, ks[1:], strict=False))
    assert cosine_k(25, 20, 0.3, 1000) == 0
    assert adjustment_rounds(3, 10) == [3, 6, 9]
    assert adjustment_rounds(0, 10) == [] and adjustment_rounds(3, 0) == []


def test_layer_order_output_first_one_layer_per_step_or_all():
    names = ["conv1", "conv2", "fc1", "fc2"]
    assert [layers_to_adjust(names, s, "output-first") for s in range(5)] == [
        ["fc2"], ["fc1"], ["conv2"], ["conv1"], ["fc2"]]
    assert layers_to_adjust(names, 3, "all") == names
    with pytest.raises(ValueError):
        layers_to_adjust(names, 0, "input-first")


def test_grow_and_prune_keeps_density_never_grows_active_positions():
    rng = np.random.default_rng(3)
    for _ in range(50):
        shape = (int(rng.integers(2, 30)), int(rng.integers(2, 30)))
        mask = rng.random(shape) < rng.uniform(0.05, 0.6)
        mask.flat[0] = True
        weights = np.where(mask, rng.normal(size=shape), 0).astype(np.float32)
        score = np.abs(rng.normal(size=shape)) * (rng.random(shape) < 0.5)
        k = int(rng.integers(0, mask.sum() + 3))
        new_w, new_mask, moved = grow_and_prune(weights, mask, score, k)
        assert new_mask.sum() == mask.sum()  # density constant
        assert not mask.reshape(-1)[moved.grown].any()  # grown positions were all pruned before
        assert mask.reshape(-1)[moved.pruned].all()  # pruned positions were all active before
        assert (score.reshape(-1)[moved.grown] > 0).all()
        assert (new_w.reshape(-1)[moved.grown] == 0).all() and not new_w[~new_mask].any()
        if moved.moved:
            kept_old = np.flatnonzero(mask.reshape(-1) & new_mask.reshape(-1))
            assert np.abs(weights.reshape(-1)[moved.pruned]).max() <= np.abs(weights.reshape(-1)[kept_old]).min()
            pruned_before = np.flatnonzero(~mask.reshape(-1))
            not_grown = np.setdiff1d(pruned_before, moved.grown)
            if not_grown.size:
                assert score.reshape(-1)[moved.grown].min() >= score.reshape(-1)[not_grown].max()
        assert moved.moved <= min(k, int((score[~mask] > 0).sum()), int(mask.sum()) - 1)


def test_aggregate_magnitudes_is_the_weighted_mean_of_sparse_uploads():
    out = aggregate_magnitudes([(np.array([0, 3]), np.array([1.0, 2.0])), (np.array([3]), np.array([4.0]))],
                               [1.0, 3.0], 5)
    assert np.allclose(out, [0.25, 0, 0, 0.5 + 3.0, 0])


def test_top_k_upload_is_exactly_the_coded_pairs():
    rng = np.random.default_rng(5)
    magnitude = np.abs(rng.normal(size=(512, 3136))).astype(np.float32)
    magnitude[rng.random(magnitude.shape) < 0.95] = 0.0  # active positions carry no gradient
    k = 4_000
    pairs = top_k_pairs(magnitude, k)
    nonzero = np.flatnonzero(pairs)
    assert nonzero.size == k
    assert pairs.reshape(-1)[nonzero].min() >= np.delete(magnitude.reshape(-1), nonzero).max()
    reference = {"fc1": magnitude == 0}
    blob = encode({}, reference=reference, manifest=Manifest(kind="fedtiny-topk"), pairs={"fc1": pairs})
    (entry,) = pb.Payload.FromString(pb.Envelope.FromString(blob).body).pairs
    assert len(entry.values) == 4 * k
    deltas = np.diff(nonzero, prepend=-1) - 1
    from fedprune.protos.codec import pairs_cost, varint_encode

    assert entry.indices == varint_encode(deltas)  # indices: delta varints, nothing else
    added, coded = pairs_cost(blob)
    assert coded == len(entry.indices) + len(entry.values) and added - coded <= 12 < 0.01 * coded
    assert np.array_equal(decode(blob, reference=reference).pairs["fc1"], pairs)
    few = np.zeros((10, 10), np.float32)
    few.flat[[3, 7]] = [1.0, 2.0]
    assert np.flatnonzero(top_k_pairs(few, 5)).tolist() == [3, 7]  # never pads with zero-magnitude pairs


@pytest.mark.parametrize("backend", [Backend.MASKED, Backend.COMPACT, Backend.CSR])
def test_gradient_tap_on_sparse_kernels_equals_the_dense_layers_gradient(backend):
    model = build_model("digits-cnn-bn", SHAPE, seed=2)
    rng = np.random.default_rng(3)
    mask = {n: rng.random(p.shape) < 0.3 for n, p in model.named_parameters() if n in prunable_names(model)}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name in mask:
                param.mul_(torch.from_numpy(mask[name]))
    dense = copy.deepcopy(model)
    x, y = torch.randn(3, 16, *SHAPE), torch.randint(0, 10, (3, 16))
    dense.train()
    for xb, yb in zip(x, y, strict=True):  # two ReLUs run in place right after tapped layers
        torch.nn.functional.cross_entropy(dense(xb), yb).backward()
    tap = PrunedGradientTap(model, list(mask))
    backends = {n: Backend.MASKED if backend == Backend.CSR and n.startswith("features") else backend for n in mask}
    sparsify(model, mask, batch=16, training=True, backends=backends)
    tap.attach(model)
    model.train()
    for xb, yb in zip(x, y, strict=True):
        torch.nn.functional.cross_entropy(model(xb), yb).backward()
    tap.detach()
    model(x[0])  # detached: no more batches counted
    grads = dict(dense.named_parameters())
    for name in mask:
        assert tap.batches[name] == 3
        torch.testing.assert_close(tap.sums[name], grads[name].grad, rtol=1e-5, atol=1e-6)
    magnitudes = tap.mean_magnitudes(mask)
    for name in mask:
        expected = np.where(mask[name], 0.0, grads[name].grad.abs().numpy() / 3)
        np.testing.assert_allclose(magnitudes[name], expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("backend", [Backend.COMPACT, Backend.CSR])
def test_buffered_tap_with_room_for_every_pruned_position_equals_the_dense_tap(backend, monkeypatch):
    """Formed a few output rows at a time (tiny chunks force many per layer), the buffered sums are exact."""
    monkeypatch.setattr(progressive, "TAP_CHUNK_ELEMENTS", 40)
    model = build_model("digits-cnn-bn", SHAPE, seed=2)
    rng = np.random.default_rng(4)
    mask = {n: rng.random(p.shape) < 0.3 for n, p in model.named_parameters() if n in prunable_names(model)}
    x, y = torch.randn(3, 16, *SHAPE), torch.randint(0, 10, (3, 16))
    magnitudes, held = [], []
    for buffered in (False, True):
        trained = copy.deepcopy(model)
        capacities = {n: int((~m).sum()) for n, m in mask.items()} if buffered else None
        tap = PrunedGradientTap(trained, list(mask), capacities, mask)
        backends = {n: Backend.MASKED if backend == Backend.CSR and n.startswith("features") else backend
                    for n in mask}
        sparsify(trained, mask, batch=16, training=True, backends=backends)
        tap.attach(trained)
        trained.train()
        for xb, yb in zip(x, y, strict=True):
            torch.nn.functional.cross_entropy(trained(xb), yb).backward()
        magnitudes.append(tap.mean_magnitudes(mask))
        held.append(tap.held_bytes())
        if buffered:
            assert not tap.sums and tap.peak_chunk_bytes <= 4 * max(40, max(m[0].size for m in mask.values()))
    for name in mask:
        np.testing.assert_allclose(magnitudes[1][name], magnitudes[0][name], rtol=1e-5, atol=1e-7)
    assert held[0] == 4 * sum(m.size for m in mask.values())


def test_buffered_tap_keeps_at_most_its_capacity_and_finds_persistent_gradients():
    kept = torch.zeros(60, dtype=torch.bool)
    kept[[0, 1]] = True  # kept positions never enter the buffer
    buffer = TopKBuffer(kept, capacity=6)
    rng = np.random.default_rng(0)
    for _ in range(25):
        batch = torch.from_numpy(rng.normal(0.0, 0.3, 60).astype(np.float32))
        batch[[7, 41]] += torch.tensor([1.0, -1.0])  # a steady signal at two pruned positions
        batch[[0, 1]] = 50.0
        buffer.add_batch((start, batch[start:start + 16].clone()) for start in range(0, 60, 16))  # as the tap
        assert buffer.index.numel() <= 6 and not set(buffer.index.tolist()) & {0, 1}
    sums = buffer.dense(60)
    assert set(sums.abs().topk(2).indices.tolist()) == {7, 41}
    assert sums[7] > 15 and sums[41] < -15
    assert buffer.held_bytes() == 6 * (8 + 4)


def test_a_malformed_adjustment_request_is_a_clear_error():
    mask = {"fc.weight": np.ones((2, 3), bool)}
    assert requested_adjustment({}, mask) == {}
    assert requested_adjustment({"adjust-layers": ["fc.weight"], "adjust-k": [2]}, mask) == {"fc.weight": 2}
    for bad in ({"adjust-layers": ["fc.weight"]}, {"adjust-layers": ["other.weight"], "adjust-k": [2]},
                {"adjust-layers": ["fc.weight"], "adjust-k": [0]}):
        with pytest.raises(ValueError, match="adjustment names unknown layers or bad K"):
            requested_adjustment(bad, mask)
    adjust = {"fc.weight": 2, "out.weight": 3}
    assert requested_capacities({}, adjust) == {}
    assert requested_capacities({"adjust-buffer": [8, 0]}, adjust) == {"fc.weight": 8}  # 0: dense tap
    for bad in ({"adjust-buffer": [8]}, {"adjust-buffer": [8, -1]}):
        with pytest.raises(ValueError, match="does not match the adjusted layers"):
            requested_capacities(bad, adjust)


def test_budget_arithmetic():
    model = build_model("digits-cnn-bn", SHAPE, seed=0)
    cost = ModelCost.of(model, SHAPE)
    assert cost.sizes == {"features.0.weight": 144, "features.3.weight": 4608, "classifier.1.weight": 32768,
                          "classifier.3.weight": 640}
    assert cost.positions == {"features.0.weight": 64, "features.3.weight": 64, "classifier.1.weight": 1,
                              "classifier.3.weight": 1}
    assert cost.geometry.dense_values == 16 + 32 + 64 + 10 + 2 * (16 + 32)
    assert cost.geometry.buffer_bytes == 4 * 2 * (16 + 32) + 8 * 2  # running statistics, num_batches_tracked
    mask = data_free_mask(model, "magnitude", 0.2, 0)
    weights = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    full = cost.training_cost(mask, 32)
    assert ratio_for_budget(cost, mask, weights, Budget(), batch=32) == 1.0
    budget = Budget(memory_mb=full.state_bytes / 2 / 1e6)
    ratio = ratio_for_budget(cost, mask, weights, budget, batch=32)
    assert 0 < ratio < 1
    assert cost.training_cost(nested_submask(mask, weights, ratio), 32).state_bytes <= budget.memory_mb * 1e6
    assert cost.training_cost(nested_submask(mask, weights, ratio + 0.01), 32).state_bytes > budget.memory_mb * 1e6
    flops_budget = Budget(flops_per_sample=full.flops_per_sample / 4)
    ratio = ratio_for_budget(cost, mask, weights, flops_budget, batch=32)
    assert cost.training_cost(nested_submask(mask, weights, ratio), 32).flops_per_sample <= \
        flops_budget.flops_per_sample
    with pytest.raises(BudgetError, match="cannot be met by any density"):
        ratio_for_budget(cost, mask, weights, Budget(memory_mb=0.001), batch=32)
    with pytest.raises(BudgetError):
        ratio_for_budget(cost, mask, weights, Budget(flops_per_sample=100), batch=32)
    assert parse_budget_tiers("0.5:2e6, inf:1e7") == [Budget(0.5, 2e6), Budget(math.inf, 1e7)]
    assert parse_budget_tiers("") == []
    for bad in ("0.5", "x:1", "-1:5", "0:1"):
        with pytest.raises(ValueError):
            parse_budget_tiers(bad)


def test_nested_submask_keeps_the_largest_global_weights_of_each_layer():
    rng = np.random.default_rng(2)
    mask = {"a": rng.random((20, 20)) < 0.3, "b": rng.random((8,)) < 0.5}
    weights = {k: np.where(m, rng.normal(size=m.shape), 0) for k, m in mask.items()}
    sub = nested_submask(mask, weights, 0.5)
    for k in mask:
        assert not (sub[k] & ~mask[k]).any() and sub[k].sum() == max(1, int(mask[k].sum() * 0.5))
        assert np.abs(weights[k][sub[k]]).min() >= np.abs(weights[k][mask[k] & ~sub[k]]).max()
    assert nested_submask(mask, weights, 1.0) is mask


def test_fedtiny_options_are_validated():
    good = RunSettings(strategy="fedtiny", model="digits-cnn-bn", dataset="digits", density=0.1)
    good.validate(check_out_dir=False)
    cases = {"candidates": 0, "adjust_every": -1, "adjust_until": -2, "adjust_alpha": 0.0, "candidate_spread": -1.0,
             "candidate_ranking": "synflow", "gradient_tap": "sparse",
             "adjust_layers": "random", "budget_tiers": "1:2:3"}
    import dataclasses

    for field, value in cases.items():
        with pytest.raises(ConfigError) as info:
            dataclasses.replace(good, **{field: value}).validate(check_out_dir=False)
        assert info.value.option == field.replace("_", "-") and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="BatchNorm") as info:
        dataclasses.replace(good, model="digits-cnn").validate(check_out_dir=False)
    assert info.value.option == "model"
    dataclasses.replace(good, model="digits-cnn", candidates=1).validate(check_out_dir=False)


def test_cli_refuses_fedtiny_configurations_with_one_line(tmp_path, capsys):
    from fedprune.cli import EXIT_USAGE, main

    common = ["simulate", "--strategy", "fedtiny", "--dataset", "digits", "--density", "0.1", "--out", str(tmp_path)]
    assert main(common) == EXIT_USAGE  # digits-cnn has no BatchNorm
    assert main([*common, "--model", "digits-cnn-bn", "--budget-tiers", "0.0001:inf"]) == EXIT_USAGE
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "--model" in lines[0] and "--budget-tiers" in lines[1]
    assert "cannot be met by any density" in lines[1]
