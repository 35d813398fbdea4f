"""HideNseek's coded downlink (``--score-step``): global scores as grid levels, coded whole or as changes to the
node's copy, digest-checked; a node whose copy differs is refused and gets them whole next time."""

import dataclasses

import numpy as np
import pytest
from fedprune.client.app import app as client_app
from fedprune.client.hidenseek import STATE_LEVELS, STATE_ROUND_DENSE, STATE_SETUP, STATE_SIGMA, Setup
from fedprune.protos import fedprune_wire_pb2 as pb
from fedprune.protos.codec import decode, encode
from fedprune.protos.contract import LEVELS, Record
from fedprune.protos.flower_records import payload_of
from fedprune.protos.wire_size import content_bytes
from fedprune.pruning.score_levels import from_levels, initial_levels, level_steps, signs_of_levels, to_levels
from fedprune.server.run_config import ConfigError
from fedprune.server.runner import run_federation
from fedprune.strategies.hidenseek import HideNseek
from flwr.app import ConfigRecord

from tests.inprocess_grid import InProcessGrid


@pytest.fixture
def hns(digits_settings):
    return dataclasses.replace(digits_settings, strategy="hidenseek", density=0.3, score="magnitude", rounds=3,
                               num_clients=3, clients_per_round=3, personal_eval_every=2, score_lr=0.01,
                               aggregation="ternary-delta")


def _run(settings, **kwargs):
    grid = InProcessGrid(client_app, settings.num_clients, settings.to_run_config(), **kwargs)
    return run_federation(grid, settings, progress=lambda line: None), grid


def _run_recorded(settings):
    """Run in process, recording every message the server sent and every reply it got."""
    sent, replies = [], []
    grid = InProcessGrid(client_app, settings.num_clients, settings.to_run_config(),
                         fail_nodes=lambda node, message: sent.append(message) and False,
                         tamper=lambda node, reply: replies.append(reply) or reply)
    return run_federation(grid, settings, progress=lambda line: None), grid, sent, replies


def _node_setup(grid):
    """The setup the first node holds (digits-cnn inputs)."""
    return Setup(grid.contexts[grid.node_ids[0]].state.config_records[STATE_SETUP]["payload"], (1, 8, 8), 10)


def test_levels_rebuild_within_half_a_step_with_the_sign():
    rng = np.random.default_rng(0)
    magnitude = {"a": np.abs(rng.normal(size=500)).astype(np.float32), "b": np.zeros(0, np.float32)}
    scores = {"a": rng.normal(size=500).astype(np.float32) * 3, "b": np.zeros(0, np.float32)}
    scores["a"][:5] = 0.0
    steps = level_steps(magnitude, 0.25)
    levels = to_levels(scores, steps)
    rebuilt = from_levels(levels, steps)
    assert levels["a"].dtype == np.int32
    assert np.all(np.abs(rebuilt["a"] - scores["a"]) <= steps["a"][0] / 2 * (1 + 1e-6))
    assert np.array_equal(signs_of_levels(levels)["a"], np.where(scores["a"] >= 0, 1, -1))
    assert np.array_equal(np.sign(rebuilt["a"]), signs_of_levels(levels)["a"])  # never 0


def test_level_downlink_is_coded_smaller_and_every_round_trains(hns):
    full, _ = _run(dataclasses.replace(hns, score_step=0.0, mask_transfer="send"))
    coded, grid = _run(dataclasses.replace(hns, score_step=0.25, mask_transfer="send"))
    assert coded["status"] == full["status"] == "completed"
    assert all(e["clients_failed"] == 0 and e["aggregated"] for e in coded["rounds"])

    def down(doc, r):
        return sum(c["downlink_bytes"] for c in doc["rounds"][r]["clients"])

    assert all(down(coded, r) < 0.35 * down(full, r) for r in range(3))
    assert down(coded, 2) < down(coded, 0)  # later rounds: changes to each node's copy, no setup
    assert {STATE_LEVELS} <= set(next(iter(grid.contexts.values())).state.config_records)


