"""Static-mask FedAvg over the wire codec, driven in-process: corrupt payloads, lost state, bytes, masks."""

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from fedprune.client.app import app as client_app
from fedprune.client.masked_training import STATE_KEY as MASK_STATE
from fedprune.models import build_model, prunable_names
from fedprune.protos.codec import decode, encode
from fedprune.protos.flower_records import PAYLOAD_KEY, PAYLOAD_RECORD, payload_of
from fedprune.pruning.scores import SCORES, global_topk_mask
from fedprune.server.checkpoint import read_checkpoint
from fedprune.server.runner import run_federation
from fedprune.strategies import build_strategy
from fedprune.strategies.base import ReplyRejected
from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
from flwr.common.serde import recorddict_to_proto

from tests.inprocess_grid import InProcessGrid


@pytest.fixture
def static_settings(digits_settings):
    return dataclasses.replace(digits_settings, strategy="static-magnitude", density=0.2, rounds=3, lr=0.2)


def _run(settings, **kwargs):
    grid = InProcessGrid(client_app, settings.num_clients, settings.to_run_config(), **kwargs)
    return run_federation(grid, settings, progress=lambda line: None), grid


@pytest.mark.parametrize("score", sorted(SCORES))
@pytest.mark.parametrize("density", [0.001, 0.05, 0.3, 1.0])
def test_global_topk_mask_is_exact_deterministic_and_keeps_every_layer(score, density):
    model = build_model("fl-cnn", (1, 28, 28), seed=3)
    mask = global_topk_mask(SCORES[score](model, 3), density)
    total = sum(m.size for m in mask.values())
    assert sum(int(m.sum()) for m in mask.values()) == max(len(mask), round(density * total))
    assert all(m.any() for m in mask.values())
    again = global_topk_mask(SCORES[score](build_model("fl-cnn", (1, 28, 28), seed=3), 3), density)
    assert all(np.array_equal(mask[k], again[k]) for k in mask)
    assert list(mask) == prunable_names(model)


def test_magnitude_mask_keeps_the_largest_weights():
    model = build_model("digits-cnn", (1, 8, 8), seed=0)
    scores = SCORES["magnitude"](model, 0)
    mask = global_topk_mask(scores, 0.1)
    kept_min = min(float(scores[k][torch.from_numpy(m)].min()) for k, m in mask.items())
    pruned_max = max(float(scores[k][~torch.from_numpy(m)].max()) for k, m in mask.items() if (~m).any())
    assert kept_min >= pruned_max


def test_only_kept_values_travel_and_pruned_weights_stay_zero(static_settings, tmp_path):
    replies = []
    doc, _ = _run(static_settings, tamper=lambda node, reply: replies.append(reply) or reply)
    dense_doc, _ = _run(dataclasses.replace(static_settings, strategy="fedavg", density=1.0,
                                            out=str(tmp_path / "dense")))
    for sparse, dense in zip(doc["rounds"], dense_doc["rounds"], strict=True):
        assert sparse["uplink_bytes"] < 0.3 * dense["uplink_bytes"]
        assert sparse["downlink_bytes"] < 0.35 * dense["downlink_bytes"]
    # Measured uplink per client = serialized content of that client's reply, payload included.
    train_replies = [r for r in replies if PAYLOAD_RECORD in r.content.config_records]
    assert len(train_replies) == 3 * static_settings.clients_per_round
    measured = sorted(c["uplink_bytes"] for r in doc["rounds"] for c in r["clients"])
    assert measured == sorted(recorddict_to_proto(r.content).ByteSize() for r in train_replies)
    assert all(len(payload_of(r)) < recorddict_to_proto(r.content).ByteSize() < len(payload_of(r)) + 200
               for r in train_replies)
    # The mask travels once per node: later downlinks to the same node are smaller.
    first, later = {}, {}
    for entry in doc["rounds"]:
        for c in entry["clients"]:
            (later if c["node_id"] in first else first)[c["node_id"]] = c["downlink_bytes"]
    assert later and all(later[n] < first[n] for n in later)
    ck = read_checkpoint(Path(f"{static_settings.out}/checkpoint.pt"))
    model = build_model("digits-cnn", (1, 8, 8), seed=static_settings.seed)
    mask = global_topk_mask(SCORES["magnitude"](model, static_settings.seed), 0.2)
    for name, m in mask.items():
        assert not ck["arrays"][name].numpy()[~m].any()
        assert ck["arrays"][name].numpy()[m].any()


