"""Local Flower processes a fedprune command owns: start, wait until listening, follow a run, stop.

Shared by the simulation launcher (``simulation.launcher``) and the loopback deployment
(``deploy.loopback``): free loopback ports, the venv's Flower console scripts, a private
``FLWR_HOME`` per launcher, processes in their own session so they can be stopped as a
process group by PID, the true run status from the Control API (``flwr run`` can exit 0 for a
failed run; ``simulation.run_status``) and ``results.json`` polling for per-round progress.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
from fedprune.server.results import format_progress, read_results
from fedprune.server.run_config import RunSettings
from fedprune.simulation.run_status import ControlApi

from fedprune import __version__

APP_DIR = Path(__file__).resolve().parent.parent  # the source tree's root (site-packages/fedprune when installed)


def is_source_tree() -> bool:
    """Whether fedprune runs from a source tree (a checkout or an app bundle) rather than an installed wheel."""
    return (APP_DIR / "pyproject.toml").is_file() and (APP_DIR / "fedprune" / "__init__.py").is_file()


def flower_app_dir() -> Path:
    """The Flower app ``flwr run`` submits: the source tree when fedprune runs from one (its pyproject.toml is the
    app's), else — an installed wheel — a generated folder with only a pyproject.toml whose components name the
    installed package and whose run config is ``RunSettings``' defaults (written once per user and version)."""
    if is_source_tree():
        return APP_DIR
    folder = Path(tempfile.gettempdir()) / f"fedprune-app-{__version__}-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    app = {"publisher": "fedprune",
           "components": {"serverapp": "fedprune.server.app:app", "clientapp": "fedprune.client.app:app"},
           "config": RunSettings().to_run_config()}
    document = {"build-system": {"requires": ["setuptools>=69"], "build-backend": "setuptools.build_meta"},
                "project": {"name": "fedprune", "version": __version__, "dependencies": []},
                "tool": {"flwr": {"app": app}}}
    (folder / "pyproject.toml").write_text(tomli_w.dumps(document))
    return folder


class FlowerProcessError(RuntimeError):
    """A Flower process could not start or a run did not complete; the message says where to look."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def flower_bin(name: str) -> str:
    """Path of a console script installed beside this Python (the venv), else from PATH."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise FlowerProcessError(f"'{name}' not found; install fedprune's dependencies (flwr[simulation])")
    return found


def flower_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for a Flower process: this venv's scripts first on PATH, a private ``FLWR_HOME``."""
    env = dict(os.environ)
    # SuperLink/SuperNode spawn flower-superexec, flwr-serverapp, flwr-clientapp by name.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["FLWR_HOME"] = str(home)
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env.update(extra or {})
    return env


