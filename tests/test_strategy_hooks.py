"""The round loop's contract: it calls only hooks ``FederatedStrategy`` declares, Flower's FedAvg runs behind an
adapter unchanged, the shared reply helpers, and the runner's shape (small functions, no ``hasattr`` probes)."""

import ast
import dataclasses
import random
from pathlib import Path

import numpy as np
import pytest
from fedprune.client.app import app as client_app
from fedprune.protos.contract import STRATEGY_NAMES
from fedprune.server.runner import run_federation
from fedprune.strategies.base import FederatedStrategy, ReplyRejected, Screened, reply_metrics
from fedprune.strategies.fedavg import FlowerStrategy
from fedprune.strategies.fedtiny import FedTiny
from fedprune.strategies.registry import STRATEGIES, build_strategy
from fedprune.strategies.static_mask import StaticMaskFedAvg
from flwr.app import Array, ArrayRecord, ConfigRecord, Error, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.supercore.task_identity import TaskIdentity

from tests.inprocess_grid import InProcessGrid

RUNNER = Path(__file__).resolve().parents[1] / "server" / "runner.py"


@pytest.fixture(autouse=True)
def _identity():
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0


def _strategy_calls(tree: ast.AST) -> set[str]:
    """Names of the methods the runner calls on a strategy (``strategy.x(...)`` or ``run.strategy.x(...)``)."""
    calls = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            if (isinstance(owner, ast.Name) and owner.id == "strategy") or (
                    isinstance(owner, ast.Attribute) and owner.attr == "strategy"):
                calls.add(node.func.attr)
    return calls


def test_the_runner_calls_only_declared_hooks_and_probes_none():
    tree = ast.parse(RUNNER.read_text())
    calls = _strategy_calls(tree)
    assert {"initialize_arrays", "bind_nodes", "bind_node_profiles", "load_state_dict", "prepare_round",
            "configure_train", "aggregate_train", "configure_evaluate", "aggregate_evaluate", "round_report",
            "run_report", "state_dict"} <= calls
    for name in calls:
        hook = vars(FederatedStrategy).get(name)
        assert hook is not None, f"runner calls {name}, which FederatedStrategy does not declare"
        assert hook.__doc__, f"FederatedStrategy.{name} has no docstring"
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id in ("hasattr", "getattr")]


def test_no_runner_function_is_longer_than_60_lines():
    tree = ast.parse(RUNNER.read_text())
    long = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(tree)
            if isinstance(n, ast.FunctionDef) and n.end_lineno - n.lineno + 1 > 60}
    assert long == {}


def test_default_hooks_do_nothing():
    class Bare(FederatedStrategy):
        def configure_train(self, server_round, arrays, config, grid):
            return []

        def aggregate_train(self, server_round, replies):
            return None, None

        def summary(self):
            pass

    strategy = Bare(clients_per_round=1)
    arrays = ArrayRecord({"w": Array(np.zeros(2, np.float32))})
    assert strategy.initialize_arrays(arrays) is arrays
    assert strategy.bind_node_profiles({1: {"partition-id": 0}}) is None
    assert strategy.prepare_round(1, arrays, None) is None
    assert list(strategy.configure_evaluate(1, arrays, ConfigRecord(), None)) == []
    assert strategy.aggregate_evaluate(1, []) is None
    assert strategy.run_report() is None
    assert strategy.round_report(1) == {"rejected_replies": []}
    strategy.load_state_dict(strategy.state_dict())


def test_the_registry_builds_exactly_the_names_a_run_config_may_give():
    assert sorted(STRATEGIES) == sorted(STRATEGY_NAMES)


def _reply(node: int, metrics: dict) -> Message:
    reply = Message(RecordDict({"metrics": MetricRecord(metrics)}), dst_node_id=node, message_type=MessageType.TRAIN)
    reply.metadata.__dict__["_src_node_id"] = node
    return reply


def test_reply_metrics_and_train_metrics():
    replies = [_reply(1, {"num-examples": 1, "train-loss": 2.0}), _reply(2, {"num-examples": 3}),
               _reply(3, {"num-examples": 4, "train-loss": 1.0})]
    assert reply_metrics(replies[0])["train-loss"] == 2.0
    metrics = FederatedStrategy.train_metrics(replies, [1.0, 3.0, 4.0])
    assert metrics["train-loss"] == pytest.approx((2.0 + 0.0 + 4.0) / 8) and metrics["num-examples"] == 8
    assert list(metrics.keys()) == ["train-loss", "num-examples"]


class _Grid:
    def __init__(self, nodes):
        self.nodes = nodes

    def get_node_ids(self):
        return list(self.nodes)


