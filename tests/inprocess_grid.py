"""An in-process ``Grid`` for fast, deterministic tests: no Ray, no SuperLink.

Each node gets its own ``Context`` (node config with partition id, persistent
state); messages really go through Flower's protobuf serialization both ways,
and an exception in the ClientApp becomes an error reply, as in Flower.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.serde import message_from_proto, message_to_proto
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

_ids = itertools.count(1)


class InProcessGrid(Grid):
    """Routes messages to ``client_app`` for ``num_nodes`` simulated nodes."""

    def __init__(self, client_app: ClientApp, num_nodes: int, run_config: dict,
                 fail_nodes: Callable[[int, Message], bool] | None = None,
                 tamper: Callable[[int, Message], Message] | None = None) -> None:
        self.client_app = client_app
        self.node_ids = [1000 + 7 * i for i in range(num_nodes)]
        self.contexts = {
            node: Context(run_id=1, node_id=node, node_config={"partition-id": i, "num-partitions": num_nodes},
                          state=RecordDict(), run_config=dict(run_config))
            for i, node in enumerate(self.node_ids)
        }
        self.fail_nodes = fail_nodes or (lambda node, message: False)
        self.tamper = tamper or (lambda node, reply: reply)
        self._run = Run.create_empty(run_id=1)
        self._pending: dict[str, Message] = {}
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 0

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content=content, dst_node_id=dst_node_id, message_type=message_type, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.node_ids)

    def _deliver(self, message: Message) -> Message:
        message.metadata.__dict__["_message_id"] = str(next(_ids))
        wire = message_from_proto(message_to_proto(message))
        node = message.metadata.dst_node_id
        if self.fail_nodes(node, message):
            reply = Message(Error(code=0, reason="ClientApp raised: injected failure"), reply_to=wire)
        else:
            try:
                TaskIdentity.node_id = node
                reply = self.client_app(wire, self.contexts[node])
            except Exception as exc:
                reply = Message(Error(code=0, reason=f"{type(exc).__name__}: {exc}"), reply_to=wire)
        TaskIdentity.node_id = 0
        return self.tamper(node, message_from_proto(message_to_proto(reply)))

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for message in messages:
            reply = self._deliver(message)
            self._pending[reply.metadata.reply_to_message_id] = reply
            ids.append(reply.metadata.reply_to_message_id)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._pending.pop(mid) for mid in message_ids if mid in self._pending]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return [self._deliver(message) for message in messages]


def full_and_resumed(settings, stop_after: int, root) -> tuple[dict, dict]:
    """Run ``settings`` uninterrupted, and again stopped after ``stop_after`` rounds then resumed from the
    checkpoint; returns both results documents (what a resume test compares)."""
    import dataclasses

    from fedprune.client.app import app as client_app
    from fedprune.server.runner import run_federation

    def run(s):
        grid = InProcessGrid(client_app, s.num_clients, s.to_run_config())
        return run_federation(grid, s, progress=lambda line: None)

    full = run(dataclasses.replace(settings, out=str(root / "full")))
    part = dataclasses.replace(settings, rounds=stop_after, out=str(root / "part"))
    run(part)
    return full, run(dataclasses.replace(part, rounds=settings.rounds, resume=True))
