"""A ``Grid`` wrapper that measures every message's serialized bytes, per node and direction.

Strategies get this grid instead of the real one, so every strategy, including
Flower's own ``FedAvg`` in comparisons, is metered the same way.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
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
    wait_seconds: float = 0.0  # from each push until its last reply (or the timeout), summed

    @property
    def downlink_bytes(self) -> int:
        return sum(self.downlink.values())

    @property
    def uplink_bytes(self) -> int:
        return sum(self.uplink.values())


def pull_schedule(first: float = 0.02, growth: float = 1.5, longest: float = 0.5) -> Iterator[float]:
    """Pauses between pulls while replies are outstanding: ``first`` seconds, growing by ``growth`` up to
    ``longest`` (a local pull costs about a millisecond; a quick reply is seen within ~20 ms, a slow
    one within half a second)."""
    pause = first
    while True:
        yield pause
        pause = min(longest, pause * growth)


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
        """Push ``messages``, then pull replies until all arrived or ``timeout`` passed.

        Polls on ``pull_schedule`` rather than the inner grid's own loop: Flower's deployment grid
        sleeps 3 s between pulls, which a reply arriving just after a pull waits out in full.
        """
        messages = list(messages)
        self._count_sent(messages)
        replies = list(self._push_and_pull(messages, timeout))
        self._count_received(replies)
        # A node that never answered (timeout, crash) failed too.
        answered = {reply.metadata.src_node_id for reply in replies}
        for message in messages:
            node = message.metadata.dst_node_id
            if node not in answered:
                self.traffic.failed.add(node)
                self.traffic.errors.setdefault(node, "no reply within the round timeout")
        return replies

    def _push_and_pull(self, messages: list[Message], timeout: float | None) -> list[Message]:
        started = time.perf_counter()
        pushed = list(self.inner.push_messages(messages))
        waiting = set(pushed)
        replies: list[Message] = []
        deadline = None if timeout is None else time.monotonic() + timeout
        for pause in pull_schedule():
            pulled = list(self.inner.pull_messages(waiting))
            replies += pulled
            waiting -= {reply.metadata.reply_to_message_id for reply in pulled}
            if not waiting or (deadline is not None and time.monotonic() >= deadline):
                break
            time.sleep(pause if deadline is None else max(0.0, min(pause, deadline - time.monotonic())))
        self.traffic.wait_seconds += time.perf_counter() - started
        order = {message_id: index for index, message_id in enumerate(pushed)}  # replies in the messages' order
        return sorted(replies, key=lambda reply: order.get(reply.metadata.reply_to_message_id, len(order)))

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
