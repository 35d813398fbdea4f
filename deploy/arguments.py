"""The options of ``fedprune deploy certs|register|superlink|supernode|run|loopback|serve`` and ``fedprune
predict``: one function per subcommand declares its arguments; ``deploy.cli`` and ``deploy.edge_commands``
hold what each one does with them."""

from __future__ import annotations

import argparse

from fedprune.client.edge_inference import DEFAULT_MAX_BATCH, DEFAULT_PORT, LARGEST_MAX_BATCH
from fedprune.deploy.launch import (
    DEFAULT_CONTROL_PORT,
    DEFAULT_FLEET_PORT,
    DEFAULT_RUNTIME_PORT,
    FLOWER_IDLE_POLL,
    NODE_CONFIG_KEYS,
)
from fedprune.models.device import DEVICES

from fedprune.run_options import add_run_options

KEY_VALUE_HELP = "extra node config entry KEY=VALUE (repeatable), e.g. a budget the strategy reads"
_FORMAT = argparse.ArgumentDefaultsHelpFormatter


def add_deploy_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``deploy`` (with its subcommands) and ``predict`` on the top-level parser."""
    deploy = sub.add_parser("deploy", help="real deployment: certificates, SuperLink, SuperNodes, loopback, serve")
    steps = deploy.add_subparsers(dest="deploy_command", required=True)
    for add in (_certs, _register, _superlink, _supernode, _run, _loopback, _serve):
        add(steps)
    _predict(sub)


def _certs(steps: argparse._SubParsersAction) -> None:
    certs = steps.add_parser("certs", formatter_class=_FORMAT,
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


def _register(steps: argparse._SubParsersAction) -> None:
    register = steps.add_parser("register", formatter_class=_FORMAT,
                                help="register edge nodes' public keys with the SuperLink (flwr supernode register)")
    register.add_argument("public_keys", nargs="+", help="nodes/<name>.pub files")
    _connection_options(register, DEFAULT_CONTROL_PORT)


def _superlink(steps: argparse._SubParsersAction) -> None:
    link = steps.add_parser("superlink", formatter_class=_FORMAT,
                            help="start the SuperLink: TLS, SuperNode authentication, state database")
    link.add_argument("--certs", default="certs", help="directory from `deploy certs` (ca.crt, server.crt/key)")
    link.add_argument("--fleet-address", default=f"0.0.0.0:{DEFAULT_FLEET_PORT}", help="gRPC Fleet API (SuperNodes)")
    link.add_argument("--control-host", default="0.0.0.0", help="Control/Runtime API host (flwr CLI)")
    link.add_argument("--control-port", type=int, default=DEFAULT_CONTROL_PORT, help="Control/Runtime API port")
    link.add_argument("--database", default="state.db", help="SQLite state (registrations, runs) kept across restarts")
    link.add_argument("--insecure", action="store_true", help="no TLS, no node authentication (prints a warning)")
    link.add_argument("--print", action="store_true", dest="print_only", help="print the command, do not start it")


def _supernode(steps: argparse._SubParsersAction) -> None:
    keys = "; ".join(f"{key}: {meaning}" for key, meaning in NODE_CONFIG_KEYS.items())
    node = steps.add_parser("supernode", formatter_class=_FORMAT, help="start an edge client (SuperNode)",
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
    node.add_argument("--executor", choices=("warm", "flower"), default="warm",
                      help="warm: ClientApps run in children forked from a process with torch imported once "
                           "(restarted if it dies; Flower's executor after 3 exits in 60 s); flower: Flower's own "
                           "executor, a new flwr-clientapp process per message")
    node.add_argument("--num-threads", type=int, default=0,
                      help="torch threads per ClientApp (0: this host's cores / --nodes-on-host)")
    node.add_argument("--nodes-on-host", type=int, default=1,
                      help="SuperNodes sharing this host's cores (sets the default --num-threads)")
    node.add_argument("--device", choices=DEVICES, default=None,
                      help="where this node's ClientApps train: auto (CUDA when this host has it) | cpu | cuda "
                           "(default: the run's --device)")
    node.add_argument("--cache-dir", default="~/.cache/fedprune",
                      help="node-local cache of this node's data partition (checked by digest on every use)")
    node.add_argument("--idle-poll", type=float, default=FLOWER_IDLE_POLL,
                      help="seconds an idle node waits before it asks the SuperLink for a message again (Flower's "
                           "3 s; shorter: messages are seen sooner, at one pull per node per period)")
    node.add_argument("--max-retries", type=int, default=None,
                      help="give up after this many failed connection attempts (default: never)")
    node.add_argument("--insecure", action="store_true", help="no TLS, no authentication (prints a warning)")
    node.add_argument("--print", action="store_true", dest="print_only", help="print the command, do not start it")


def _run(steps: argparse._SubParsersAction) -> None:
    run = steps.add_parser("run", formatter_class=_FORMAT,
                           help="submit the fedprune ServerApp to a running SuperLink (checkpoints in --out)")
    add_run_options(run)
    _connection_options(run, DEFAULT_CONTROL_PORT)
    run.add_argument("--no-follow", action="store_true", help="submit and return (do not follow results.json)")


def _loopback(steps: argparse._SubParsersAction) -> None:
    loop = steps.add_parser("loopback", formatter_class=_FORMAT,
                            help="SuperLink + N SuperNodes on this machine over TLS with node auth; run to the end")
    add_run_options(loop)
    loop.add_argument("--workdir", default=None, help="certificates, logs, state database (default: a temp dir)")
    loop.add_argument("--keep-models", action="store_true", help="SuperNodes keep their models (model-dir)")
    loop.add_argument("--executor", choices=("warm", "flower"), default="warm",
                      help="what runs the SuperNodes' ClientApps (see `fedprune deploy supernode --help`)")
    loop.add_argument("--idle-poll", type=float, default=FLOWER_IDLE_POLL,
                      help="seconds an idle SuperNode waits between pulls (see `fedprune deploy supernode --help`)")
    loop.add_argument("--insecure", action="store_true", help="no TLS, no node authentication (prints a warning)")
    loop.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")


def _serve(steps: argparse._SubParsersAction) -> None:
    serve = steps.add_parser("serve", formatter_class=_FORMAT,
                             help="serve the node's latest trained model to local applications over gRPC")
    serve.add_argument("--model-dir", required=True, help="the SuperNode's model-dir")
    serve.add_argument("--host", default="127.0.0.1", help="listen address (plaintext: loopback only)")
    serve.add_argument("--port", type=int, default=DEFAULT_PORT, help="listen port (1-65535)")
    serve.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                       help=f"largest batch a request may carry (1-{LARGEST_MAX_BATCH})")
    serve.add_argument("--certs", default=None,
                       help="directory from `deploy certs`: serve over TLS with its server.crt and server.key")
    serve.add_argument("--tls-cert", default=None, help="TLS certificate (PEM; instead of --certs)")
    serve.add_argument("--tls-key", default=None, help="its private key (PEM)")
    serve.add_argument("--insecure", action="store_true",
                       help="plaintext, on a loopback --host only (prints a warning)")


def _predict(sub: argparse._SubParsersAction) -> None:
    predict = sub.add_parser("predict", formatter_class=_FORMAT, help="ask an edge inference server for predictions")
    predict.add_argument("--address", default=f"127.0.0.1:{DEFAULT_PORT}")
    source = predict.add_mutually_exclusive_group()
    source.add_argument("--npy", default=None, help=".npy numeric batch shaped (N, C, H, W); no pickles")
    source.add_argument("--dataset", default=None, help="send the first --count test images of this dataset")
    predict.add_argument("--dataset-path", default="", help="dataset directory (default: its standard place)")
    predict.add_argument("--count", type=int, default=8)
    predict.add_argument("--describe", action="store_true", help="only describe the served model")
    predict.add_argument("--root-cert", default=None, help="the CA that signed the server's TLS certificate")
    predict.add_argument("--insecure", action="store_true", help="plaintext (a loopback server started --insecure)")


def _connection_options(p: argparse.ArgumentParser, control_port: int) -> None:
    p.add_argument("--superlink-address", default=f"127.0.0.1:{control_port}",
                   help="the SuperLink's Control API HOST:PORT")
    p.add_argument("--root-cert", default=None, help="the deployment CA certificate (ca.crt)")
    p.add_argument("--insecure", action="store_true", help="plain-text Control API (prints a warning)")
    p.add_argument("--flwr-home", default=None,
                   help="where the flwr CLI connection is written (default: ~/.fedprune/flwr-home)")
