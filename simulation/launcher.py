"""Run a fedprune simulation on a private local SuperLink with Flower's Ray backend.

``fedprune simulate`` does what a user would do by hand, without touching the
user's own Flower setup: it starts ``flower-superlink --simulation`` on free
loopback ports with its own ``FLWR_HOME`` and runtime dependency installation
off, submits this app with ``flwr run`` (run config and federation config
overrides), follows ``results.json`` to print one line per round, checks the
run's final status over the Control API, from this process (``flwr run`` can exit 0 for a failed
run; ``simulation.run_status``), and stops the
SuperLink it started, by PID. The process pieces are shared with the loopback
deployment (``simulation.flower_processes``).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomli_w
from fedprune.server.results import RESULTS_NAME
from fedprune.server.run_config import RunSettings
from fedprune.simulation.flower_processes import (
    APP_DIR,
    FlowerProcessError,
    OwnedProcess,
    config_overrides,
    flower_app_dir,
    flower_bin,
    flower_env,
    follow_run,
    free_port,
    run_failure,
    run_flwr,
    run_log_cause,
    run_status,
    status_checks,
    submitted_run_id,
    toml_value,
)
from fedprune.simulation.run_status import ControlApi

__all__ = ["APP_DIR", "LocalSuperLink", "SimulationError", "free_port", "run_simulation"]
_toml_value = toml_value  # kept for callers of the old private name


class SimulationError(FlowerProcessError):
    """The simulation could not start or did not complete; the message says why and where to look."""


def _bin(name: str) -> str:
    """Path of a console script installed beside this Python (the venv), else from PATH."""
    try:
        return flower_bin(name)
    except FlowerProcessError as exc:
        raise SimulationError(str(exc)) from None


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
        (home / "config.toml").write_text(tomli_w.dumps(
            {"superlink": {"default": "fedprune", "fedprune": {"address": address, "insecure": True}}}))
        command = [
            _bin("flower-superlink"), "--insecure", "--simulation",
            "--disable-runtime-dependency-installation",
            "--host", "127.0.0.1", "--port", str(port),
            "--fleet-api-address", f"127.0.0.1:{free_port()}",
            "--database", str(home / "state.db"),
        ]
        owned = OwnedProcess.start("flower-superlink", command, _env(home, ray_address), home / "superlink.log")
        link = cls(home, address, owned.process, owned.log_path)
        try:
            owned.wait_listening(port, timeout)
        except FlowerProcessError as exc:
            link.stop()
            raise SimulationError(str(exc)) from None
        except BaseException:  # Ctrl-C / SIGTERM while it starts: never leave an orphaned SuperLink behind
            link.stop()
            raise
        return link

    def stop(self) -> None:
        """Stop the SuperLink and everything it spawned (its process group), by PID."""
        OwnedProcess("flower-superlink", self.process, self.log_path).stop()

    def flwr(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess:
        """Run a ``flwr`` CLI command against this SuperLink."""
        return run_flwr(self.home, *args, timeout=timeout, env=_env(self.home, None))


def _env(home: Path, ray_address: str | None) -> dict[str, str]:
    # Without --ray-address, always start a private Ray instance: never attach implicitly to a
    # cluster some other program started (or one that died and left /tmp/ray/ray_current_cluster).
    env = flower_env(home, {"RAY_ADDRESS": ray_address or "local"})
    env.setdefault("RAY_DISABLE_USAGE_STATS", "1")
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    return env


def run_simulation(settings: RunSettings, *, num_cpus_per_client: int = 1, num_gpus_per_client: float = 0.0,
                   ray_address: str | None = None, progress: Callable[[str], None] = print, poll_seconds: float = 0.5,
                   status_poll_seconds: float = 15.0, app_dir: Path | None = None) -> dict[str, Any]:
    """Run ``settings`` as a Ray simulation of ``settings.num_clients`` SuperNodes; return results.json.

    ``num_gpus_per_client``: Flower's ``client-resources-num-gpus`` (a fraction shares one GPU among clients).
    ``app_dir``: the Flower app to submit (``flower_app_dir()`` by default; tests submit wrappers of it)."""
    app_dir = app_dir or flower_app_dir()
    out_dir = Path(settings.out).expanduser().resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    settings_config = {**settings.to_run_config(), "out": str(out_dir)}
    results_path = out_dir / RESULTS_NAME
    if not settings.resume and results_path.exists():
        results_path.unlink()
    link = LocalSuperLink.start(ray_address=ray_address)
    completed = False
    try:
        federation = (f"num-supernodes={settings.num_clients} client-resources-num-cpus={num_cpus_per_client} "
                      f"client-resources-num-gpus={float(num_gpus_per_client)!r} backend=\"ray\" "
                      "init-args-logging-level=\"ERROR\"")
        started = link.flwr("run", str(app_dir), "fedprune", "--run-config", config_overrides(settings_config),
                            "--federation-config", federation, "--format", "json")
        try:
            run_id = submitted_run_id(started)
        except FlowerProcessError as exc:
            raise SimulationError(str(exc)) from None
        with ControlApi(link.address) as api:
            checks = status_checks(api, run_id, lambda: run_status(link.flwr, "fedprune", run_id))
            status, document = follow_run(checks, results_path, settings.rounds, progress,
                                          poll_seconds=poll_seconds, status_poll_seconds=status_poll_seconds)
        failure = run_failure(status, document)
        if failure is not None and (document or {}).get("error") is None:  # failed before it could say why
            cause = run_log_cause(link.flwr, "fedprune", run_id)
            failure += f"; the run's log says: {cause}" if cause else ""
        if failure is not None:
            raise SimulationError(
                f"run {run_id} failed: {failure} (results: {results_path}; log: {link.log_path}, "
                f"`FLWR_HOME={link.home} flwr log {run_id} fedprune`)")
        completed = True
        return document
    finally:
        link.stop()
        if completed:  # the SuperLink's home (state, logs) is only worth keeping when something went wrong
            shutil.rmtree(link.home, ignore_errors=True)
