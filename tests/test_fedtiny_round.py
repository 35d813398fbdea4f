"""FedTiny end to end on an in-process Grid: BN selection, adjustments, hostile replies, budgets."""

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from fedprune.client.app import app as client_app
from fedprune.client.masked_training import STATE_KEY as MASK_STATE
from fedprune.kernels.training_cost import masked_training_cost
from fedprune.models import build_model
from fedprune.protos.codec import WireFormatError, decode
from fedprune.protos.contract import CANDIDATE, candidate_key
from fedprune.protos.flower_records import PAYLOAD_KEY, PAYLOAD_RECORD, payload_of
from fedprune.pruning import progressive
from fedprune.pruning.budgets import BudgetError
from fedprune.pruning.candidates import channel_block
from fedprune.pruning.schedules import data_free_mask
from fedprune.server.checkpoint import read_checkpoint
from fedprune.server.runner import run_federation
from fedprune.strategies import build_strategy
from fedprune.strategies.fedtiny import FedTiny
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from tests.hostile_payloads import encode_unchecked
from tests.inprocess_grid import InProcessGrid, full_and_resumed


@pytest.fixture
def tiny(digits_settings):
    return dataclasses.replace(digits_settings, strategy="fedtiny", model="digits-cnn-bn", density=0.1,
                               score="magnitude", num_clients=6, clients_per_round=3, rounds=3, candidates=3,
                               adjust_every=1, adjust_until=3, adjust_alpha=0.3, lr=0.1)


def _run(settings, **kwargs):
    grid = InProcessGrid(client_app, settings.num_clients, settings.to_run_config(), **kwargs)
    return run_federation(grid, settings, progress=lambda line: None), grid


def _replace_payload(reply, tensors, reference=None, pairs=None):
    content = RecordDict(dict(reply.content.items()))
    blob = encode_unchecked(tensors, reference=reference, pairs=pairs)
    content[PAYLOAD_RECORD] = ConfigRecord({PAYLOAD_KEY: blob})
    reply.content = content
    return reply


def _held_mask(grid, node):
    return decode(grid.contexts[node].state.config_records[MASK_STATE]["payload"]).tensors


def _kind(reply):
    if reply.has_error() or PAYLOAD_RECORD not in reply.content.config_records:
        return None
    try:
        names = decode(payload_of(reply)).tensors
    except WireFormatError:  # training replies are coded against the mask
        return "train"
    if any(k.startswith(CANDIDATE + "/") for k in names):
        return "bn-stats"
    return "train"


def _pairs_in(grid, node, reply):
    """(the tensors of a training reply decoded against the node's mask, its top-K pairs by layer)."""
    decoded = decode(payload_of(reply), reference=_held_mask(grid, node))
    return dict(decoded.tensors), dict(decoded.pairs)


def _selection(settings):
    """Run only the BN selection (prepare_round of round 1) and return (strategy, arrays it installs)."""
    strategy = build_strategy(settings)
    grid = InProcessGrid(client_app, settings.num_clients, settings.to_run_config())
    model = build_model(settings.model, (1, 8, 8), seed=settings.seed)
    arrays = strategy.initialize_arrays(ArrayRecord(model.state_dict()))
    return strategy, strategy.prepare_round(1, arrays, grid), model


def test_selection_installs_the_lowest_loss_candidate_with_pooled_statistics(tiny):
    strategy, arrays, model = _selection(tiny)
    selection = strategy.selection
    assert selection["statistics_replies"] == selection["evaluation_replies"] == 3
    assert len(selection["losses"]) == 3 and selection["selected"] == int(np.argmin(selection["losses"]))
    chosen = strategy.bn_selection.candidates[selection["selected"]]
    assert all(np.array_equal(strategy.mask[k], chosen[k]) for k in chosen)
    theta0 = {k: v.numpy() for k, v in model.state_dict().items()}
    for name, value in theta0.items():
        got = arrays[name].numpy()
        if name in chosen:
            assert np.array_equal(got, value * chosen[name])
        elif name.endswith(("running_mean", "running_var")):
            assert not np.allclose(got, value)  # re-estimated by clients and pooled on the server
        elif not name.endswith("num_batches_tracked"):
            assert np.array_equal(got, value)  # BN weights/biases and conv biases untouched


