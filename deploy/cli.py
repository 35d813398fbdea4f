"""``fedprune deploy certs|register|superlink|supernode|run|loopback|serve`` and ``fedprune predict``.

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

from fedprune.client.edge_inference import (
    DEFAULT_MAX_BATCH,
    DEFAULT_PORT,
    LARGEST_MAX_BATCH,
    EdgeInferenceServer,
    describe,
    is_loopback_host,
    predict,
)
from fedprune.data import load_dataset
from fedprune.deploy.certificates import CertificateError, create_certificates
from fedprune.deploy.launch import (
    DEFAULT_CONTROL_PORT,
    DEFAULT_FLEET_PORT,
    DEFAULT_RUNTIME_PORT,
    NODE_CONFIG_KEYS,
    ServerTLS,
    shell_line,
    superlink_command,
    supernode_command,
    warn_insecure,
    write_cli_connection,
)
from fedprune.deploy.loopback import DeploymentError, run_loopback
from fedprune.server.results import RESULTS_NAME, human_bytes
from fedprune.server.run_config import ConfigError
from fedprune.simulation.flower_processes import (
    config_overrides,
    flower_app_dir,
    flower_env,
    follow_run,
    run_flwr,
    submitted_run_id,
)

from fedprune.run_options import add_run_options, check_dataset, settings_from_args

KEY_VALUE_HELP = "extra node config entry KEY=VALUE (repeatable), e.g. a budget the strategy reads"
_HOST = re.compile(r"[A-Za-z0-9_.-]+|\[[0-9A-Fa-f:.]+\]")  # a name, IPv4, or [IPv6]
_CONFIG_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _check_port(option: str, port: int) -> None:
    if not 1 <= port <= 65535:
        raise ConfigError(option, f"{port} is not a port; give 1-65535")


def _check_host(option: str, host: str) -> None:
    """A listen host: a DNS name or IP address (IPv6 with or without brackets)."""
    if not _HOST.fullmatch(host) and not _HOST.fullmatch(f"[{host}]"):
        raise ConfigError(option, f"{host!r} is not a DNS name or IP address")


def _check_address(option: str, address: str) -> None:
    """``HOST:PORT`` (IPv6 in brackets) and nothing else: it ends up in Flower's TOML and command lines."""
    host, sep, port = address.rpartition(":")
    if not sep or not _HOST.fullmatch(host) or not (port.isascii() and port.isdigit()) \
            or not 1 <= int(port) <= 65535:
        raise ConfigError(option, f"{address!r} is not HOST:PORT (a DNS name or IP address, a port 1-65535)")


def _parse_set(items: list[str]) -> dict[str, Any]:
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


