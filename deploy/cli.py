"""What ``fedprune deploy certs|register|superlink|supernode|run|loopback|serve`` and ``fedprune predict`` do.

Their options are declared in ``deploy.arguments``; ``serve`` and ``predict`` live in ``deploy.edge_commands``.
``superlink`` and ``supernode`` build the exact Flower command line (``deploy.launch``) and
replace this process with it (so systemd or a container supervises Flower itself);
``--print`` shows the command instead. Secure is the default: ``--insecure`` is explicit and
prints a warning.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from fedprune.deploy.address_checks import check_address, check_host, check_port
from fedprune.deploy.certificates import CertificateError, create_certificates
from fedprune.deploy.edge_commands import cmd_predict, cmd_serve
from fedprune.deploy.launch import (
    ServerTLS,
    executor_command,
    shell_line,
    superlink_command,
    supernode_command,
    warn_insecure,
    write_cli_connection,
)
from fedprune.deploy.loopback import DeploymentError, run_loopback
from fedprune.deploy.node_supervisor import run_node
from fedprune.models.device import DeviceError, resolve_device
from fedprune.protos.contract import NodeKey
from fedprune.server.results import RESULTS_NAME, human_bytes
from fedprune.server.run_config import ConfigError
from fedprune.simulation.flower_processes import (
    config_overrides,
    flower_app_dir,
    flower_env,
    follow_run,
    run_flwr,
    run_status,
    status_checks,
    submitted_run_id,
)
from fedprune.simulation.run_status import ControlApi

from fedprune.run_options import check_dataset, settings_from_args

_CONFIG_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _parse_set(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` entries as node config (numbers as numbers; keys plain enough for Flower's TOML)."""
    values: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError("set", f"'{item}' is not KEY=VALUE")
        if not _CONFIG_KEY.fullmatch(key):
            raise ConfigError("set", f"key {key!r} may only use letters, digits, '-' and '_'")
        for kind in (int, float):
            try:
                values[key] = kind(raw)
                break
            except ValueError:
                continue
        else:
            values[key] = raw
    return values


def _connection(args: argparse.Namespace) -> tuple[Path, str]:
    """Write the flwr CLI connection to the SuperLink's Control API; (its FLWR_HOME, the connection's name)."""
    check_address("superlink-address", args.superlink_address)
    if args.insecure:
        warn_insecure()
    elif not args.root_cert:
        raise ConfigError("root-cert", "give the deployment CA certificate (or --insecure)")
    elif not Path(args.root_cert).is_file():
        raise ConfigError("root-cert", f"{args.root_cert} does not exist")
    home = Path(args.flwr_home or Path.home() / ".fedprune" / "flwr-home").expanduser().resolve()
    write_cli_connection(home, "fedprune-deploy", args.superlink_address, None if args.insecure else args.root_cert)
    return home, "fedprune-deploy"