def test_a_node_whose_levels_differ_is_refused_then_sent_them_whole(hns):
    victim = []

    def corrupt_after_round_one(node, reply):
        if not victim and reply.metadata.message_type == "train":
            victim.append(node)
            context = grid_box[0].contexts[node]
            levels = decode(context.state.config_records[STATE_LEVELS]["payload"]).tensors
            name = sorted(levels)[0]
            levels[name] = levels[name].copy()
            levels[name][0] += 1
            context.state[STATE_LEVELS] = ConfigRecord({"payload": encode(levels)})
        return reply

    grid_box = []
    settings = dataclasses.replace(hns, score_step=0.25, rounds=3, personal_eval_every=0)
    grid = InProcessGrid(client_app, settings.num_clients, settings.to_run_config(), tamper=corrupt_after_round_one)
    grid_box.append(grid)
    doc = run_federation(grid, settings, progress=lambda line: None)
    first, second, third = doc["rounds"]
    assert first["clients_failed"] == 0 and third["clients_failed"] == 0
    failed = [c for c in second["clients"] if c["failed"]]
    assert [c["node_id"] for c in failed] == victim
    assert "reference" in str(second).lower() or "digest" in str(second).lower()


def test_score_step_applies_only_to_score_downlink_rules(hns):
    vote = dataclasses.replace(hns, aggregation="vote", score_step=0.25)
    vote.validate()
    assert vote.resolved_score_step() == 0.0 and dataclasses.replace(hns, score_step=0.5).resolved_score_step() == 0.5
    with pytest.raises(ConfigError, match="score-step"):
        dataclasses.replace(hns, score_step=-1.0).validate()


def test_first_levels_are_coded_against_the_initial_scores_grid(hns):
    """A node's first payload is relative to the levels of sign(θ0)|θ0|, which it computes itself."""
    settings = dataclasses.replace(hns, score_step=0.25, rounds=1, personal_eval_every=0)
    doc, grid, sent, _ = _run_recorded(settings)
    assert doc["status"] == "completed" and doc["rounds"][0]["clients_failed"] == 0
    train = [m for m in sent if m.metadata.message_type == "train"]
    setup = _node_setup(grid)
    start = initial_levels(setup.magnitude, setup.initial_signs, level_steps(setup.magnitude, 0.25),
                           settings.score_grid)
    start = {LEVELS + k: v for k, v in start.items()}
    assert len(train) == settings.clients_per_round
    for message in train:
        blob = payload_of(message)
        with pytest.raises(ValueError, match="reference"):
            decode(blob)  # relative to a reference: not decodable without it
        tensors = decode(blob, reference=start).tensors  # against exactly that one (its digest is checked)
        assert len(blob) < len(encode(tensors))  # smaller than the same tensors sent whole


def test_evaluation_messages_carry_a_digest_not_the_model(hns):
    settings = dataclasses.replace(hns, score_step=0.25, rounds=2, personal_eval_every=2)
    doc, _, sent, _ = _run_recorded(settings)
    evaluation = [m for m in sent if m.metadata.message_type == "evaluate"]
    assert len(evaluation) == settings.clients_per_round
    assert all(content_bytes(m) < 400 for m in evaluation)
    fed = doc["rounds"][1]["federated_evaluation"]
    assert fed["clients"] == settings.clients_per_round and 0 < fed["global-accuracy"] <= 1


def test_a_node_holding_another_round_model_refuses_to_evaluate_it(hns):
    def corrupt_sigma(node, reply):
        if reply.metadata.message_type == "train" and node == grid.node_ids[0]:
            context = grid.contexts[node]
            sigma = decode(context.state.config_records[STATE_SIGMA]["payload"]).tensors
            name = sorted(sigma)[0]
            sigma[name] = -sigma[name]
            context.state[STATE_SIGMA] = ConfigRecord({"payload": encode(sigma)})
        return reply

    settings = dataclasses.replace(hns, score_step=0.25, rounds=2, personal_eval_every=2)
    grid = InProcessGrid(client_app, settings.num_clients, settings.to_run_config(), tamper=corrupt_sigma)
    doc = run_federation(grid, settings, progress=lambda line: None)
    assert doc["status"] == "completed"
    assert doc["rounds"][1]["federated_evaluation"]["clients"] == settings.clients_per_round - 1


