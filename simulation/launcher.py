"""Run a fedprune simulation on a private local SuperLink with Flower's Ray backend.

``fedprune simulate`` does what a user would do by hand, without touching the
user's own Flower setup: it starts ``flower-superlink --simulation`` on free
loopback ports with its own ``FLWR_HOME`` and runtime dependency installation
off, submits this app with ``flwr run`` (run config and federation config
overrides), follows ``results.json`` to print one line per round, checks the
run's final status (``flwr run`` can exit 0 for a failed run), and stops the
SuperLink it started, by PID.
"""

from __future__ import annotations

import json
import os
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

from server.results import RESULTS_NAME, format_progress
from server.run_config import RunSettings

APP_DIR = Path(__file__).resolve().parent.parent


class SimulationError(RuntimeError):
    """The simulation could not start or did not complete; the message says why and where to look."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bin(name: str) -> str:
    """Path of a console script installed beside this Python (the venv), else from PATH."""
    candidate = Path(sys.executable).parent / name
    found = str(candidate) if candidate.exists() else shutil.which(name)
    if not found:
        raise SimulationError(f"'{name}' not found; install fedprune's dependencies (flwr[simulation])")
    return found


@dataclass
class LocalSuperLink:
    """A simulation-mode SuperLink this process owns (start, address, stop by PID)."""

    home: Path
    address: str
    process: subprocess.Popen
    log_path: Path

    @classmethod
    def start(cls, home: Path | None = None, ray_address: str | None = None, timeout: float = 60.0) -> LocalSuperLink:
        home = Path(home or tempfile.mkdtemp(prefix="fedprune-flwr-"))
        home.mkdir(parents=True, exist_ok=True)
        port = free_port()
        address = f"127.0.0.1:{port}"
        (home / "config.toml").write_text(
            '[superlink]\ndefault = "fedprune"\n\n'
            f'[superlink.fedprune]\naddress = "{address}"\ninsecure = true\n'
        )
        log_path = home / "superlink.log"
        env = _env(home, ray_address)
        command = [
            _bin("flower-superlink"), "--insecure", "--simulation",
            "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1", "--port", str(port),
            "--fleet-api-address", f"127.0.0.1:{free_port()}",
            "--database", str(home / "state.db"),
        ]
        with open(log_path, "ab") as log_file:
            process = subprocess.Popen(command, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                       cwd=str(APP_DIR), start_new_session=True)
        link = cls(home, address, process, log_path)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise SimulationError(f"flower-superlink exited with code {process.returncode}; see {log_path}")
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                    return link
            except OSError:
                time.sleep(0.3)
        link.stop()
        raise SimulationError(f"flower-superlink did not listen on {address} within {timeout:.0f}s; see {log_path}")

    def stop(self) -> None:
        """Stop the SuperLink and everything it spawned (its process group), by PID."""
        if self.process.poll() is not None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run a ``flwr`` CLI command against this SuperLink."""
        return subprocess.run([_bin("flwr"), *args], env=_env(self.home, None), capture_output=True, text=True,
                              timeout=timeout, cwd=str(APP_DIR))


def _env(home: Path, ray_address: str | None) -> dict[str, str]:
    env = dict(os.environ)
    # The SuperLink spawns flower-superexec / flwr-simulation by name: put this venv's scripts first.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["FLWR_HOME"] = str(home)
    env["FLWR_DISABLE_UPDATE_CHECK"] = "1"
    env.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    # Without --ray-address, always start a private Ray instance: never attach implicitly to a
    # cluster some other program started (or one that died and left /tmp/ray/ray_current_cluster).
    env["RAY_ADDRESS"] = ray_address or "local"
    return env


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def _run_status(link: LocalSuperLink, run_id: int) -> str:
    result = link.flwr("ls", "fedprune", "--run-id", str(run_id), "--format", "json")
    if result.returncode != 0:
        return "unknown"
    try:
        runs = json.loads(result.stdout).get("runs", [])
    except json.JSONDecodeError:
        return "unknown"
    return str(runs[0].get("status", "unknown")) if runs else "unknown"


def run_simulation(settings: RunSettings, *, num_cpus_per_client: int = 1, ray_address: str | None = None,
                   progress: Callable[[str], None] = print, poll_seconds: float = 0.5,
                   status_poll_seconds: float = 15.0) -> dict[str, Any]:
    """Run ``settings`` as a Ray simulation of ``settings.num_clients`` SuperNodes; return results.json."""
    out_dir = Path(settings.out).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    settings_config = {**settings.to_run_config(), "out": str(out_dir)}
    results_path = out_dir / RESULTS_NAME
    if not settings.resume and results_path.exists():
        results_path.unlink()
    link = LocalSuperLink.start(ray_address=ray_address)
    try:
        run_config = " ".join(f"{key}={_toml_value(value)}" for key, value in settings_config.items())
        federation = (f"num-supernodes={settings.num_clients} client-resources-num-cpus={num_cpus_per_client} "
                      f"client-resources-num-gpus=0.0 backend=\"ray\" init-args-logging-level=\"ERROR\"")
        started = link.flwr("run", str(APP_DIR), "fedprune", "--run-config", run_config,
                            "--federation-config", federation, "--format", "json")
        try:
            run_id = int(json.loads(started.stdout)["run-id"])
        except (ValueError, KeyError, TypeError):
            raise SimulationError(f"flwr run did not start the run:\n{started.stdout}\n{started.stderr}") from None
        printed = 0
        status = "pending"
        last_check = 0.0
        while True:
            printed, finished_here = _print_new_rounds(results_path, printed, settings.rounds, progress)
            # `flwr ls` costs a second of CPU; ask it rarely while rounds progress, often once done.
            if finished_here or time.monotonic() - last_check > status_poll_seconds:
                status, last_check = _run_status(link, run_id), time.monotonic()
                if status.startswith("finished"):
                    break
            time.sleep(poll_seconds)
        _print_new_rounds(results_path, printed, settings.rounds, progress)
        document = json.loads(results_path.read_text()) if results_path.exists() else None
        if status != "finished:completed" or document is None or document.get("status") != "completed":
            raise SimulationError(
                f"run {run_id} ended with status '{status}'; see {link.log_path} "
                f"(`FLWR_HOME={link.home} flwr log {run_id} fedprune`)")
        return document
    finally:
        link.stop()


def _print_new_rounds(path: Path, printed: int, total: int,
                      progress: Callable[[str], None]) -> tuple[int, bool]:
    """Print rounds not printed yet; also say whether the ServerApp marked the run completed."""
    if not path.exists():
        return printed, False
    try:
        document = json.loads(path.read_text())
    except (json.JSONDecodeError, OSError):
        return printed, False
    rounds = document.get("rounds", [])
    for entry in rounds[printed:]:
        progress(format_progress(entry, total))
    return max(printed, len(rounds)), document.get("status") == "completed"
