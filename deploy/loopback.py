"""A whole deployment on this machine: SuperLink + N SuperNodes over TLS with node authentication.

``LoopbackDeployment`` does, on loopback ports, exactly what ``README.md`` ("Deploy") tells a
user to do on real hosts: create a CA, a SuperLink certificate and one key pair per node
(``deploy.certificates``); start the SuperLink with TLS, SuperNode authentication and a
state database (``deploy.launch``); register every node's public key through the TLS
Control API (``flwr supernode register``); start each SuperNode in gRPC-rere mode with the
root certificate, its private key and its node config; submit the fedprune app with
``flwr run``; follow ``results.json``; stop everything it started, by process group.

The SuperNodes reach the Fleet API through ``deploy.wire_meter.WireMeter``, a TCP proxy that
counts the bytes on the wire both ways (TLS records included), so a run reports per-round
wire bytes next to the ServerApp's per-message accounting.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fedprune.deploy.certificates import Material, create_certificates
from fedprune.deploy.launch import (
    FLOWER_IDLE_POLL,
    ServerTLS,
    register_command,
    superlink_command,
    warn_insecure,
    write_cli_connection,
)
from fedprune.deploy.wire_meter import RoundWire, WireMeter
from fedprune.protos.contract import NodeKey
from fedprune.server.results import RESULTS_NAME
from fedprune.server.run_config import RunSettings
from fedprune.simulation.flower_processes import (
    APP_DIR,
    FlowerProcessError,
    OwnedProcess,
    config_overrides,
    flower_app_dir,
    flower_env,
    follow_run,
    free_port,
    is_source_tree,
    run_failure,
    run_flwr,
    run_status,
    status_checks,
    submitted_run_id,
)
from fedprune.simulation.run_status import ControlApi

CONNECTION = "loopback"
WIRE_NAME = "wire.json"


class DeploymentError(FlowerProcessError):
    """The loopback deployment could not start or its run did not complete; the message says where to look."""


PORT_ATTEMPTS = 3


def _lost_port_race(node: OwnedProcess, port: int, timeout: float = 15.0) -> bool:
    """Whether ``node`` exited because its Runtime API ``port`` was taken meanwhile (then it is worth retrying);
    ``False`` once the port accepts connections, or the node exits for another reason, or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if node.process.poll() is not None:
            return "address already in use" in node.log_path.read_text(errors="replace")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return False
        except OSError:
            time.sleep(0.2)
    return False


def _env(home: Path) -> dict[str, str]:
    # Every process imports this checkout's packages (the FAB holds the same files).
    path = os.environ.get("PYTHONPATH", "")
    source = str(APP_DIR) if is_source_tree() else ""
    return flower_env(home, {"PYTHONPATH": os.pathsep.join(p for p in (source, path) if p)})


