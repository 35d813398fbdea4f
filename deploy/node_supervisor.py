"""An edge node's processes, started, watched and stopped together: ``flower-supernode --isolation process``
and the executor that runs its ClientApp tasks.

The executor is fedprune's warm executor (``deploy.warm_executor``) by default. If it exits, it is
restarted and the log says so; after ``MAX_RESTARTS`` exits within ``RESTART_WINDOW`` seconds the node
falls back to Flower's own executor (``flower-superexec``, one process per message) rather than stop
training. Both talk to the SuperNode's Runtime API on loopback, authenticated with a random secret this
supervisor writes (0600, in a private folder removed on exit), so no other local process can take the
node's tasks. When the SuperNode exits, the executor is stopped and the supervisor exits with the
SuperNode's code (systemd or the container runtime restarts the whole node); SIGTERM/SIGINT stop both.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

MAX_RESTARTS = 3
RESTART_WINDOW = 60.0
WARM, FLOWER = "warm", "flower"


def say(line: str) -> None:
    """One line of the node's log (stderr, which systemd/compose/loopback keep)."""
    print(f"fedprune supernode: {line}", file=sys.stderr, flush=True)


def write_auth_secret() -> Path:
    """A fresh random SuperExec secret in a private folder (0700 folder, 0600 file)."""
    folder = Path(tempfile.mkdtemp(prefix="fedprune-node-"))
    path = folder / "superexec.secret"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(secrets.token_bytes(32))
    return path


def wait_listening(port: int, process: subprocess.Popen, timeout: float | None = None) -> bool:
    """Whether 127.0.0.1:``port`` accepts connections before ``process`` exits (or ``timeout`` passes)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while (deadline is None or time.monotonic() < deadline) and process.poll() is None:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        time.sleep(0.1)
    return False


def stop(process: subprocess.Popen | None, timeout: float = 15.0) -> None:
    """SIGTERM, then SIGKILL after ``timeout``; reaps it."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@dataclass
class NodeSupervisor:
    """Runs ``supernode`` (a command line) and an executor built by ``executor_command(kind)``."""

    supernode: list[str]
    runtime_port: int
    executor_command: Callable[[str], list[str]]
    env: dict[str, str]
    executor: str = WARM
    exits: deque = field(default_factory=lambda: deque(maxlen=MAX_RESTARTS))
    _stopping: bool = False

    def start_executor(self) -> subprocess.Popen:
        command = self.executor_command(self.executor)
        say("starting the warm executor" if self.executor == WARM else "starting Flower's executor (flower-superexec)")
        return subprocess.Popen(command, env=self.env)

    def executor_exited(self, code: int) -> None:
        """Count the exit; fall back to Flower's executor if the warm one keeps dying."""
        now = time.monotonic()
        self.exits.append(now)
        say(f"{self.executor} executor exited with code {code}; restarting it")
        if self.executor == WARM and len(self.exits) == MAX_RESTARTS and now - self.exits[0] < RESTART_WINDOW:
            self.executor = FLOWER
            say(f"the warm executor exited {MAX_RESTARTS} times within {RESTART_WINDOW:.0f}s; falling back to "
                "Flower's executor (one process per message)")

    def run(self) -> int:
        """Start both, watch both, return the SuperNode's exit code."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_signal)
        node = subprocess.Popen(self.supernode, env=self.env)
        executor = None
        try:
            if not wait_listening(self.runtime_port, node):
                say(f"flower-supernode exited with code {node.poll()} before its Runtime API listened")
                return node.wait() or 1
            executor = self.start_executor()
            while not self._stopping:
                if (code := node.poll()) is not None:
                    say(f"flower-supernode exited with code {code}")
                    return code
                if (code := executor.poll()) is not None:
                    self.executor_exited(code)
                    executor = self.start_executor()
                time.sleep(0.5)
            return 0
        finally:
            stop(executor)
            stop(node)

    def _on_signal(self, number: int, _frame: object) -> None:
        say(f"received {signal.Signals(number).name}; stopping the SuperNode and its executor")
        self._stopping = True


def run_node(supernode: Callable[[Path], list[str]], executor: Callable[[str, Path], list[str]],
             runtime_port: int, env: dict[str, str], kind: str = WARM) -> int:
    """Run a supervised node; ``supernode(secret)`` and ``executor(kind, secret)`` build the command lines."""
    secret = write_auth_secret()
    try:
        return NodeSupervisor(supernode(secret), runtime_port, lambda k: executor(k, secret), env, kind).run()
    finally:
        shutil.rmtree(secret.parent, ignore_errors=True)