def test_block_magnitude_candidates_train_within_the_scores_channels(tiny):
    """``--candidate-ranking block-magnitude`` end to end: the installed mask lies inside the channel block of
    the score's own mask, so round 1's clients cost no more FLOPs than that mask; progressive pruning may grow
    the output layer into columns of dead hidden units (their ReLU(bias) is not 0), but never a convolution
    into a channel SynFlow cut (no gradient reaches it), so conv2 stays compact."""
    settings = dataclasses.replace(tiny, candidate_ranking="block-magnitude", score="synflow")
    strategy, _, model = _selection(settings)
    base = data_free_mask(build_model(settings.model, (1, 8, 8), seed=settings.seed), settings.score,
                          settings.density, settings.seed)
    assert all(not (strategy.mask[k] & ~channel_block(base[k])).any() for k in base)
    doc, _ = _run(settings)
    ceiling = masked_training_cost(model, (1, 8, 8), base, batch=settings.batch_size).flops_per_sample
    assert doc["status"] == "completed"
    assert all(c["est_flops_per_sample"] <= ceiling for c in doc["rounds"][0]["client_costs"])
    costs = [c for entry in doc["rounds"] for c in entry["client_costs"]]
    assert len(costs) == 9 and all(c["backends"]["features.3.weight"] == "compact" for c in costs)


def test_a_lower_loss_replaces_candidate_0_only_with_evidence_and_the_report_says_which_was_lowest(tiny):
    """Candidate 0's statistics broken: every client sees it far behind, so with z = 2 the lowest replaces it;
    with an absurd z the same lead is not evidence enough and candidate 0 stays."""
    for z, replaced in ((2.0, True), (1e9, False)):
        doc, _ = _run(dataclasses.replace(tiny, bn_selection_z=z), tamper=_break_candidate(0))
        selection = doc["rounds"][0]["bn_selection"]
        assert selection["lowest_loss"] == int(np.argmin(selection["losses"])) != 0
        assert selection["evidence_z"] == z
        assert selection["selected"] == (selection["lowest_loss"] if replaced else 0)
        assert doc["strategy_report"]["selected_candidate"] == selection["selected"]


def _break_candidate(index):
    def tamper(node, reply):
        if _kind(reply) != "bn-stats":
            return reply
        tensors = dict(decode(payload_of(reply)).tensors)
        for key in list(tensors):
            if key.startswith(f"{CANDIDATE}/{index}/") and key.endswith("running_var"):
                tensors[key] = np.full_like(tensors[key], 1e-4)  # activations blown up ~100x ...
            elif key.startswith(f"{CANDIDATE}/{index}/") and key.endswith("running_mean"):
                tensors[key] = tensors[key] - 10.0  # ... and shifted past every ReLU: huge, confident logits
        return _replace_payload(reply, tensors)
    return tamper


def test_a_candidate_whose_bn_statistics_ruin_accuracy_is_never_selected(tiny):
    clean, _, _ = _selection(tiny)
    best = clean.selection["selected"]
    doc, _ = _run(tiny, tamper=_break_candidate(best))
    selection = doc["rounds"][0]["bn_selection"]
    assert selection["selected"] != best
    assert selection["losses"][best] == max(selection["losses"]) > 2 * min(selection["losses"])
    assert doc["strategy_report"]["selected_candidate"] == selection["selected"]
    # the broken candidate's loss is far above the chosen one's on every client: the report says so
    margins, errors = selection["loss_margins"], selection["loss_margin_stderr"]
    assert margins[selection["selected"]] == 0.0 and margins[best] > 2 * errors[best] > 0
    assert doc["strategy_report"]["selection_beyond_noise"] == selection["beyond_noise"]