@dataclass
class LoopbackDeployment:
    """SuperLink + SuperNodes on this machine; ``start()``, then ``run()``/``submit()``, then ``stop()``."""

    workdir: Path
    num_nodes: int
    insecure: bool = False
    meter_wire: bool = True
    node_config: dict[str, Any] = field(default_factory=dict)
    keep_models: bool = False
    executor: str = "warm"  # fedprune deploy supernode --executor
    idle_poll: float = FLOWER_IDLE_POLL  # fedprune deploy supernode --idle-poll
    certs: Material | None = None
    superlink: OwnedProcess | None = None
    supernodes: list[OwnedProcess | None] = field(default_factory=list)
    meter: WireMeter | None = None

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir).expanduser().resolve()
        self.home = self.workdir / "flwr-home"  # the flwr CLI's connection (config.toml)
        self.fleet_port, self.control_port = free_port(), free_port()

    # -- lifecycle -------------------------------------------------------------

    def __enter__(self) -> LoopbackDeployment:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 90.0) -> LoopbackDeployment:
        """Certificates, SuperLink, node registration, wire meter, SuperNodes; stops all on failure."""
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            if self.insecure:
                warn_insecure()
            else:
                self.certs = create_certificates(self.workdir / "certs", ["localhost", "127.0.0.1"],
                                                 nodes=self.num_nodes, overwrite=True)
            write_cli_connection(self.home, CONNECTION, f"127.0.0.1:{self.control_port}",
                                 None if self.insecure else self.certs.ca_cert)
            self.start_superlink(timeout)
            if not self.insecure:
                for keys in self.certs.nodes:
                    self.register(keys.public_key)
            if self.meter_wire:
                self.meter = WireMeter(("127.0.0.1", self.fleet_port)).start()
            self.supernodes = [self.start_supernode(i) for i in range(self.num_nodes)]
            return self
        except BaseException:
            self.stop()
            raise

    @property
    def fleet_address(self) -> str:
        """Where SuperNodes connect: the wire meter if on, else the Fleet API itself."""
        return self.meter.address if self.meter else f"127.0.0.1:{self.fleet_port}"

    def start_superlink(self, timeout: float = 90.0) -> OwnedProcess:
        """Start (or restart: same ports, same state database) the SuperLink."""
        tls = None if self.insecure else ServerTLS(self.certs.ca_cert, self.certs.server_cert, self.certs.server_key)
        command = superlink_command(tls, fleet_address=f"127.0.0.1:{self.fleet_port}", control_host="127.0.0.1",
                                    control_port=self.control_port, database=self.workdir / "state.db")
        self.superlink = OwnedProcess.start("flower-superlink", command, _env(self.home),
                                            self.workdir / "superlink.log")
        self.superlink.wait_listening(self.control_port, timeout)
        self.superlink.wait_listening(self.fleet_port, timeout)
        return self.superlink

    def stop_superlink(self) -> None:
        """Stop the server side: the SuperLink and its process group (SuperExec, ServerApp)."""
        if self.superlink is not None:
            self.superlink.stop()

    def register(self, public_key: Path) -> int:
        """Register one node's public key through the TLS Control API; return its node id."""
        result = self.flwr(*register_command(public_key, CONNECTION)[1:])
        try:
            return int(json.loads(result.stdout)["node-id"])
        except (ValueError, KeyError, TypeError):
            raise DeploymentError(f"flwr supernode register failed:\n{result.stdout}\n{result.stderr}") from None

    def node_config_of(self, index: int) -> dict[str, Any]:
        """Node config of SuperNode ``index``: its partition, plus ``model-dir`` with ``keep_models``."""
        config = {NodeKey.PARTITION_ID: index, NodeKey.NUM_PARTITIONS: self.num_nodes, **self.node_config}
        if self.keep_models:
            config[NodeKey.MODEL_DIR] = str(self.workdir / f"node-{index}" / "models")
        return config

    def start_supernode(self, index: int, *, private_key: Path | None = None, root_cert: Path | None = None,
                        superlink: str | None = None, insecure: bool | None = None,
                        max_retries: int | None = None, name: str | None = None) -> OwnedProcess:
        """Start SuperNode ``index`` as a user does, with ``fedprune deploy supernode`` (the SuperNode and its
        executor; own FLWR_HOME and Runtime API port); overrides serve the refusal tests."""
        insecure = self.insecure if insecure is None else insecure
        node_dir = self.workdir / (name or f"node-{index}")
        if insecure:
            root_cert = private_key = None
        else:
            root_cert = root_cert or self.certs.ca_cert
            private_key = private_key or self.certs.nodes[index].private_key
        for _ in range(PORT_ATTEMPTS):  # a free port can be taken by another process before the node binds it
            port = free_port()
            command = self.supernode_command(index, superlink or self.fleet_address, root_cert, private_key, port,
                                             max_retries, node_dir)
            node = OwnedProcess.start(f"fedprune deploy supernode {name or index}", command,
                                      _env(node_dir / "flwr-home"), node_dir / "supernode.log")
            if not _lost_port_race(node, port):
                return node
        raise DeploymentError(f"SuperNode {name or index} found no free Runtime API port in "
                              f"{PORT_ATTEMPTS} attempts; see {node.log_path}")

    def supernode_command(self, index: int, superlink: str, root_cert: Path | None, private_key: Path | None,
                          runtime_port: int, max_retries: int | None, node_dir: Path) -> list[str]:
        """``fedprune deploy supernode`` for node ``index`` (this host's cores shared by all its SuperNodes)."""
        config = self.node_config_of(index)
        command = [sys.executable, "-m", "fedprune.cli", "deploy", "supernode", "--superlink", superlink,
                   "--partition-id", str(config.pop(NodeKey.PARTITION_ID)),
                   "--num-partitions", str(config.pop(NodeKey.NUM_PARTITIONS)),
                   "--runtime-port", str(runtime_port), "--executor", self.executor,
                   "--idle-poll", repr(self.idle_poll),
                   "--nodes-on-host", str(self.num_nodes), "--cache-dir", str(node_dir / "cache")]
        command += ["--insecure"] if root_cert is None else ["--root-cert", str(root_cert), "--key", str(private_key)]
        if max_retries is not None:
            command += ["--max-retries", str(max_retries)]
        for key, value in config.items():
            command += ["--set", f"{key}={value}"]
        return command

    def kill_supernode(self, index: int) -> None:
        """Kill SuperNode ``index`` and its ClientApp processes at once (SIGKILL, like a device losing power)."""
        import signal

        node = self.supernodes[index]
        if node is not None:
            node.stop(signal.SIGKILL, timeout=5)

    def stop(self) -> None:
        """Stop every SuperNode, the SuperLink and the wire meter this deployment started."""
        for node in self.supernodes:
            if node is not None:
                node.stop()
        self.stop_superlink()
        if self.meter is not None:
            self.meter.stop()

    # -- runs ------------------------------------------------------------------

    def flwr(self, *args: str, timeout: float = 120.0):
        """A ``flwr`` CLI command against this deployment's SuperLink (TLS connection ``loopback``)."""
        return run_flwr(self.home, *args, timeout=timeout, env=_env(self.home))

    def online_nodes(self) -> int:
        """How many registered SuperNodes the SuperLink sees online."""
        listing = self.flwr("supernode", "list", CONNECTION, "--format", "json")
        try:
            nodes = json.loads(listing.stdout).get("nodes", [])
        except json.JSONDecodeError:
            return 0
        return sum(1 for node in nodes if node.get("status") == "online")

    def submit(self, settings: RunSettings) -> int:
        """``flwr run`` the fedprune app (this checkout) with ``settings`` as run config; return the run id."""
        out = str(Path(settings.out).expanduser().resolve())
        overrides = config_overrides({**settings.to_run_config(), "out": out})
        started = self.flwr("run", str(flower_app_dir()), CONNECTION, "--run-config", overrides, "--format", "json")
        return submitted_run_id(started)

    def follow(self, run_id: int, settings: RunSettings, progress: Callable[[str], None] = print, *,
               timeout: float | None = None, on_poll: Callable[[dict[str, Any] | None], Any] | None = None,
               poll_seconds: float = 0.25) -> tuple[str, dict[str, Any] | None]:
        """Follow the run's results.json until the SuperLink reports it finished (see ``follow_run``)."""
        results = Path(settings.out).expanduser().resolve() / RESULTS_NAME
        root = None if self.insecure else self.certs.ca_cert
        with ControlApi(f"127.0.0.1:{self.control_port}", root) as api:
            checks = status_checks(api, run_id, lambda: run_status(self.flwr, CONNECTION, run_id))
            return follow_run(checks, results, settings.rounds, progress, poll_seconds=poll_seconds,
                              status_poll_seconds=10.0, timeout=timeout, on_poll=on_poll)

    def run(self, settings: RunSettings, progress: Callable[[str], None] = print,
            timeout: float | None = None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Run ``settings`` to completion; return (results.json, wire bytes per round)."""
        if settings.num_clients != self.num_nodes:
            raise DeploymentError(f"the run expects {settings.num_clients} clients; this deployment has "
                                  f"{self.num_nodes} SuperNodes (set num-clients to match)")
        out_dir = Path(settings.out).expanduser().resolve()
        out_dir.mkdir(parents=True, exist_ok=True)
        if not settings.resume and (out_dir / RESULTS_NAME).exists():
            (out_dir / RESULTS_NAME).unlink()
        wire = RoundWire(self.meter, out_dir / RESULTS_NAME).start()
        try:
            run_id = self.submit(settings)
            status, document = self.follow(run_id, settings, progress, timeout=timeout)
        finally:
            wire.stop()
        failure = run_failure(status, document)
        if failure is not None:
            raise DeploymentError(f"run {run_id} failed: {failure}; see {self.workdir}/*.log "
                                  f"(`FLWR_HOME={self.home} flwr log {run_id} {CONNECTION}`)")
        (out_dir / WIRE_NAME).write_text(json.dumps(wire.rounds, indent=1))
        return document, wire.rounds


def run_loopback(settings: RunSettings, *, workdir: str | Path | None = None, insecure: bool = False,
                 keep_models: bool = False, progress: Callable[[str], None] = print,
                 timeout: float | None = None, executor: str = "warm",
                 idle_poll: float = FLOWER_IDLE_POLL) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Start a loopback deployment with ``settings.num_clients`` SuperNodes, run to completion, stop it.
    ``executor``: what runs the nodes' ClientApps (``warm``, or ``flower``: Flower's own executor);
    ``idle_poll``: seconds an idle SuperNode waits between pulls."""
    workdir = Path(workdir or tempfile.mkdtemp(prefix="fedprune-loopback-"))
    deployment = LoopbackDeployment(workdir, settings.num_clients, insecure=insecure, keep_models=keep_models,
                                    executor=executor, idle_poll=idle_poll)
    with deployment:
        security = "insecure" if insecure else "TLS + node auth"
        progress(f"SuperLink ({security}) Fleet API 127.0.0.1:{deployment.fleet_port}, {settings.num_clients} "
                 f"SuperNodes via {deployment.fleet_address}; logs in {workdir}")
        return deployment.run(settings, progress, timeout=timeout)

