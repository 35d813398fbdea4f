import numpy as np
import pytest
from fedprune.pruning.aggregation import weighted_mean
from fedprune.strategies.fedavg import DenseFedAvg
from flwr.app import Array, ArrayRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity


@pytest.fixture(autouse=True)
def _identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def _record(**tensors):
    return ArrayRecord({k: Array(np.asarray(v, dtype=np.float32)) for k, v in tensors.items()})


def test_weighted_mean_by_hand():
    a = _record(w=[[1.0, 2.0], [3.0, 4.0]], b=[0.0])
    b = _record(w=[[3.0, 6.0], [9.0, 0.0]], b=[4.0])
    out = weighted_mean([a, b], [1.0, 3.0])
    assert np.allclose(out["w"].numpy(), [[2.5, 5.0], [7.5, 1.0]])
    assert np.allclose(out["b"].numpy(), [3.0])
    assert out["w"].numpy().dtype == np.float32


def test_weighted_mean_rejects_bad_weights():
    with pytest.raises(ValueError):
        weighted_mean([_record(w=[1.0])], [0.0])
    with pytest.raises(ValueError):
        weighted_mean([], [])


class _Grid:
    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return self.nodes


def _reply(to: Message, node: int, arrays: ArrayRecord | None, n: int) -> Message:
    content = RecordDict({"metrics": MetricRecord({"num-examples": n, "train-loss": 1.0})})
    if arrays is not None:
        content["arrays"] = arrays
    reply = Message(content, reply_to=to)
    reply.metadata.__dict__["_src_node_id"] = node
    return reply


def _configured(strategy, arrays, nodes):
    msgs = list(strategy.configure_train(1, arrays, __import__("flwr.app").app.ConfigRecord(), _Grid(nodes)))
    for i, m in enumerate(msgs):
        m.metadata.__dict__["_message_id"] = f"m{i}"
    return msgs


def test_aggregate_train_weighted_and_drops_bad_replies():
    strategy = DenseFedAvg(clients_per_round=4, min_train_nodes=2, seed=0)
    glob = _record(w=[0.0, 0.0])
    msgs = _configured(strategy, glob, [11, 12, 13, 14, 15])
    assert len(msgs) == 4 and all(m.metadata.message_type == MessageType.TRAIN for m in msgs)
    nodes = [m.metadata.dst_node_id for m in msgs]
    replies = [
        _reply(msgs[0], nodes[0], _record(w=[1.0, 1.0]), 1),
        _reply(msgs[1], nodes[1], _record(w=[5.0, 9.0]), 3),
        _reply(msgs[2], nodes[2], _record(w=[np.nan, 0.0]), 100),  # NaN: dropped
        Message(Error(code=1, reason="boom"), reply_to=msgs[3]),  # error reply: dropped
    ]
    replies[3].metadata.__dict__["_src_node_id"] = nodes[3]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert np.allclose(arrays["w"].numpy(), [4.0, 7.0])
    assert metrics["num-examples"] == 4
    rejected = strategy.round_report(1)["rejected_replies"]
    assert sorted(r["node_id"] for r in rejected) == sorted(nodes[2:])
    assert any("NaN" in r["reason"] for r in rejected) and any("boom" in r["reason"] for r in rejected)


def test_wrong_shape_and_missing_weight_are_rejected_and_min_nodes_enforced():
    strategy = DenseFedAvg(clients_per_round=2, min_train_nodes=2, seed=0)
    glob = _record(w=[0.0, 0.0])
    msgs = _configured(strategy, glob, [1, 2])
    replies = [_reply(msgs[0], 1, _record(w=[1.0, 1.0, 1.0]), 1), _reply(msgs[1], 2, _record(w=[1.0, 1.0]), 0)]
    arrays, metrics = strategy.aggregate_train(1, replies)
    assert arrays is None and metrics is None
    reasons = [r["reason"] for r in strategy.round_report(1)["rejected_replies"]]
    assert any("shape" in r for r in reasons) and any("num-examples" in r for r in reasons)


def test_sampling_is_seeded_by_partition_not_node_id():
    a = DenseFedAvg(clients_per_round=3, seed=5)
    b = DenseFedAvg(clients_per_round=3, seed=5)
    a.bind_nodes({100 + p: p for p in range(10)})
    b.bind_nodes({900 + 3 * p: p for p in range(10)})  # other node ids, same partitions
    pa = [a.node_partitions[n] for n in a.sample_nodes(4, _Grid(list(a.node_partitions)))]
    pb = [b.node_partitions[n] for n in b.sample_nodes(4, _Grid(list(b.node_partitions)))]
    assert pa == pb
    assert pa != [a.node_partitions[n] for n in a.sample_nodes(5, _Grid(list(a.node_partitions)))]