def toml_value(value: Any) -> str:
    """``value`` as a TOML literal (run config and node config overrides)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def config_overrides(values: dict[str, Any]) -> str:
    """``k=v k2=v2`` with TOML values, as ``--run-config`` and ``--node-config`` take them."""
    return " ".join(f"{key}={toml_value(value)}" for key, value in values.items())


@dataclass
class OwnedProcess:
    """A process this launcher started in its own session; stopping it stops its whole group."""

    name: str
    process: subprocess.Popen
    log_path: Path

    @classmethod
    def start(cls, name: str, command: list[str], env: dict[str, str], log_path: Path,
              cwd: Path = APP_DIR) -> OwnedProcess:
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                       cwd=str(cwd), start_new_session=True)
        return cls(name, process, log_path)

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_listening(self, port: int, timeout: float, host: str = "127.0.0.1") -> None:
        """Return once ``host:port`` accepts connections; raise (and stop) if the process exits or times out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise FlowerProcessError(f"{self.name} exited with code {self.process.returncode}; "
                                         f"see {self.log_path}")
            try:
                with socket.create_connection((host, port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise FlowerProcessError(f"{self.name} did not listen on {host}:{port} within {timeout:.0f}s; "
                                 f"see {self.log_path}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
        """Stop the process and everything it spawned (its process group), by PID."""
        stop_process_group(self.process, sig, timeout)


def descendants(pid: int) -> list[int]:
    """PIDs of every live descendant of ``pid`` (from /proc; empty where /proc is missing)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            # the command name may hold spaces or parentheses: the ppid is the 2nd field after the last ')'
            parent = int(entry.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def stop_process_group(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 20.0) -> None:
    """Signal ``process``'s group (it leads its own session), then SIGKILL the group if it lingers.

    Flower starts SuperExec in a session of its own (it watches its parent's PID and exits after
    it), so descendants outside the group are collected first and killed last if still alive.
    """
    others = [p for p in descendants(process.pid) if _pgid(p) != process.pid]
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        process.poll()
        _kill_all(others)
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):  # children (superexec, serverapp/clientapp) may outlive the leader
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)
    _kill_all(others)


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie holds no resources; its parent reaps it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _kill_all(pids: list[int], wait: float = 5.0) -> None:
    """SIGKILL what is left of ``pids`` and wait (bounded) until they are gone."""
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    deadline = time.monotonic() + wait
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def run_flwr(home: Path, *args: str, timeout: float = 120.0, env: dict[str, str] | None = None,
             cwd: Path = APP_DIR) -> subprocess.CompletedProcess:
    """Run a ``flwr`` CLI command with ``FLWR_HOME=home`` (its connections live in home/config.toml)."""
    return subprocess.run([flower_bin("flwr"), *args], env=env or flower_env(home), capture_output=True, text=True,
                          timeout=timeout, cwd=str(cwd))


def submitted_run_id(started: subprocess.CompletedProcess) -> int:
    """The run id from ``flwr run --format json`` output, or an error with what flwr printed."""
    try:
        return int(json.loads(started.stdout)["run-id"])
    except (ValueError, KeyError, TypeError):
        raise FlowerProcessError(f"flwr run did not start the run:\n{started.stdout}\n{started.stderr}") from None


def run_status(flwr: Callable[..., subprocess.CompletedProcess], connection: str, run_id: int) -> str:
    """The run's status as the SuperLink reports it (``finished:completed``, ``running``, ...)."""
    try:
        result = flwr("ls", connection, "--run-id", str(run_id), "--format", "json")
    except subprocess.TimeoutExpired:
        return "unknown"
    if result.returncode != 0:
        return "unknown"
    try:
        runs = json.loads(result.stdout).get("runs", [])
    except json.JSONDecodeError:
        return "unknown"
    return str(runs[0].get("status", "unknown")) if runs else "unknown"


def run_failure(status: str, document: dict[str, Any] | None) -> str | None:
    """``None`` if the run completed (Flower's status *and* the ServerApp's results.json agree), else why not:
    the ServerApp's own recorded error when it wrote one, else Flower's status."""
    if status == "finished:completed" and document is not None and document.get("status") == "completed":
        return None
    if document is not None and document.get("status") == "failed" and document.get("error"):
        return str(document["error"])
    return f"it ended with status '{status}'"


_EXCEPTION_LINE = re.compile(r"^\s*(?:[\w.]+\.)?[A-Z]\w*(?:Error|Exception)\b:? .*")


def run_log_cause(flwr: Callable[..., subprocess.CompletedProcess], connection: str, run_id: int) -> str | None:
    """The last exception line in the run's own log (``flwr log RUN_ID --show``): why a ServerApp that failed
    before it could write results.json failed, e.g. an import error. ``None`` if the log says nothing."""
    try:
        result = flwr("log", str(run_id), connection, "--show", timeout=60)
    except (subprocess.TimeoutExpired, OSError):
        return None
    lines = [line.strip() for line in f"{result.stdout}\n{result.stderr}".splitlines()]
    found = [line for line in lines if _EXCEPTION_LINE.match(line)]
    return found[-1][:300] if found else None


def status_checks(api: ControlApi, run_id: int, fallback: Callable[[], str], patience: int = 3) -> Callable[[], str]:
    """A run-status check for ``follow_run``: the Control API from this process; after ``patience``
    unanswered requests in a row, ``fallback()`` (``flwr ls``) answers that check instead."""
    unanswered = 0

    def check() -> str:
        nonlocal unanswered
        status = api.run_status(run_id)
        unanswered = 0 if status != "unknown" else unanswered + 1
        return fallback() if unanswered >= patience else status

    return check


def follow_run(status_of_run: Callable[[], str], results_path: Path, total_rounds: int,
               progress: Callable[[str], None] = print, *, poll_seconds: float = 0.5,
               status_poll_seconds: float = 15.0, timeout: float | None = None,
               on_poll: Callable[[dict[str, Any] | None], Any] | None = None) -> tuple[str, dict[str, Any] | None]:
    """Print each new round of ``results_path`` until ``status_of_run()`` says the run finished.

    ``on_poll`` sees every parsed results document (e.g. to inject a fault at a round boundary);
    if it returns true, following stops with status ``stopped``. Returns (final status, last
    results document); a run still going after ``timeout`` seconds returns status ``timeout``.
    """
    printed, status, last_check = 0, "pending", 0.0
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        document = read_results(results_path)
        if on_poll is not None and on_poll(document):
            return "stopped", document
        rounds = document.get("rounds", []) if document else []
        for entry in rounds[printed:]:
            progress(format_progress(entry, total_rounds))
        printed = max(printed, len(rounds))
        finished_here = bool(document) and document.get("status") in ("completed", "failed")
        # ask the SuperLink rarely while rounds progress, at every poll once results.json says it is done
        if finished_here or time.monotonic() - last_check > status_poll_seconds:
            status, last_check = status_of_run(), time.monotonic()
            if status.startswith("finished"):
                final = read_results(results_path)
                for entry in (final or {}).get("rounds", [])[printed:]:
                    progress(format_progress(entry, total_rounds))
                return status, final
        if deadline is not None and time.monotonic() > deadline:
            return "timeout", document
        time.sleep(poll_seconds)