def add_deploy_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``deploy`` (with its subcommands) and ``predict`` on the top-level parser."""


    fmt = argparse.ArgumentDefaultsHelpFormatter
    deploy = sub.add_parser("deploy", help="real deployment: certificates, SuperLink, SuperNodes, loopback, serve")
    steps = deploy.add_subparsers(dest="deploy_command", required=True)

    certs = steps.add_parser("certs", formatter_class=fmt,
                             help="create a CA, the SuperLink certificate and one auth key pair per edge node")
    certs.add_argument("--out", required=True,
                       help="directory for the material (created 0700 if new, an existing one keeps its mode; "
                            "keys 0600)")
    certs.add_argument("--hosts", default="localhost,127.0.0.1",
                       help="comma-separated DNS names / IPs the SuperLink is reached under (certificate SANs)")
    certs.add_argument("--nodes", type=int, default=0, help="key pairs named node-0 ... node-(N-1)")
    certs.add_argument("--node-names", default="", help="comma-separated node names (instead of --nodes)")
    certs.add_argument("--days", type=int, default=365, help="validity of the certificates")
    certs.add_argument("--overwrite", action="store_true", help="replace existing material in --out")

    register = steps.add_parser("register", formatter_class=fmt,
                                help="register edge nodes' public keys with the SuperLink (flwr supernode register)")
    register.add_argument("public_keys", nargs="+", help="nodes/<name>.pub files")
    _connection_options(register, DEFAULT_CONTROL_PORT)

    link = steps.add_parser("superlink", formatter_class=fmt,
                            help="start the SuperLink: TLS, SuperNode authentication, state database")
    link.add_argument("--certs", default="certs", help="directory from `deploy certs` (ca.crt, server.crt/key)")
    link.add_argument("--fleet-address", default=f"0.0.0.0:{DEFAULT_FLEET_PORT}", help="gRPC Fleet API (SuperNodes)")
    link.add_argument("--control-host", default="0.0.0.0", help="Control/Runtime API host (flwr CLI)")
    link.add_argument("--control-port", type=int, default=DEFAULT_CONTROL_PORT, help="Control/Runtime API port")
    link.add_argument("--database", default="state.db", help="SQLite state (registrations, runs) kept across restarts")
    link.add_argument("--insecure", action="store_true", help="no TLS, no node authentication (prints a warning)")
    link.add_argument("--print", action="store_true", dest="print_only", help="print the command, do not start it")

    keys = "; ".join(f"{key}: {meaning}" for key, meaning in NODE_CONFIG_KEYS.items())
    node = steps.add_parser("supernode", formatter_class=fmt, help="start an edge client (SuperNode)",
                            epilog=f"node config keys -- {keys}")
    node.add_argument("--superlink", required=True,
                      help=f"SuperLink Fleet API HOST:PORT (usually :{DEFAULT_FLEET_PORT})")
    node.add_argument("--root-cert", default=None, help="the deployment CA certificate (ca.crt)")
    node.add_argument("--key", default=None, help="this node's private key (nodes/<name>)")
    node.add_argument("--partition-id", type=int, required=True, help="this node's partition / id (0-based)")
    node.add_argument("--num-partitions", type=int, required=True, help="must equal the run's num-clients")
    node.add_argument("--data-path", default=None, help=".npz with this node's own data (x, y[, x_test, y_test])")
    node.add_argument("--model-dir", default=None, help="keep the latest trained model here for `deploy serve`")
    node.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=KEY_VALUE_HELP)
    node.add_argument("--runtime-port", type=int, default=DEFAULT_RUNTIME_PORT,
                      help="the SuperNode's local Runtime API port (distinct per SuperNode on one host)")
    node.add_argument("--insecure", action="store_true", help="no TLS, no authentication (prints a warning)")
    node.add_argument("--print", action="store_true", dest="print_only", help="print the command, do not start it")

    run = steps.add_parser("run", formatter_class=fmt,
                           help="submit the fedprune ServerApp to a running SuperLink (checkpoints in --out)")
    add_run_options(run)
    _connection_options(run, DEFAULT_CONTROL_PORT)
    run.add_argument("--no-follow", action="store_true", help="submit and return (do not follow results.json)")

    loop = steps.add_parser("loopback", formatter_class=fmt,
                            help="SuperLink + N SuperNodes on this machine over TLS with node auth; run to the end")
    add_run_options(loop)
    loop.add_argument("--workdir", default=None, help="certificates, logs, state database (default: a temp dir)")
    loop.add_argument("--keep-models", action="store_true", help="SuperNodes keep their models (model-dir)")
    loop.add_argument("--insecure", action="store_true", help="no TLS, no node authentication (prints a warning)")
    loop.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")

    serve = steps.add_parser("serve", formatter_class=fmt,
                             help="serve the node's latest trained model to local applications over gRPC")
    serve.add_argument("--model-dir", required=True, help="the SuperNode's model-dir")
    serve.add_argument("--host", default="127.0.0.1",
                       help="listen address; anything but loopback needs --insecure (the service has no TLS)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="listen port (1-65535)")
    serve.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                       help=f"largest batch a request may carry (1-{LARGEST_MAX_BATCH})")
    serve.add_argument("--insecure", action="store_true",
                       help="allow a non-loopback --host: plaintext, anyone reaching it can query (prints a warning)")

    predict = sub.add_parser("predict", formatter_class=fmt, help="ask an edge inference server for predictions")
    predict.add_argument("--address", default=f"127.0.0.1:{DEFAULT_PORT}")
    source = predict.add_mutually_exclusive_group()
    source.add_argument("--npy", default=None, help=".npy numeric batch shaped (N, C, H, W); no pickles")
    source.add_argument("--dataset", default=None, help="send the first --count test images of this dataset")
    predict.add_argument("--dataset-path", default="", help="dataset directory (default: its standard place)")
    predict.add_argument("--count", type=int, default=8)
    predict.add_argument("--describe", action="store_true", help="only describe the served model")


def _connection_options(p: argparse.ArgumentParser, control_port: int) -> None:
    p.add_argument("--superlink-address", default=f"127.0.0.1:{control_port}",
                   help="the SuperLink's Control API HOST:PORT")
    p.add_argument("--root-cert", default=None, help="the deployment CA certificate (ca.crt)")
    p.add_argument("--insecure", action="store_true", help="plain-text Control API (prints a warning)")
    p.add_argument("--flwr-home", default=None,
                   help="where the flwr CLI connection is written (default: ~/.fedprune/flwr-home)")


def _connection(args: argparse.Namespace) -> tuple[Path, str]:

    _check_address("superlink-address", args.superlink_address)
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

    if print_only:
        print(shell_line(command))
        return 0
    env = flower_env(Path(os.environ.get("FLWR_HOME", Path.home() / ".flwr")))
    os.execvpe(command[0], command, env)  # systemd / docker supervise Flower itself
    return 0  # not reached


CERTIFICATE_OPTIONS = {"directory": "out", "hosts": "hosts", "nodes": "nodes", "node_names": "node-names",
                       "days": "days"}


def cmd_certs(args: argparse.Namespace) -> int:

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

    _check_address("fleet-address", args.fleet_address)
    _check_host("control-host", args.control_host)
    _check_port("control-port", args.control_port)
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


def cmd_supernode(args: argparse.Namespace) -> int:

    _check_address("superlink", args.superlink)
    _check_port("runtime-port", args.runtime_port)
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
    if not 0 <= args.partition_id < args.num_partitions:
        raise ConfigError("partition-id", f"{args.partition_id} is outside [0, {args.num_partitions})")
    node_config: dict[str, Any] = {"partition-id": args.partition_id, "num-partitions": args.num_partitions}
    if args.data_path:
        node_config["data-path"] = str(Path(args.data_path).expanduser().resolve())
    if args.model_dir:
        node_config["model-dir"] = str(Path(args.model_dir).expanduser().resolve())
    node_config.update(_parse_set(args.set))
    command = supernode_command(args.superlink, root_cert=root, private_key=key, node_config=node_config,
                                runtime_port=args.runtime_port)
    return _exec(command, args.print_only)


def cmd_run(args: argparse.Namespace) -> int:


    settings = settings_from_args(args, local_out=False)  # --out is on the SuperLink host
    home, connection = _connection(args)
    started = run_flwr(home, "run", str(flower_app_dir()), connection, "--run-config",
                       config_overrides(settings.to_run_config()), "--format", "json")
    run_id = submitted_run_id(started)
    print(f"submitted run {run_id}; results and checkpoints go to {settings.out} on the SuperLink host", flush=True)
    if args.no_follow:
        return 0
    status, document = follow_run(lambda *a: run_flwr(home, *a), connection, run_id,
                                  Path(settings.out) / RESULTS_NAME, settings.rounds,
                                  lambda line: print(line, flush=True))
    print(f"run {run_id}: {status}")
    return 0 if status == "finished:completed" else 1


def cmd_loopback(args: argparse.Namespace) -> int:


    settings = settings_from_args(args)
    check_dataset(settings)
    try:
        document, wire = run_loopback(settings, workdir=args.workdir, insecure=args.insecure,
                                      keep_models=args.keep_models, progress=lambda line: print(line, flush=True),
                                      timeout=args.timeout)
    except DeploymentError as exc:
        print(f"fedprune deploy loopback: {exc}", file=sys.stderr)
        return 1
    for entry in wire:
        print(f"round {entry['round']:>3} on the wire: up {human_bytes(entry['wire_uplink_bytes'])}, "
              f"down {human_bytes(entry['wire_downlink_bytes'])}")
    s = document["summary"]
    print(f"final accuracy {s['final_accuracy']:.4f}; wrote {Path(settings.out) / 'results.json'} and wire.json")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import logging
    import signal


    _check_host("host", args.host)
    _check_port("port", args.port)
    if not 1 <= args.max_batch <= LARGEST_MAX_BATCH:
        raise ConfigError("max-batch", f"{args.max_batch}: give 1-{LARGEST_MAX_BATCH} inputs per request")
    if not is_loopback_host(args.host):
        if not args.insecure:
            raise ConfigError("host", f"{args.host} is not a loopback address and edge inference has no TLS: "
                                      "anyone who reaches it could query the model; keep 127.0.0.1, or pass "
                                      "--insecure on a trusted network")
        warn_insecure()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        server = EdgeInferenceServer(args.model_dir, host=args.host, port=args.port, max_batch=args.max_batch,
                                     insecure=args.insecure).start()
    except OSError as exc:
        raise ConfigError("port", str(exc)) from None
    print(f"edge inference on {server.address} serving {Path(args.model_dir).resolve()}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server.server.stop(1))  # systemd stop: finish in-flight requests
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()
    return 0


def _read_npy(path: str) -> Any:
    """The array in a ``.npy`` file, memory-mapped (read on use); never unpickles anything."""
    import numpy as np

    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError("npy", f"{path} does not exist" if not file.exists() else f"{path} is not a file")
    try:
        with open(file, "rb") as handle:
            magic = handle.read(6)
    except OSError as exc:
        raise ConfigError("npy", f"{path} cannot be read ({exc.strerror or exc})") from None
    if magic.startswith(b"PK"):
        raise ConfigError("npy", f"{path} is an .npz archive; give one array saved with numpy.save")
    if magic != b"\x93NUMPY":
        kind = "a Python pickle" if magic[:1] == b"\x80" else "no .npy file"
        raise ConfigError("npy", f"{path} is {kind}; give one numeric array saved with numpy.save")
    try:
        array = np.load(file, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc) or "Python objects" in str(exc):
            raise ConfigError("npy", f"{path} holds pickled Python objects; only plain numeric arrays are read") \
                from None
        raise ConfigError("npy", f"{path} is not a readable .npy array ({exc})") from None
    except (OSError, EOFError) as exc:
        raise ConfigError("npy", f"{path} cannot be read ({exc})") from None
    if array.dtype.kind not in "biuf":
        raise ConfigError("npy", f"{path} holds {array.dtype} values; give numbers (float32 is sent)")
    return array


def _check_batch(option: str, shape: tuple[int, ...], info: Any) -> None:
    """A batch the served model takes: (N, *input_shape) with 1 <= N <= its max batch."""
    expected = tuple(info.input_shape)
    wanted = f"(N, {', '.join(map(str, expected))}) with 1 <= N <= {info.max_batch}"
    if len(shape) != 1 + len(expected) or tuple(shape[1:]) != expected or not 1 <= shape[0] <= info.max_batch:
        raise ConfigError(option, f"a batch shaped {tuple(shape)}; the served model takes {wanted}")


def cmd_predict(args: argparse.Namespace) -> int:
    import grpc
    import numpy as np

    if not (args.npy or args.dataset or args.describe):
        raise ConfigError("npy", "give --npy FILE or --dataset NAME (or --describe)")
    if args.count < 1:
        raise ConfigError("count", f"{args.count}: send at least one input")
    array = _read_npy(args.npy) if args.npy else None  # a bad file is reported before the server is asked
    try:
        info = describe(args.address)
        print(f"model: {info.strategy} round {info.round}, density {info.density:.3f}, {info.size_bytes:,} B stored, "
              f"{info.memory_bytes:,} B in memory, {info.architecture} {list(info.input_shape)} -> "
              f"{info.num_classes} classes{' (personalized)' if info.personalized else ''}")
        if args.describe:
            return 0
        labels_true = None
        if array is not None:
            _check_batch("npy", array.shape, info)
            x = np.asarray(array, dtype=np.float32)
            if not np.isfinite(x).all():
                raise ConfigError("npy", f"{args.npy} contains NaN or infinity")
        else:

            test = load_dataset(args.dataset, args.dataset_path or None).test
            x, labels_true = test.x[: args.count], test.y[: args.count]
            _check_batch("count", x.shape, info)
        labels, _, model_round = predict(args.address, x)
    except grpc.RpcError as exc:
        print(f"fedprune predict: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print(f"predicted by the round-{model_round} model: {labels.tolist()}")
    if labels_true is not None:
        accuracy = float((labels == labels_true).mean())
        print(f"true labels:                 {labels_true.tolist()} (accuracy {accuracy:.3f})")
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    handlers = {"certs": cmd_certs, "register": cmd_register, "superlink": cmd_superlink,
                "supernode": cmd_supernode, "run": cmd_run, "loopback": cmd_loopback, "serve": cmd_serve}
    return handlers[args.deploy_command](args)


HANDLERS = {"deploy": cmd_deploy, "predict": cmd_predict}