def test_adjustments_ride_on_training_keep_density_and_upload_only_coded_pairs(tiny):
    uploads = []

    def tamper(node, reply):
        if _kind(reply) == "train":
            uploads.append(_pairs_in(grid, node, reply)[1])
        return reply

    grid = InProcessGrid(client_app, tiny.num_clients, tiny.to_run_config(), tamper=tamper)
    doc = run_federation(grid, tiny, progress=lambda line: None)
    assert doc["status"] == "completed"
    adjusted = [r for r in doc["rounds"] if "adjustment" in r]
    assert [r["adjustment"]["after_round"] for r in adjusted] == [r["round"] for r in adjusted] == [1, 2]
    assert [list(r["adjustment"]["layers"]) for r in adjusted] == [["classifier.3.weight"], ["classifier.1.weight"]]
    densities = [r["layer_densities"] for r in doc["rounds"]]
    for entry in adjusted:
        for name, layer in entry["adjustment"]["layers"].items():
            assert layer["grown"] == layer["pruned"] <= layer["k"] and layer["grown"] > 0
            assert layer["active"] == round(densities[0][name] * layer["size"])  # density constant
        assert len(entry["adjustment"]["uploads"]) == tiny.clients_per_round
        for upload in entry["adjustment"]["uploads"]:
            assert 0 < upload["pairs"] <= sum(v["k"] for v in entry["adjustment"]["layers"].values())
            # what the pairs add to the training reply: their coded bytes plus a few bytes of framing
            assert upload["coded_pairs_bytes"] < upload["pairs_bytes"] <= upload["coded_pairs_bytes"] + 12
            assert upload["pairs_bytes"] < upload["payload_bytes"] < upload["content_bytes"]
    k_of = {name: layer["k"] for r in adjusted for name, layer in r["adjustment"]["layers"].items()}
    per_round = [uploads[i:i + tiny.clients_per_round] for i in range(0, len(uploads), tiny.clients_per_round)]
    assert [sorted({n for u in rnd for n in u}) for rnd in per_round] == [
        ["classifier.3.weight"], ["classifier.1.weight"], []]  # only in adjusting rounds
    for pairs in per_round[0] + per_round[1]:  # only pairs: never a dense gradient
        (name, grad), = pairs.items()
        assert 0 < np.count_nonzero(grad) <= k_of[name]
    report = doc["strategy_report"]
    assert [a["after_round"] for a in report["adjustments"]] == [1, 2]
    ck = read_checkpoint(Path(f"{tiny.out}/checkpoint.pt"))
    mask = ck["strategy_state"]["mask"]
    for name, m in mask.items():
        assert not ck["arrays"][name].numpy()[~m].any()
    first = build_strategy(tiny)
    assert sum(int(m.sum()) for m in mask.values()) == sum(int(m.sum()) for m in first.mask.values())


def test_tapping_gradients_leaves_the_training_update_unchanged(tiny):
    updates = {}

    def keep(label):
        def tamper(node, reply):
            if _kind(reply) == "train":
                tensors, _ = _pairs_in(grids[label], node, reply)
                updates.setdefault(label, []).append(tensors)
            return reply
        return tamper

    grids = {}
    for label, every in (("tap", 1), ("plain", 0)):
        settings = dataclasses.replace(tiny, rounds=1, candidates=1, adjust_every=every, out=f"{tiny.out}-{label}")
        grids[label] = InProcessGrid(client_app, settings.num_clients, settings.to_run_config(), tamper=keep(label))
        run_federation(grids[label], settings, progress=lambda line: None)
    assert len(updates["tap"]) == len(updates["plain"]) == tiny.clients_per_round
    for tapped, plain in zip(updates["tap"], updates["plain"], strict=True):
        assert tapped.keys() == plain.keys() and all(np.array_equal(tapped[k], plain[k]) for k in plain)


