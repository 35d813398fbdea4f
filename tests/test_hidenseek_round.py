"""HideNseek end to end on an in-process Grid: state across rounds, bytes, switches, resume."""

import dataclasses

import numpy as np
import pytest
from fedprune.client import hidenseek as hidenseek_client
from fedprune.client.app import app as client_app
from fedprune.client.hidenseek import STATE_SCORES, STATE_SETUP, STATE_SIGMA
from fedprune.protos.flower_records import payload_of
from fedprune.server.runner import run_federation
from flwr.common.serde import recorddict_to_proto

from tests.inprocess_grid import InProcessGrid, full_and_resumed


@pytest.fixture
def hns(digits_settings):
    return dataclasses.replace(digits_settings, strategy="hidenseek", density=0.3, score="magnitude", rounds=3,
                               num_clients=6, clients_per_round=3, personal_eval_every=3, score_lr=0.01)


def _run(settings, **kwargs):
    grid = InProcessGrid(client_app, settings.num_clients, settings.to_run_config(), **kwargs)
    return run_federation(grid, settings, progress=lambda line: None), grid


@pytest.mark.parametrize("aggregation", ["tally", "vote", "score-average", "ternary-delta"])
def test_rounds_complete_and_uplink_is_the_coded_payload(hns, aggregation):
    replies = []
    optimizer = "adam" if aggregation == "tally" else "layer-sgd"
    doc, grid = _run(dataclasses.replace(hns, aggregation=aggregation, score_optimizer=optimizer),
                     tamper=lambda node, reply: replies.append((node, reply)) or reply)
    assert doc["status"] == "completed"
    for entry in doc["rounds"]:
        assert entry["clients_failed"] == 0 and entry["aggregated"]
        assert 0.0 <= entry["flip_rate"] <= 1.0
        payloads = entry["uplink_payload_bytes"]
        for client in entry["clients"]:
            # what the client sent = the codec payload + a fixed record/metric framing
            assert 0 < client["uplink_bytes"] - payloads[str(client["node_id"])] < 400
    train = [r for _, r in replies if r.metadata.message_type == "train"]
    assert all(recorddict_to_proto(r.content).ByteSize() > len(payload_of(r)) for r in train)
    kept = int(round(0.3 * 38_016))  # prunable weights of digits-cnn
    per_client = [c["uplink_bytes"] for e in doc["rounds"] for c in e["clients"]]
    if aggregation == "score-average":
        assert min(per_client) > 4 * kept  # 32 bits per kept weight, recorded honestly
    else:
        assert max(per_client) < kept / 8 + 1000 + 4 * 400  # <= one bit per kept weight (+ dense biases)
    fed = doc["rounds"][2]["federated_evaluation"]
    assert 0 <= fed["personal-accuracy"] <= 1 and 0 <= fed["global-accuracy"] <= 1


def test_client_state_survives_and_returning_nodes_get_no_setup(hns):
    settings = dataclasses.replace(hns, num_clients=3, clients_per_round=3, rounds=3, personal_eval_every=0,
                                   mask_transfer="send")
    doc, grid = _run(settings)
    for context in grid.contexts.values():
        assert {STATE_SETUP, STATE_SIGMA, STATE_SCORES} <= set(context.state.config_records)
    down = [[c["downlink_bytes"] for c in e["clients"]] for e in doc["rounds"]]
    assert all(later < first for first, later in zip(down[0], down[1], strict=True))  # setup travels once


def test_mask_recompute_mode_checks_the_digest(hns):
    doc, _ = _run(dataclasses.replace(hns, mask_transfer="recompute", score="synflow"))
    assert doc["status"] == "completed" and all(e["clients_failed"] == 0 for e in doc["rounds"])
    sent = _run(dataclasses.replace(hns, score="synflow", mask_transfer="send", out=hns.out + "-send"))[0]
    assert doc["rounds"][0]["downlink_bytes"] < sent["rounds"][0]["downlink_bytes"]


def test_a_node_that_rebuilds_another_mask_is_sent_the_coded_mask(hns, monkeypatch):
    """Recompute mode across machines whose SynFlow differs: the node refuses once, then gets the mask."""
    rebuilt = hidenseek_client._recomputed_mask

    def drifted(*args):
        masks = {k: v.copy() for k, v in rebuilt(*args).items()}
        first = sorted(masks)[0]
        masks[first].flat[0] = not masks[first].flat[0]
        return masks

    monkeypatch.setattr(hidenseek_client, "_recomputed_mask", drifted)
    settings = dataclasses.replace(hns, mask_transfer="recompute", num_clients=3, clients_per_round=3,
                                   personal_eval_every=0)
    doc, _ = _run(settings)
    first, second, third = doc["rounds"]
    assert first["clients_failed"] == 3 and "mask digest mismatch" in str(first)
    assert second["clients_failed"] == 0 and third["clients_failed"] == 0 and doc["status"] == "completed"
    sent = _run(dataclasses.replace(settings, mask_transfer="send", out=hns.out + "-send"))[0]
    # the node now trains on the server's mask, sent as in send mode
    assert second["downlink_bytes"] == pytest.approx(sent["rounds"][0]["downlink_bytes"], rel=0.05)


def test_lost_state_is_detected_and_repaired(hns):
    settings = dataclasses.replace(hns, num_clients=3, clients_per_round=3, rounds=4, personal_eval_every=0)
    grid = InProcessGrid(client_app, 3, settings.to_run_config())
    victim = grid.node_ids[1]
    original, calls = grid._deliver, {"n": 0}

    def deliver(message):
        if message.metadata.dst_node_id == victim and message.metadata.message_type == "train":
            calls["n"] += 1
            if calls["n"] == 2:
                grid.contexts[victim].state = type(grid.contexts[victim].state)()
        return original(message)

    grid._deliver = deliver
    doc = run_federation(grid, settings, progress=lambda line: None)
    assert [e["clients_failed"] for e in doc["rounds"]] == [0, 1, 0, 0]
    assert "does not hold" in doc["rounds"][1]["rejected_replies"][0]["reason"]


def test_resume_matches_uninterrupted(hns, tmp_path):
    doc_full, doc_resumed = full_and_resumed(dataclasses.replace(hns, rounds=4, personal_eval_every=0), 2, tmp_path)
    for a, b in zip(doc_full["rounds"], doc_resumed["rounds"], strict=True):
        assert a["accuracy"] == b["accuracy"] and a["flip_rate"] == b["flip_rate"]


def test_personal_dense_params_never_travel(hns):
    averaged, _ = _run(dataclasses.replace(hns, personal_eval_every=0))
    personal, _ = _run(dataclasses.replace(hns, dense_params="personal", personal_eval_every=0,
                                           out=hns.out + "-p"))
    up_a = np.mean([c["uplink_bytes"] for e in averaged["rounds"] for c in e["clients"]])
    up_p = np.mean([c["uplink_bytes"] for e in personal["rounds"] for c in e["clients"]])
    assert up_a - up_p > 2 * 100  # the 16+32+64+10 biases of digits-cnn, as float16 (the coded exchange)
