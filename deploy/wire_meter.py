"""A TCP proxy that counts the bytes on the wire, both ways, in front of the SuperLink's Fleet API.

SuperNodes connect to the proxy; it forwards every byte unchanged to the Fleet API (TLS
passes through end to end: the proxy never sees plaintext) and counts what flows toward
the SuperLink (uplink) and toward the SuperNodes (downlink). That is the traffic a network
would carry, including TLS records, HTTP/2 and gRPC framing, heartbeats and polling, which
the ServerApp's own per-message accounting (``server.metered_grid``) does not see.
``RoundWire`` cuts that running count at the round boundaries results.json shows.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedprune.server.results import read_results


@dataclass(frozen=True)
class WireBytes:
    """Bytes counted so far: toward the SuperLink (uplink) and toward the SuperNodes (downlink)."""

    uplink: int
    downlink: int

    def __sub__(self, other: WireBytes) -> WireBytes:
        return WireBytes(self.uplink - other.uplink, self.downlink - other.downlink)


class WireMeter:
    """Listen on ``listen_host:listen_port`` (0 = any free port) and forward to ``target``."""

    def __init__(self, target: tuple[str, int], listen_host: str = "127.0.0.1", listen_port: int = 0) -> None:
        self.target = target
        self._server = socket.create_server((listen_host, listen_port))
        self._server.settimeout(0.5)
        self.port = self._server.getsockname()[1]
        self.address = f"{listen_host}:{self.port}"
        self._lock = threading.Lock()
        self._up = self._down = 0
        self._stopping = threading.Event()
        self._sockets: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, name="wire-meter", daemon=True)

    def start(self) -> WireMeter:
        self._thread.start()
        return self

    def snapshot(self) -> WireBytes:
        with self._lock:
            return WireBytes(self._up, self._down)

    def _count(self, uplink: bool, count: int) -> None:
        with self._lock:
            if uplink:
                self._up += count
            else:
                self._down += count

    def _accept(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            for source, sink, uplink in ((client, upstream, True), (upstream, client, False)):
                threading.Thread(target=self._pump, args=(source, sink, uplink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, uplink: bool) -> None:
        try:
            with contextlib.suppress(OSError):  # a closed peer ends the pump
                while chunk := source.recv(65536):
                    sink.sendall(chunk)
                    self._count(uplink, len(chunk))
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        """Close the listening socket and every forwarded connection."""
        self._stopping.set()
        self._server.close()
        with self._lock:
            sockets, self._sockets = self._sockets, []
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()
        self._thread.join(timeout=5)


class RoundWire:
    """Cuts the wire meter's running count at round boundaries seen in results.json.

    Polls in its own thread (every 0.1 s), so run-status requests cannot delay a cut.
    """

    def __init__(self, meter: WireMeter | None, results_path: Path, poll_seconds: float = 0.1) -> None:
        self.meter = meter
        self.results_path = results_path
        self.poll_seconds = poll_seconds
        self.rounds: list[dict[str, Any]] = []
        self._mark: WireBytes | None = None
        self._seen = 0
        self._time = time.monotonic()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="round-wire", daemon=True)

    def start(self) -> RoundWire:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)
        self.observe(read_results(self.results_path))

    def _loop(self) -> None:
        while not self._stopping.wait(self.poll_seconds):
            self.observe(read_results(self.results_path))

    def observe(self, document: dict[str, Any] | None) -> None:
        if self.meter is None or document is None or document.get("status") not in ("running", "completed"):
            return
        now, snapshot = time.monotonic(), self.meter.snapshot()
        rounds = document.get("rounds", [])
        if self._mark is None:  # setup (node discovery) done, round 1 starts
            self._mark, self._seen, self._time = snapshot, len(rounds), now
            return
        if len(rounds) > self._seen:
            delta = snapshot - self._mark
            # a poll may see several new rounds at once: split evenly rather than invent boundaries
            new = rounds[self._seen:]
            for entry in new:
                self.rounds.append({"round": entry["round"], "wire_uplink_bytes": delta.uplink // len(new),
                                    "wire_downlink_bytes": delta.downlink // len(new),
                                    "wall_seconds": (now - self._time) / len(new)})
            self._mark, self._seen, self._time = snapshot, len(rounds), now