def test_hostile_bn_statistics_and_topk_pairs_are_dropped_with_node_and_reason(tiny):
    victims = {}

    def tamper(node, reply):
        kind = _kind(reply)
        if kind == "bn-stats" and "nan" not in victims:
            victims["nan"] = node
            tensors = dict(decode(payload_of(reply)).tensors)
            key = next(k for k in tensors if k.endswith("running_mean"))
            tensors[key] = np.full_like(tensors[key], np.nan)
            return _replace_payload(reply, tensors)
        if kind == "bn-stats" and "shape" not in victims:
            victims["shape"] = node
            tensors = dict(decode(payload_of(reply)).tensors)
            key = next(k for k in tensors if k.endswith("running_var"))
            tensors[key] = np.ones(3, np.float32)
            return _replace_payload(reply, tensors)
        if kind == "train" and "oversized" not in victims:
            tensors, pairs = _pairs_in(grid, node, reply)
            if pairs:
                victims["oversized"] = node
                (name, grad), = pairs.items()
                pairs[name] = np.ones_like(grad)  # every position: far more than K pairs
                return _replace_payload(reply, tensors, _held_mask(grid, node), pairs)
        if kind == "train" and "active" not in victims:
            tensors, pairs = _pairs_in(grid, node, reply)
            if pairs:
                victims["active"] = node
                (name, grad), = pairs.items()
                forged = grad.copy().reshape(-1)
                forged[np.flatnonzero(forged)[0]] = 0.0  # same number of pairs, one moved onto an active weight
                forged[np.flatnonzero(_held_mask(grid, node)[name])[0]] = 1.0
                pairs[name] = forged.reshape(grad.shape)
                return _replace_payload(reply, tensors, _held_mask(grid, node), pairs)
        return reply

    grid = InProcessGrid(client_app, tiny.num_clients, tiny.to_run_config(), tamper=tamper)
    doc = run_federation(grid, tiny, progress=lambda line: None)
    assert doc["status"] == "completed" and len(victims) == 4
    dropped = [r for entry in doc["rounds"] for r in entry["exchange_rejected_replies"] + entry["rejected_replies"]]
    rejected = {(r["node_id"], r["reason"].split(":")[0]) for r in dropped}
    reasons = [r["reason"] for r in dropped]
    assert sum(len(entry["rejected_replies"]) for entry in doc["rounds"]) == 2  # the two forged updates
    assert (victims["nan"], "fedtiny-bn-statistics payload rejected") in rejected
    assert (victims["shape"], "fedtiny-bn-statistics payload rejected") in rejected
    assert (victims["oversized"], "payload rejected") in rejected
    assert (victims["active"], "payload rejected") in rejected
    assert any("NaN" in r for r in reasons) and any("has shape [3], expected" in r for r in reasons)
    assert any("exceeds the cap" in r or "more than K" in r for r in reasons)
    assert any("report gradients at active positions" in r for r in reasons)
    assert doc["rounds"][0]["bn_selection"]["statistics_replies"] == 1  # 3 sampled, 2 dropped
    assert all(r["aggregated"] for r in doc["rounds"])


def test_budgets_give_each_client_the_density_it_can_afford(tiny):
    settings = dataclasses.replace(tiny, budget_tiers="0.03:inf,inf:inf,inf:3e5", rounds=2, num_clients=6,
                                   clients_per_round=6, candidates=1)
    doc, _ = _run(settings)
    assert doc["status"] == "completed" and doc["strategy_report"]["budgeted_nodes"] == 4
    for entry in doc["rounds"]:
        by_partition = {c["partition_id"]: c for c in entry["client_costs"]}
        full = by_partition[1]["density"]
        assert by_partition[4]["density"] == full
        for pid in (0, 3):
            assert by_partition[pid]["density"] < full
            assert by_partition[pid]["est_param_memory_bytes"] <= 0.03e6 < by_partition[1]["est_param_memory_bytes"]
        for pid in (2, 5):
            assert by_partition[pid]["density"] < full
            assert by_partition[pid]["est_flops_per_sample"] <= 3e5 < by_partition[1]["est_flops_per_sample"]
        uplink = {c["partition_id"]: c["uplink_bytes"] for c in entry["clients"]}
        assert uplink[0] < uplink[1]  # a smaller submodel really travels
        assert entry["client_train_state_bytes"] == max(c["est_param_memory_bytes"] for c in entry["client_costs"])
        assert entry["aggregated"] and entry["clients_failed"] == 0


def test_a_node_budget_no_density_satisfies_is_refused(tiny):
    grid = InProcessGrid(client_app, tiny.num_clients, tiny.to_run_config())
    grid.contexts[grid.node_ids[2]].node_config["memory-budget-mb"] = 0.0001
    with pytest.raises(BudgetError, match=rf"node {grid.node_ids[2]} \(partition 2\).*cannot be met by any density"):
        run_federation(grid, tiny, progress=lambda line: None)


def test_ablations_skip_their_exchanges(tiny):
    no_bn, _ = _run(dataclasses.replace(tiny, candidates=1, out=tiny.out + "-nobn"))
    assert "bn_selection" not in no_bn["rounds"][0] and no_bn["strategy_report"]["selected_candidate"] is None
    no_pp, _ = _run(dataclasses.replace(tiny, adjust_every=0, out=tiny.out + "-nopp"))
    assert all("adjustment" not in r for r in no_pp["rounds"]) and no_pp["strategy_report"]["adjustments"] == []
    assert isinstance(build_strategy(tiny), FedTiny)