def _corrupt(reply: Message) -> Message:
    blob = bytearray(payload_of(reply))
    blob[len(blob) // 2] ^= 0x10
    content = RecordDict(dict(reply.content.items()))
    content[PAYLOAD_RECORD] = ConfigRecord({PAYLOAD_KEY: bytes(blob)})
    reply.content = content
    return reply


def test_corrupt_payload_is_dropped_and_the_round_aggregates_the_others(static_settings, caplog):
    victim = {}

    def tamper(node, reply):
        if PAYLOAD_RECORD in reply.content.config_records and not victim:
            victim["node"] = node
            return _corrupt(reply)
        return reply

    doc, _ = _run(static_settings, tamper=tamper)
    first = doc["rounds"][0]
    assert first["aggregated"] and first["clients_failed"] == 1
    (rejected,) = first["rejected_replies"]
    assert rejected["node_id"] == victim["node"] and "payload rejected" in rejected["reason"]
    assert "digest" in rejected["reason"]
    assert any(str(victim["node"]) in rec.getMessage() for rec in caplog.records)
    assert doc["status"] == "completed" and all(r["clients_failed"] == 0 for r in doc["rounds"][1:])


def test_a_node_that_lost_its_mask_gets_it_again(static_settings):
    settings = dataclasses.replace(static_settings, num_clients=4, clients_per_round=4, rounds=4)
    state = {}
    grid = InProcessGrid(client_app, 4, settings.to_run_config())
    lost = grid.node_ids[0]
    original = grid._deliver

    def deliver(message):
        if message.metadata.message_type == "train":
            if message.metadata.dst_node_id == lost:
                state["calls"] = state.get("calls", 0) + 1
                if state["calls"] == 2:  # the node restarted between rounds 1 and 2
                    grid.contexts[lost].state = RecordDict()
        return original(message)

    grid._deliver = deliver
    doc = run_federation(grid, settings, progress=lambda line: None)
    failed = [r["clients_failed"] for r in doc["rounds"]]
    assert failed == [0, 1, 0, 0]  # round 2 fails for that node, round 3 it has the mask again
    reason = doc["rounds"][1]["rejected_replies"][0]["reason"]
    assert "does not hold" in reason or "reference" in reason
    by_node = [next(c for c in r["clients"] if c["node_id"] == lost)["downlink_bytes"] for r in doc["rounds"]]
    assert by_node[2] > by_node[3] and by_node[0] > by_node[3]  # round 3 carried the mask again


def test_a_reply_against_another_mask_is_refused(static_settings):
    other = {}

    def tamper(node, reply):
        if PAYLOAD_RECORD in reply.content.config_records and not other:
            other["node"] = node
            fake_mask = {"features.0.weight": np.ones((16, 1, 3, 3), bool)}
            blob = encode({"x": np.ones(3, np.float32)}, reference=fake_mask)
            content = RecordDict(dict(reply.content.items()))
            content[PAYLOAD_RECORD] = ConfigRecord({PAYLOAD_KEY: blob})
            reply.content = content
        return reply

    doc, _ = _run(static_settings, tamper=tamper)
    reasons = [r["reason"] for r in doc["rounds"][0]["rejected_replies"]]
    assert len(reasons) == 1 and "different reference" in reasons[0]


def test_a_reply_carrying_gradient_pairs_it_was_not_asked_for_is_refused(static_settings):
    """Reference pairs (FedTiny's top-K upload) have no place in static-mask FedAvg: the reply is dropped."""
    victim = {}

    def tamper(node, reply):
        if PAYLOAD_RECORD in reply.content.config_records and not victim:
            victim["node"] = node
            mask = decode(grid.contexts[node].state.config_records[MASK_STATE]["payload"]).tensors
            tensors = decode(payload_of(reply), reference=mask).tensors
            name = sorted(mask)[0]
            pairs = np.zeros(mask[name].shape, np.float32)
            pairs.reshape(-1)[np.flatnonzero(~mask[name].reshape(-1))[0]] = 1.0
            content = RecordDict(dict(reply.content.items()))
            content[PAYLOAD_RECORD] = ConfigRecord(
                {PAYLOAD_KEY: encode(tensors, reference=mask, pairs={name: pairs})})
            reply.content = content
        return reply

    grid = InProcessGrid(client_app, static_settings.num_clients, static_settings.to_run_config(), tamper=tamper)
    doc = run_federation(grid, static_settings, progress=lambda line: None)
    assert doc["status"] == "completed"
    (rejected,) = doc["rounds"][0]["rejected_replies"]
    assert rejected["node_id"] == victim["node"] and "were not asked for" in rejected["reason"]


def test_a_reply_missing_expected_tensors_is_refused_and_the_node_gets_the_mask_again(static_settings):
    """A reply that lacks tensors it was asked for is refused from its headers (not a KeyError after decoding),
    and the server forgets what it believed the node holds, so the node gets the full mask next time."""
    strategy = build_strategy(static_settings)
    grid = InProcessGrid(client_app, static_settings.num_clients, static_settings.to_run_config())
    model = build_model(static_settings.model, (1, 8, 8), seed=static_settings.seed)
    arrays = strategy.initialize_arrays(ArrayRecord(model.state_dict()))
    replies = list(grid.send_and_receive(list(strategy.configure_train(1, arrays, ConfigRecord(), grid))))
    strategy.aggregate_train(1, replies)
    node = replies[0].metadata.src_node_id
    assert strategy.sparse.delivery.holds(node, strategy.mask)
    reply = replies[0]
    mask = decode(grid.contexts[node].state.config_records[MASK_STATE]["payload"]).tensors
    tensors = decode(payload_of(reply), reference=mask).tensors
    dropped = sorted(tensors)[0]
    content = RecordDict(dict(reply.content.items()))
    content[PAYLOAD_RECORD] = ConfigRecord(
        {PAYLOAD_KEY: encode({k: v for k, v in tensors.items() if k != dropped}, reference=mask)})
    reply.content = content
    with pytest.raises(ReplyRejected, match=re.escape(f"lacks expected tensors ['{dropped}']")):
        strategy.check_reply(2, reply)
    assert not strategy.sparse.delivery.holds(node, strategy.mask)
