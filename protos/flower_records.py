"""How a codec payload travels inside a Flower message.

Measured (``fedprune bench wire``): a payload as one ``bytes`` value in a
``ConfigRecord`` and as an ``Array`` with a custom ``stype`` (which Flower
chunks for transport) serialize to within a few bytes of each other; the
``ConfigRecord`` form needs no custom stype handling on either side (``Array.numpy()``
refuses custom stypes), so it is the one fedprune uses.
"""

from __future__ import annotations

import re

from fedprune.protos.codec import WireFormatError
from fedprune.protos.contract import Record
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

PAYLOAD_RECORD = Record.PAYLOAD
PAYLOAD_KEY = Record.PAYLOAD_KEY
SETUP_KEY = Record.SETUP_KEY
WIRE_STYPE = "fedprune.wire.v1"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_EXCEPTION_LINE = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*: .+")


def error_reason(message: Message, limit: int = 300) -> str:
    """What an error reply says went wrong, in one line: Ray and Flower wrap a ClientApp's exception in a
    multi-line traceback with process ids and colour codes; this keeps the original exception's message
    (``Message: ...`` in Flower's wrapper, else the last ``SomeError: ...`` line)."""
    text = _ANSI.sub("", message.error.reason or "")
    if "Message: " in text:
        found = text.rsplit("Message: ", 1)[1].strip().splitlines()
        line = found[0].strip().rstrip("'>").strip() if found else ""
    else:
        lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
        line = next((ln for ln in reversed(lines) if _EXCEPTION_LINE.match(ln)), lines[-1] if lines else "")
    return (line or f"error code {message.error.code}")[:limit]


def payload_record(blob: bytes) -> ConfigRecord:
    """Wrap an encoded payload for a message's content."""
    return ConfigRecord({PAYLOAD_KEY: blob})


def payload_of(message: Message) -> bytes:
    """The encoded payload a message carries; ``WireFormatError`` if it carries none."""
    record = message.content.config_records.get(PAYLOAD_RECORD)
    if record is None or PAYLOAD_KEY not in record:
        raise WireFormatError(f"message has no '{PAYLOAD_RECORD}.{PAYLOAD_KEY}' payload")
    blob = record[PAYLOAD_KEY]
    if not isinstance(blob, bytes):
        raise WireFormatError(f"payload is {type(blob).__name__}, not bytes")
    return blob


def payload_as_array(blob: bytes) -> ArrayRecord:
    """The alternative container (an ``Array`` with a custom stype), kept for the measurement."""
    return ArrayRecord({PAYLOAD_KEY: Array(dtype="uint8", shape=(len(blob),), stype=WIRE_STYPE, data=blob)})


def _content(payload: ConfigRecord, config: ConfigRecord | None, metrics: MetricRecord | None) -> RecordDict:
    records: dict = {PAYLOAD_RECORD: payload}
    if config is not None:
        records[Record.CONFIG] = config
    if metrics is not None:
        records[Record.METRICS] = metrics
    return RecordDict(records)


def content_with_payload(blob: bytes, *, config: ConfigRecord | None = None,
                         metrics: MetricRecord | None = None) -> RecordDict:
    """A message content holding ``blob`` plus the config (server → client) or metrics (client → server)."""
    return _content(payload_record(blob), config, metrics)


def setup_record(blob: bytes, setup: bytes | None, *, config: ConfigRecord | None = None) -> RecordDict:
    """Content with a round payload and, for a node's first contact, a setup payload decoded first."""
    values = {PAYLOAD_KEY: blob}
    if setup is not None:
        values[SETUP_KEY] = setup
    return _content(ConfigRecord(values), config, None)


def config_of(message: Message) -> ConfigRecord:
    """The config a server sent with ``message`` (empty if none)."""
    return message.content.config_records.get(Record.CONFIG, ConfigRecord())


def setup_of(message: Message) -> bytes | None:
    """The setup payload of a first-contact message, if it carries one."""
    record = message.content.config_records.get(PAYLOAD_RECORD)
    blob = record.get(SETUP_KEY) if record is not None else None
    if blob is not None and not isinstance(blob, bytes):
        raise WireFormatError("setup payload is not bytes")
    return blob