def test_default_fedtiny_selects_a_mask_and_does_not_prune_progressively(digits_settings):
    """The defaults carry BN selection but not progressive pruning (it cost accuracy at 30 and 100 rounds)."""
    settings = dataclasses.replace(digits_settings, strategy="fedtiny", model="digits-cnn-bn", density=0.1, rounds=3)
    doc, _ = _run(settings)
    assert doc["status"] == "completed" and doc["config"]["adjust-every"] == 0
    assert "bn_selection" in doc["rounds"][0] and len(doc["rounds"][0]["bn_selection"]["losses"]) == 5
    assert all("adjustment" not in r for r in doc["rounds"]) and doc["strategy_report"]["adjustments"] == []
    assert all(not c["reports_pairs"] for r in doc["rounds"] for c in r["client_costs"])


def test_static_mask_trains_a_batchnorm_model(digits_settings):
    settings = dataclasses.replace(digits_settings, strategy="static-magnitude", model="digits-cnn-bn", density=0.2)
    doc, _ = _run(settings)
    assert doc["status"] == "completed" and all(r["aggregated"] and r["clients_failed"] == 0 for r in doc["rounds"])


def test_candidate_key_round_trips():
    assert candidate_key(3, "features.1.running_mean") == f"{CANDIDATE}/3/features.1.running_mean"


def test_resume_after_an_adjustment_matches_uninterrupted(tiny, tmp_path):
    doc_full, doc_resumed = full_and_resumed(dataclasses.replace(tiny, rounds=4, adjust_until=4), 2, tmp_path)
    assert doc_resumed["status"] == "completed"
    for a, b in zip(doc_full["rounds"], doc_resumed["rounds"], strict=True):
        assert a["accuracy"] == b["accuracy"]
        assert a["layer_densities"] == b["layer_densities"]
        assert a.get("adjustment", {}).get("layers") == b.get("adjustment", {}).get("layers")
    assert doc_resumed["rounds"][0]["bn_selection"]["selected"] == doc_full["rounds"][0]["bn_selection"]["selected"]
    assert any(r.get("adjustment", {}).get("layers") for r in doc_resumed["rounds"][2:])  # adjusted after resuming


def test_a_budget_that_cannot_hold_the_gradient_tap_trains_without_reporting_pairs(tiny):
    """With the dense tap, a node whose budget fits its submodel but not the tap's accumulator is not asked."""
    settings = dataclasses.replace(tiny, rounds=1, candidates=1, clients_per_round=6, num_clients=6,
                                   gradient_tap="dense")
    strategy = build_strategy(settings)
    adjusted = strategy.adjustment_plan(1)
    assert adjusted  # round 1 adjusts the output layer
    need = strategy.submodels.cost.training_cost(strategy.mask, settings.batch_size).state_bytes
    tap = strategy.submodels.cost.tap_memory_bytes(list(adjusted))
    assert tap > 0
    grid = InProcessGrid(client_app, settings.num_clients, settings.to_run_config())
    tight = grid.node_ids[0]
    grid.contexts[tight].node_config["memory-budget-mb"] = (need + tap / 2) / 1e6  # submodel fits, tap does not
    roomy = grid.node_ids[1]
    grid.contexts[roomy].node_config["memory-budget-mb"] = (need + tap) / 1e6  # both fit exactly
    doc = run_federation(grid, settings, progress=lambda line: None)
    assert doc["status"] == "completed"
    costs = {c["node_id"]: c for c in doc["rounds"][0]["client_costs"]}
    assert costs[tight]["density"] == costs[roomy]["density"] == costs[grid.node_ids[2]]["density"]
    assert not costs[tight]["reports_pairs"] and costs[tight]["est_tap_memory_bytes"] == 0
    assert costs[roomy]["reports_pairs"] and costs[roomy]["est_tap_memory_bytes"] == tap
    assert costs[roomy]["est_param_memory_bytes"] + costs[roomy]["est_tap_memory_bytes"] <= (need + tap)
    adjustment = doc["rounds"][0]["adjustment"]
    assert adjustment["nodes_asked"] == 5 and {u["node_id"] for u in adjustment["uploads"]} == set(costs) - {tight}
    assert doc["rounds"][0]["clients_failed"] == 0


