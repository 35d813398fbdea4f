"""Measured size of what a Flower message carries: its content serialized to protobuf.

Every byte figure fedprune reports comes from here, never from a formula: the
``RecordDict`` a message carries is serialized exactly as Flower serializes it
for the wire and its length is taken.
"""

from __future__ import annotations

from flwr.app import Message
from flwr.common.serde import recorddict_to_proto


def content_bytes(message: Message) -> int:
    """Serialized protobuf size of ``message``'s content (0 for an error reply)."""
    if message.has_error() or not message.has_content():
        return 0
    return recorddict_to_proto(message.content).ByteSize()