def _exec(command: list[str], print_only: bool) -> int:
    """Print ``command`` (``--print``) or replace this process with it."""
    if print_only:
        print(shell_line(command))
        return 0
    env = flower_env(Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr")))
    os.execvpe(command[0], command, env)  # systemd / docker supervise Flower itself
    return 0  # not reached


CERTIFICATE_OPTIONS = {"directory": "out", "hosts": "hosts", "nodes": "nodes", "node_names": "node-names",
                       "days": "days"}


def cmd_certs(args: argparse.Namespace) -> int:
    """Create the CA, the SuperLink certificate and the nodes' key pairs; say where each went."""
    given = [n.strip() for n in args.node_names.split(",") if n.strip()]
    if given and args.nodes:
        raise ConfigError("node-names", "give --nodes N or --node-names, not both")
    names: list[str] | int = given or args.nodes
    try:
        material = create_certificates(args.out, args.hosts.split(","), names, days=args.days,
                                       overwrite=args.overwrite)
    except CertificateError as exc:
        raise ConfigError(CERTIFICATE_OPTIONS.get(exc.argument, "out"), str(exc)) from None
    except OSError as exc:
        raise ConfigError("out", f"{exc.filename or args.out}: {exc.strerror or exc}") from None
    print(f"CA            {material.ca_cert}  (give to every SuperNode and flwr CLI)")
    print(f"CA key        {material.ca_key}  (signs everything: keep it off every server and device)")
    print(f"SuperLink     {material.server_cert}, {material.server_key}  (SANs: {args.hosts})")
    for keys in material.nodes:
        print(f"node {keys.name:<8} {keys.private_key} (private, to that device only), {keys.public_key}")
    print(f"private keys are 0600 under {material.directory}; never commit them or put them in an image")
    return 0


def cmd_register(args: argparse.Namespace) -> int:
    """Register each public key with the SuperLink; exit 1 if any registration failed."""
    home, connection = _connection(args)
    failed = 0
    for key in args.public_keys:
        result = run_flwr(home, "supernode", "register", str(Path(key).resolve()), connection, "--format", "json")
        try:
            print(f"{key}: node id {json.loads(result.stdout)['node-id']}")
        except (ValueError, KeyError, TypeError):
            print(f"{key}: registration failed: {result.stdout.strip()} {result.stderr.strip()}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


def cmd_superlink(args: argparse.Namespace) -> int:
    """Start (or print) the SuperLink: TLS and node authentication unless ``--insecure``."""
    check_address("fleet-address", args.fleet_address)
    check_host("control-host", args.control_host)
    check_port("control-port", args.control_port)
    tls = None
    if args.insecure:
        warn_insecure()
    else:
        tls = ServerTLS.from_directory(args.certs)
        try:
            tls.check()
        except FileNotFoundError as exc:
            raise ConfigError("certs", str(exc)) from None
    command = superlink_command(tls, fleet_address=args.fleet_address, control_host=args.control_host,
                                control_port=args.control_port, database=Path(args.database).expanduser().resolve())
    return _exec(command, args.print_only)


def node_config_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The node config ``fedprune deploy supernode`` gives its SuperNode (checked; ``--set`` last)."""
    if not 0 <= args.partition_id < args.num_partitions:
        raise ConfigError("partition-id", f"{args.partition_id} is outside [0, {args.num_partitions})")
    if args.nodes_on_host < 1:
        raise ConfigError("nodes-on-host", f"must be at least 1, got {args.nodes_on_host}")
    if args.num_threads < 0:
        raise ConfigError("num-threads", f"must be 0 (automatic) or more, got {args.num_threads}")
    threads = args.num_threads or max(1, (os.cpu_count() or 1) // args.nodes_on_host)
    node_config: dict[str, Any] = {NodeKey.PARTITION_ID: args.partition_id,
                                   NodeKey.NUM_PARTITIONS: args.num_partitions, NodeKey.NUM_THREADS: threads}
    if args.cache_dir:
        node_config[NodeKey.CACHE_DIR] = str(Path(args.cache_dir).expanduser().resolve())
    if args.device is not None:
        try:
            resolve_device(args.device)  # cuda on a host without one stops here, not at the first message
        except DeviceError as exc:
            raise ConfigError("device", str(exc)) from None
        node_config[NodeKey.DEVICE] = args.device
    if args.data_path:
        node_config[NodeKey.DATA_PATH] = str(Path(args.data_path).expanduser().resolve())
    if args.model_dir:
        node_config[NodeKey.MODEL_DIR] = str(Path(args.model_dir).expanduser().resolve())
    node_config.update(_parse_set(args.set))
    return node_config


def cmd_supernode(args: argparse.Namespace) -> int:
    """Start (or print) a SuperNode with its partition, data, model-dir and ``--set`` node config, and the
    executor of its ClientApps (the warm one by default, supervised by this process)."""
    check_address("superlink", args.superlink)
    check_port("runtime-port", args.runtime_port)
    if args.insecure:
        warn_insecure()
        root, key = None, None
    else:
        for option, value in (("root-cert", args.root_cert), ("key", args.key)):
            if not value:
                raise ConfigError(option, "required unless --insecure (secure is the default)")
            if not Path(value).expanduser().is_file():
                raise ConfigError(option, f"{value} does not exist")
        root, key = Path(args.root_cert).expanduser().resolve(), Path(args.key).expanduser().resolve()
    node_config = node_config_from_args(args)
    if not 0.05 <= args.idle_poll <= 60:
        raise ConfigError("idle-poll", f"{args.idle_poll}: give 0.05 to 60 seconds")

    def supernode(secret: Path | None) -> list[str]:
        return supernode_command(args.superlink, root_cert=root, private_key=key, node_config=node_config,
                                 runtime_port=args.runtime_port, max_retries=args.max_retries, auth_secret=secret,
                                 idle_poll=args.idle_poll)

    if args.executor == "flower":
        return _exec(supernode(None), args.print_only)
    if args.print_only:
        secret = Path("SECRET_FILE")
        print(shell_line(supernode(secret)))
        print(shell_line(executor_command("warm", args.runtime_port, secret, "SUPERVISOR_PID")))
        return 0
    env = flower_env(Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr")))
    return run_node(supernode, lambda kind, secret: executor_command(kind, args.runtime_port, secret, os.getpid()),
                    args.runtime_port, env)


def cmd_run(args: argparse.Namespace) -> int:
    """Submit the ServerApp to a running SuperLink and follow it (exit 1 unless it completed)."""
    settings = settings_from_args(args, local_out=False)  # --out is on the SuperLink host
    home, connection = _connection(args)
    started = run_flwr(home, "run", str(flower_app_dir()), connection, "--run-config",
                       config_overrides(settings.to_run_config()), "--format", "json")
    run_id = submitted_run_id(started)
    print(f"submitted run {run_id}; results and checkpoints go to {settings.out} on the SuperLink host", flush=True)
    if args.no_follow:
        return 0
    with ControlApi(args.superlink_address, None if args.insecure else Path(args.root_cert)) as api:
        checks = status_checks(api, run_id, lambda: run_status(lambda *a: run_flwr(home, *a), connection, run_id))
        status, document = follow_run(checks, Path(settings.out) / RESULTS_NAME, settings.rounds,
                                      lambda line: print(line, flush=True))
    print(f"run {run_id}: {status}")
    return 0 if status == "finished:completed" else 1


def cmd_loopback(args: argparse.Namespace) -> int:
    """Run a whole deployment on this machine (SuperLink + SuperNodes) and print its bytes on the wire."""
    settings = settings_from_args(args)
    check_dataset(settings)
    try:
        document, wire = run_loopback(settings, workdir=args.workdir, insecure=args.insecure,
                                      keep_models=args.keep_models, progress=lambda line: print(line, flush=True),
                                      timeout=args.timeout, executor=args.executor, idle_poll=args.idle_poll)
    except DeploymentError as exc:
        print(f"fedprune deploy loopback: {exc}", file=sys.stderr)
        return 1
    for entry in wire:
        print(f"round {entry['round']:>3} on the wire: up {human_bytes(entry['wire_uplink_bytes'])}, "
              f"down {human_bytes(entry['wire_downlink_bytes'])}")
    s = document["summary"]
    print(f"final accuracy {s['final_accuracy']:.4f}; wrote {Path(settings.out) / 'results.json'} and wire.json")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    """Run the ``deploy`` subcommand the arguments name."""
    handlers = {"certs": cmd_certs, "register": cmd_register, "superlink": cmd_superlink,
                "supernode": cmd_supernode, "run": cmd_run, "loopback": cmd_loopback, "serve": cmd_serve}
    return handlers[args.deploy_command](args)


HANDLERS = {"deploy": cmd_deploy, "predict": cmd_predict}