def test_auto_tap_gives_a_tight_budget_the_buffered_tap_and_its_pairs_count(tiny, monkeypatch):
    """gradient-tap auto: dense where the budget holds it, buffered (8·K running sums) where only that fits,
    none where neither does; the buffered node's pairs are used like any other."""
    monkeypatch.setattr(progressive, "TAP_CHUNK_ELEMENTS", 64)  # the tiny model's layers are smaller than a chunk
    settings = dataclasses.replace(tiny, rounds=1, candidates=1, clients_per_round=6, num_clients=6,
                                   adjust_layers="all", adjust_alpha=0.02)  # small K: buffers well below dense
    strategy = build_strategy(settings)
    plan = strategy.adjustment_plan(1)
    capacities = {n: progressive.tap_buffer_capacity(k, strategy.mask[n].size) for n, k in plan.items()}
    need = strategy.submodels.cost.training_cost(strategy.mask, settings.batch_size).state_bytes
    dense_tap = strategy.submodels.cost.tap_memory_bytes(list(plan))
    buffered_tap = strategy.submodels.cost.tap_memory_bytes(list(plan), capacities)
    assert 0 < buffered_tap < dense_tap
    uploads = []

    def tamper(node, reply):
        if _kind(reply) == "train":
            uploads.append((node, _pairs_in(grid, node, reply)[1]))
        return reply

    grid = InProcessGrid(client_app, settings.num_clients, settings.to_run_config(), tamper=tamper)
    buffered, none = grid.node_ids[0], grid.node_ids[1]
    grid.contexts[buffered].node_config["memory-budget-mb"] = (need + buffered_tap) / 1e6
    grid.contexts[none].node_config["memory-budget-mb"] = (need + buffered_tap / 2) / 1e6
    doc = run_federation(grid, settings, progress=lambda line: None)
    assert doc["status"] == "completed" and doc["rounds"][0]["clients_failed"] == 0
    costs = {c["node_id"]: c for c in doc["rounds"][0]["client_costs"]}
    assert costs[buffered]["gradient_tap"] == "buffered" and costs[buffered]["est_tap_memory_bytes"] == buffered_tap
    assert costs[none]["gradient_tap"] is None and not costs[none]["reports_pairs"]
    assert {c["gradient_tap"] for n, c in costs.items() if n not in (buffered, none)} == {"dense"}
    sent = dict(uploads)
    assert sent[buffered] and all(np.count_nonzero(v) <= plan[k] for k, v in sent[buffered].items())
    assert not sent[none]
    adjustment = doc["rounds"][0]["adjustment"]
    assert {u["node_id"] for u in adjustment["uploads"]} == set(costs) - {none}


def test_pairs_from_a_node_that_was_not_asked_are_rejected(tiny):
    """A node outside the adjustment (its budget cannot hold the tap) that sends pairs anyway is dropped."""
    settings = dataclasses.replace(tiny, rounds=1, candidates=1, clients_per_round=6, num_clients=6)
    strategy = build_strategy(settings)
    (name,) = strategy.adjustment_plan(1)
    cost = strategy.submodels.cost
    need = cost.training_cost(strategy.mask, settings.batch_size).state_bytes
    budget_mb = (need + cost.tap_memory_bytes([name]) / 2) / 1e6

    def tamper(node, reply):
        if node == grid.node_ids[0] and _kind(reply) == "train":
            tensors, pairs = _pairs_in(grid, node, reply)
            assert not pairs  # the honest client sends none: it was not asked
            held = _held_mask(grid, node)[name]
            forged = np.zeros(held.size, np.float32)
            forged[np.flatnonzero(~held.reshape(-1))[0]] = 1.0
            return _replace_payload(reply, tensors, _held_mask(grid, node), {name: forged.reshape(held.shape)})
        return reply

    grid = InProcessGrid(client_app, settings.num_clients, settings.to_run_config(), tamper=tamper)
    grid.contexts[grid.node_ids[0]].node_config["memory-budget-mb"] = budget_mb
    doc = run_federation(grid, settings, progress=lambda line: None)
    assert doc["status"] == "completed"
    (rejected,) = doc["rounds"][0]["rejected_replies"]
    assert rejected["node_id"] == grid.node_ids[0] and "were not asked for" in rejected["reason"]
    assert doc["rounds"][0]["adjustment"]["nodes_asked"] == 5
