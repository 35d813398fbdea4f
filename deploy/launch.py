"""Exact command lines for the server side (SuperLink) and an edge client (SuperNode), secure by default.

Secure means: TLS on every SuperLink API with the certificates from ``deploy.certificates``,
SuperNode authentication (only registered public keys may connect), a persistent state
database (registrations and runs survive a restart). Insecure is possible only with an
explicit flag, and then a warning is printed, because anyone on the network can then read
the traffic and any process can pose as a SuperNode.

Flags verified against the installed flwr 1.39.0 binaries (``flower-superlink --help``,
``flower-supernode --help``, ``flwr supernode register --help``).
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import tomli_w
from fedprune.deploy.certificates import CA_CERT, SERVER_CERT, SERVER_KEY
from fedprune.protos.contract import NodeKey
from fedprune.simulation.flower_processes import config_overrides, flower_bin

DEFAULT_FLEET_PORT = 9092  # gRPC Fleet API (SuperNodes connect here)
DEFAULT_CONTROL_PORT = 9093  # HTTP Control + Runtime API (flwr CLI and the ServerApp connect here)
FLOWER_IDLE_POLL = 3.0  # seconds an idle Flower 1.39 SuperNode waits between pulls
DEFAULT_RUNTIME_PORT = 9094  # a SuperNode's own Runtime API for its ClientApp processes (local only)
INSECURE_WARNING = ("WARNING: --insecure: traffic is not encrypted and SuperNodes are not authenticated; "
                    "anyone on the network can read model updates and join as a client. Use only on a "
                    "trusted network for testing.")

# Keys an edge node's --node-config understands (README "Deploy" documents them).
NODE_CONFIG_KEYS = {
    NodeKey.PARTITION_ID: "this node's partition of the run's dataset (0-based); also its id in results.json",
    NodeKey.NUM_PARTITIONS: "number of partitions (must equal the run's num-clients)",
    NodeKey.DATA_PATH: "optional .npz with this node's own data (x, y[, x_test, y_test]) instead of a partition",
    NodeKey.MODEL_DIR: "optional directory where the node keeps its latest trained model for edge inference",
    NodeKey.NUM_THREADS: "torch threads a ClientApp uses (default: the host's cores / SuperNodes on it)",
    NodeKey.CACHE_DIR: "node-local cache of the node's data partition (checked by digest on every use)",
    NodeKey.DEVICE: "auto | cpu | cuda: where the node's ClientApps train (default: the run's device option)",
}


def warn_insecure(stream: TextIO | None = None) -> None:
    """Print the insecure-mode warning (to stderr by default)."""
    print(INSECURE_WARNING, file=stream or sys.stderr, flush=True)


@dataclass(frozen=True)
class ServerTLS:
    """The SuperLink's TLS material: CA certificate, server certificate and key."""

    ca_cert: Path
    server_cert: Path
    server_key: Path

    @classmethod
    def from_directory(cls, directory: str | Path) -> ServerTLS:
        d = Path(directory).expanduser().resolve()
        return cls(d / CA_CERT, d / SERVER_CERT, d / SERVER_KEY)

    def check(self) -> None:
        for path in (self.ca_cert, self.server_cert, self.server_key):
            if not path.is_file():
                raise FileNotFoundError(f"{path} does not exist; create it with `fedprune deploy certs`")


def superlink_command(tls: ServerTLS | None, *, fleet_address: str = f"0.0.0.0:{DEFAULT_FLEET_PORT}",
                      control_host: str = "0.0.0.0", control_port: int = DEFAULT_CONTROL_PORT,
                      database: str | Path = "state.db", node_auth: bool = True,
                      dependency_installation: bool = False) -> list[str]:
    """``flower-superlink`` in deployment mode: gRPC-rere Fleet API, TLS, node auth, state database.

    ``tls=None`` means insecure (no TLS, hence no node authentication either: Flower refuses it).
    """
    command = [flower_bin("flower-superlink")]
    if tls is None:
        command.append("--insecure")
    else:
        command += ["--ssl-ca-certfile", str(tls.ca_cert), "--ssl-certfile", str(tls.server_cert),
                    "--ssl-keyfile", str(tls.server_key)]
        if node_auth:
            command.append("--enable-supernode-auth")
    command += ["--fleet-api-type", "grpc-rere", "--fleet-api-address", fleet_address,
                "--host", control_host, "--port", str(control_port), "--database", str(database)]
    if not dependency_installation:
        # The app's dependencies are installed with fedprune itself; never `uv sync` per run.
        command.append("--disable-runtime-dependency-installation")
    return command


def node_config_string(values: Mapping[str, Any]) -> str:
    """The ``--node-config`` value (space-separated ``key=value`` with TOML values)."""
    return config_overrides(dict(values))