def test_flwr_fedavg_is_flowers_fedavg_behind_the_hooks(digits_settings):
    settings = dataclasses.replace(digits_settings, strategy="flwr-fedavg")
    strategy = build_strategy(settings)
    assert isinstance(strategy, FlowerStrategy) and isinstance(strategy.inner, FedAvg)
    bare = FedAvg(fraction_train=0.4, fraction_evaluate=0.0, min_train_nodes=4, min_evaluate_nodes=0,
                  min_available_nodes=10)
    arrays, grid = ArrayRecord({"w": Array(np.ones(3, np.float32))}), _Grid(range(100, 110))
    sampled = []
    for candidate in (strategy, bare):
        random.seed(7)  # Flower's FedAvg samples with the global RNG, which the runner seeds
        sampled.append([m.metadata.dst_node_id for m in candidate.configure_train(1, arrays, ConfigRecord(), grid)])
    assert sampled[0] == sampled[1] and len(sampled[0]) == 4
    assert list(strategy.configure_evaluate(1, arrays, ConfigRecord(), grid)) == []
    assert strategy.round_report(1) == {} and strategy.state_dict() == {} and strategy.run_report() is None


def test_flwr_fedavg_run_samples_with_the_seeded_global_rng(digits_settings):
    settings = dataclasses.replace(digits_settings, strategy="flwr-fedavg", rounds=2)
    grid = InProcessGrid(client_app, settings.num_clients, settings.to_run_config())
    document = run_federation(grid, settings, progress=lambda line: None)
    random.seed(settings.seed)
    expected = [sorted(random.sample(grid.node_ids, settings.clients_per_round)) for _ in range(settings.rounds)]
    assert [sorted(c["node_id"] for c in r["clients"]) for r in document["rounds"]] == expected
    assert "strategy_report" not in document and all("rejected_replies" not in r for r in document["rounds"])
    assert all(r["aggregated"] and r["train_loss"] is not None for r in document["rounds"])


def _error_reply(node: int) -> Message:
    request = Message(RecordDict(), dst_node_id=node, message_type=MessageType.TRAIN)
    request.metadata.__dict__["_message_id"] = f"request-{node}"
    reply = Message(Error(code=0, reason="boom"), reply_to=request)
    reply.metadata.__dict__["_src_node_id"] = node
    return reply


class _Screening(FederatedStrategy):
    """A strategy whose check decodes each reply's 'value' metric (to test the base's screening alone)."""

    def configure_train(self, server_round, arrays, config, grid):
        return []

    def aggregate_train(self, server_round, replies):
        return None, None

    def summary(self):
        pass

    def check_reply(self, server_round, reply):
        value = self.check_metrics(reply).get("value")
        if value is None:
            raise KeyError("value")  # a reply the check cannot read
        if value < 0:
            raise ReplyRejected(f"value {value} is negative")
        return value * 10

    def forget_node(self, node_id):
        self.forgotten.append(node_id)


def test_screen_replies_returns_what_the_check_decoded_and_records_each_drop_with_its_reason():
    strategy = _Screening(clients_per_round=5)
    strategy.forgotten = []
    strategy.bind_nodes({1: 3, 2: 1, 3: 0, 4: 2, 5: 4})
    replies = [_reply(1, {"num-examples": 2, "value": 1.0}), _reply(2, {"num-examples": 0, "value": 1.0}),
               _reply(3, {"num-examples": 1, "value": 2.0}), _reply(4, {"num-examples": 1, "value": -1.0}),
               _reply(5, {"num-examples": 1}), _error_reply(6)]
    valid = strategy.screen_replies(3, replies)
    assert [(s.node, s.decoded) for s in valid] == [(3, 20.0), (1, 10.0)]  # partition order, decoded payloads
    assert all(isinstance(s, Screened) and s.reply is replies[s.node - 1] for s in valid)
    assert strategy.rejected[3] == [(2, "metric 'num-examples' missing or not positive"),
                                    (4, "value -1.0 is negative"), (5, "unreadable reply: KeyError: 'value'"),
                                    (6, "error reply: boom")]
    assert strategy.forgotten == [5, 6]  # unreadable and error replies forget the node; refused ones do not
    own: list = []  # an extra exchange: its own check, its drops kept apart from the round's
    extra = strategy.screen_replies(3, replies[:4], lambda rnd, reply: strategy.check_metrics(reply)["num-examples"],
                                    rejected=own)
    assert [(s.node, s.decoded) for s in extra] == [(3, 1), (4, 1), (1, 2)]
    assert own == [(2, "metric 'num-examples' missing or not positive")] and len(strategy.rejected[3]) == 4


ROOT = RUNNER.parents[1]


def test_strategy_and_pruning_modules_stay_small():
    """No module of strategies/ or pruning/ is over 350 lines, and no function in them over 60."""
    for path in sorted([*ROOT.joinpath("strategies").glob("*.py"), *ROOT.joinpath("pruning").glob("*.py")]):
        text = path.read_text()
        assert len(text.splitlines()) <= 350, f"{path.name} has {len(text.splitlines())} lines"
        long = {n.name: n.end_lineno - n.lineno + 1 for n in ast.walk(ast.parse(text))
                if isinstance(n, ast.FunctionDef) and n.end_lineno - n.lineno + 1 > 60}
        assert long == {}, f"{path.name}: {long}"


def test_masked_strategies_are_composed_not_layered():
    """StaticMaskFedAvg adds no public method beyond the hooks the base declares (none exists for one subclass),
    and FedTiny is built from parts, not on StaticMaskFedAvg."""
    extra = {name for name in vars(StaticMaskFedAvg) if not name.startswith("_")} - set(vars(FederatedStrategy))
    assert extra == set()
    assert not issubclass(FedTiny, StaticMaskFedAvg)