def test_dense_parameters_travel_as_float16_both_ways_in_the_coded_exchange(hns):
    settings = dataclasses.replace(hns, score_step=0.25, rounds=2, personal_eval_every=0)
    doc, grid, sent, replies = _run_recorded(settings)
    assert doc["status"] == "completed" and all(e["clients_failed"] == 0 for e in doc["rounds"])
    setup = _node_setup(grid)
    dense_names = [k for k in setup.theta0 if k not in setup.mask]
    for message in [m for m in sent + replies if m.metadata.message_type == "train"]:
        blob = payload_of(message)
        tensors = {t.name: t for t in _payload_tensors(blob)}
        assert all(tensors[k].encoding == pb.DENSE_F16 for k in dense_names)
    later = [m for m in sent if m.metadata.message_type == "train"][-1]
    held = decode(grid.contexts[later.metadata.dst_node_id].state.config_records[STATE_ROUND_DENSE]["payload"])
    assert all(np.array_equal(v, v.astype(np.float16).astype(np.float32)) for v in held.tensors.values())
    assert set(held.tensors) == set(dense_names)


def _payload_tensors(blob):
    envelope = pb.Envelope.FromString(blob)
    return pb.Payload.FromString(envelope.body).tensors


def test_sqrt_grid_levels_keep_the_sign_and_bin_and_are_finer_at_zero():
    rng = np.random.default_rng(1)
    magnitude = {"a": np.abs(rng.normal(size=2000)).astype(np.float32)}
    scores = {"a": (rng.normal(size=2000) * 3).astype(np.float32)}
    scores["a"][:4] = [0.0, -0.0, 1e-9, -1e-9]
    steps = level_steps(magnitude, 0.25)
    step = float(steps["a"][0])
    q = to_levels(scores, steps, "sqrt")["a"]
    rebuilt = from_levels({"a": q}, steps, "sqrt")["a"]
    z = scores["a"].astype(np.float64)
    assert np.array_equal(q >= 0, z >= 0) and np.array_equal(rebuilt >= 0, z >= 0)
    k = np.where(q >= 0, q, -q - 1).astype(np.float64)
    assert np.all((k**2 * step <= np.abs(z) * (1 + 1e-6)) & (np.abs(z) < (k + 1) ** 2 * step * (1 + 1e-6)))
    assert np.all((k**2 * step <= np.abs(rebuilt) + 1e-9) & (np.abs(rebuilt) < (k + 1) ** 2 * step))
    near = np.abs(z) < step  # the innermost bin is as fine as the uniform grid's
    assert np.all(np.abs(rebuilt[near] - z[near]) <= step * (1 + 1e-6))
    uniform = to_levels(scores, steps)["a"]
    assert len(np.unique(q)) < len(np.unique(uniform))  # far from zero it is coarser: fewer levels in use


def test_sqrt_grid_trains_and_the_client_rebuilds_the_servers_levels(hns):
    doc, _ = _run(dataclasses.replace(hns, score_step=0.25, score_grid="sqrt"))
    assert doc["status"] == "completed" and all(e["clients_failed"] == 0 and e["aggregated"] for e in doc["rounds"])
    with pytest.raises(ConfigError, match="score-grid"):
        dataclasses.replace(hns, score_grid="cubic").validate()


@pytest.mark.parametrize(("key", "value", "reason"), [("score-grid", "cubic", "score grid 'cubic'"),
                                                       ("score-levels", -0.5, "score step -0.5"),
                                                       ("score-levels", float("nan"), "score step nan")])
def test_a_node_refuses_a_level_config_it_cannot_rebuild(hns, monkeypatch, key, value, reason):
    """A hostile or broken server config never makes a node train on scores it cannot rebuild exactly."""
    original = HideNseek.configure_train

    def broken(self, *args, **kwargs):
        messages = list(original(self, *args, **kwargs))
        for message in messages:
            message.content.config_records[Record.CONFIG][key] = value
        return messages

    monkeypatch.setattr(HideNseek, "configure_train", broken)
    doc, _ = _run(dataclasses.replace(hns, score_step=0.25, rounds=1, personal_eval_every=0))
    entry = doc["rounds"][0]
    assert entry["clients_failed"] == hns.clients_per_round and reason in str(entry)