def supernode_command(superlink: str, *, root_cert: str | Path | None, private_key: str | Path | None,
                      node_config: Mapping[str, Any], runtime_port: int = DEFAULT_RUNTIME_PORT,
                      max_retries: int | None = None, max_wait_time: float | None = None,
                      auth_secret: str | Path | None = None, idle_poll: float = FLOWER_IDLE_POLL) -> list[str]:
    """``flower-supernode`` for an edge client: gRPC-rere to ``superlink`` (the Fleet API address).

    ``root_cert=None`` means insecure (and then no ``private_key``: authentication needs TLS).
    The SuperNode's Runtime API (for its executor and ClientApp processes) stays on 127.0.0.1.
    With ``auth_secret`` the node runs ``--isolation process``: an executor started beside it
    (``executor_command``) runs its ClientApps, authenticated with that secret file; without it, the
    node starts Flower's own executor (one ``flwr-clientapp`` process per message). Flower's SuperNode runs
    through ``deploy.supernode_process`` (a message of an ended run dropped whole; ``idle_poll``: seconds an
    idle node waits between pulls, Flower's 3 s by default).
    """
    command = [sys.executable, "-m", "fedprune.deploy.supernode_process", "--idle-poll", repr(idle_poll), "--",
               "--grpc-rere", "--superlink", superlink]
    if root_cert is None:
        if private_key is not None:
            raise ValueError("node authentication needs TLS: give the root certificate, or no private key")
        command.append("--insecure")
    else:
        command += ["--root-certificates", str(root_cert)]
        if private_key is not None:
            command += ["--auth-supernode-private-key", str(private_key)]
    command += ["--node-config", node_config_string(node_config), "--host", "127.0.0.1",
                "--port", str(runtime_port)]
    if auth_secret is not None:
        command += ["--isolation", "process", "--superexec-auth-secret-file", str(auth_secret)]
    if max_retries is not None:
        command += ["--max-retries", str(max_retries)]
    if max_wait_time is not None:
        command += ["--max-wait-time", str(max_wait_time)]
    return command


def executor_command(kind: str, runtime_port: int, auth_secret: str | Path, parent_pid: int | str) -> list[str]:
    """The executor beside a ``--isolation process`` SuperNode: ``warm`` (``deploy.warm_executor``: ClientApps
    in children forked from a process with torch imported) or ``flower`` (``flower-superexec``)."""
    address = f"127.0.0.1:{runtime_port}"
    common = ["--runtime-api-address", address, "--superexec-auth-secret-file", str(auth_secret),
              "--parent-pid", str(parent_pid)]
    if kind == "warm":
        return [sys.executable, "-m", "fedprune.deploy.warm_executor", *common]
    if kind == "flower":
        return [flower_bin("flower-superexec"), "--insecure", *common]
    raise ValueError(f"unknown executor {kind!r} (warm or flower)")


def cli_connection_toml(name: str, control_address: str, root_cert: str | Path | None) -> str:
    """A ``[superlink.<name>]`` block for ``$FLWR_HOME/config.toml`` (flwr run / ls / supernode register).

    Written with a TOML writer, never by formatting strings: a quote or newline in an address or
    path stays inside its string value and cannot add keys such as ``insecure = true``.
    """
    connection: dict[str, Any] = {"address": control_address}
    if root_cert is None:
        connection["insecure"] = True
    else:
        connection["root-certificates"] = str(Path(root_cert).expanduser().resolve())
    return tomli_w.dumps({"superlink": {"default": name, name: connection}})


def write_cli_connection(flwr_home: Path, name: str, control_address: str, root_cert: str | Path | None) -> Path:
    """Write ``flwr_home/config.toml`` with one connection named ``name`` (made the default)."""
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    path.write_text(cli_connection_toml(name, control_address, root_cert))
    return path


def register_command(public_key: str | Path, connection: str) -> list[str]:
    """``flwr supernode register`` for one node's public key (through the TLS Control API)."""
    return [flower_bin("flwr"), "supernode", "register", str(public_key), connection, "--format", "json"]


def run_command(app_dir: str | Path, connection: str, run_config: Mapping[str, Any]) -> list[str]:
    """``flwr run`` of the fedprune app on a deployed SuperLink (ServerApp with checkpoints in ``out``)."""
    return [flower_bin("flwr"), "run", str(app_dir), connection, "--run-config",
            config_overrides(dict(run_config)), "--format", "json"]


def shell_line(command: list[str]) -> str:
    """``command`` quoted for a POSIX shell (what `--print` shows a user)."""
    import shlex

    return " ".join(shlex.quote(part) for part in command)
