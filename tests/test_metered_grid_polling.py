"""The metered grid pulls replies on a short backoff (Flower's deployment grid waits 3 s between pulls),
returns them in the order of the messages, and stops at the round timeout."""

import itertools
import time

import pytest
from fedprune.server.metered_grid import MeteredGrid, pull_schedule
from flwr.app import Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity


class _SlowGrid:
    """Replies to message i become available ``delays[i]`` seconds after the push (None: never)."""

    def __init__(self, delays):
        self.delays = delays
        self.pulls = 0

    def push_messages(self, messages):
        self.pushed_at = time.monotonic()
        pairs = zip(messages, self.delays, strict=True)
        self.messages = {f"m{i}": (message, delay) for i, (message, delay) in enumerate(pairs)}
        return list(self.messages)

    def pull_messages(self, message_ids):
        self.pulls += 1
        now, ready = time.monotonic(), []
        for message_id in message_ids:
            message, delay = self.messages[message_id]
            if delay is not None and now - self.pushed_at >= delay:
                reply = Message(RecordDict({"m": MetricRecord({"x": 1})}), dst_node_id=0, message_type="train")
                reply.metadata.__dict__["_reply_to_message_id"] = message_id
                reply.metadata.__dict__["_src_node_id"] = message.metadata.dst_node_id
                ready.append(reply)
        return ready


@pytest.fixture(autouse=True)
def _task_identity():
    """Messages are made inside a task (a run and a node); these stand in for the ServerApp's (as the
    in-process grid sets them)."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 0


def _messages(count):
    messages = []
    for node in range(count):
        message = Message(RecordDict(), dst_node_id=100 + node, message_type="train")
        message.metadata.__dict__["_message_id"] = f"m{node}"
        messages.append(message)
    return messages


def test_the_schedule_starts_short_and_is_capped():
    pauses = list(itertools.islice(pull_schedule(), 20))
    assert pauses[0] == 0.02 and max(pauses) == 0.5 and pauses == sorted(pauses)


def test_replies_come_back_soon_after_they_arrive_in_message_order():
    inner = _SlowGrid([0.3, 0.05, 0.15])
    started = time.monotonic()
    replies = list(MeteredGrid(inner).send_and_receive(_messages(3), timeout=10))
    waited = time.monotonic() - started
    assert [reply.metadata.reply_to_message_id for reply in replies] == ["m0", "m1", "m2"]
    assert waited < 0.3 + 0.5  # seen within one capped pause of the last reply, not 3 s later


def test_a_node_that_never_answers_ends_at_the_timeout_and_is_a_failure():
    inner = _SlowGrid([0.0, None])
    grid = MeteredGrid(inner)
    started = time.monotonic()
    replies = list(grid.send_and_receive(_messages(2), timeout=0.4))
    assert 0.4 <= time.monotonic() - started < 1.0
    assert [reply.metadata.reply_to_message_id for reply in replies] == ["m0"]
    traffic = grid.take_traffic()
    assert traffic.failed == {101} and traffic.errors[101] == "no reply within the round timeout"
