"""A ``Grid`` wrapper that measures every message's serialized bytes, per node and direction.

Strategies get this grid instead of the real one, so every strategy, including
Flower's own ``FedAvg`` in comparisons, is metered the same way.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from fedprune.protos.flower_records import error_reason
from fedprune.protos.wire_size import content_bytes
from flwr.app import Message, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.run import Run


@dataclass
class Traffic:
    """Bytes sent to (downlink) and received from (uplink) each node, and nodes that failed."""

    downlink: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    uplink: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    failed: set[int] = field(default_factory=set)
    replied: set[int] = field(default_factory=set)
    errors: dict[int, str] = field(default_factory=dict)  # why each failed node failed (error reply, no reply)

    @property
    def downlink_bytes(self) -> int:
        return sum(self.downlink.values())

    @property
    def uplink_bytes(self) -> int:
        return sum(self.uplink.values())


class MeteredGrid(Grid):
    """Delegates to ``inner``; counts content bytes of everything sent and received."""

    def __init__(self, inner: Grid) -> None:
        self.inner = inner
        self.traffic = Traffic()

    def take_traffic(self) -> Traffic:
        """Return what was measured since the last call and start a fresh count."""
        traffic, self.traffic = self.traffic, Traffic()
        return traffic

    def set_run(self, run: Run) -> None:
        self.inner.set_run(run)

    @property
    def run(self) -> Run:
        return self.inner.run

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        messages = list(messages)
        self._count_sent(messages)
        return self.inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        replies = list(self.inner.pull_messages(message_ids))
        self._count_received(replies)
        return replies

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        self._count_sent(messages)
        replies = list(self.inner.send_and_receive(messages, timeout=timeout))
        self._count_received(replies)
        # A node that never answered (timeout, crash) failed too.
        answered = {reply.metadata.src_node_id for reply in replies}
        for message in messages:
            node = message.metadata.dst_node_id
            if node not in answered:
                self.traffic.failed.add(node)
                self.traffic.errors.setdefault(node, "no reply within the round timeout")
        return replies

    def _count_sent(self, messages: list[Message]) -> None:
        for message in messages:
            self.traffic.downlink[message.metadata.dst_node_id] += content_bytes(message)

    def _count_received(self, replies: list[Message]) -> None:
        for reply in replies:
            node = reply.metadata.src_node_id
            self.traffic.uplink[node] += content_bytes(reply)
            self.traffic.replied.add(node)
            if reply.has_error():
                self.traffic.failed.add(node)
                self.traffic.errors[node] = f"error reply: {error_reason(reply)}"
