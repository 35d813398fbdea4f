"""``fedprune deploy serve`` and ``fedprune predict``: a node's latest trained model served to local
applications over gRPC, and the client that asks it for predictions."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from fedprune.client.edge_inference import (
    LARGEST_MAX_BATCH,
    EdgeInferenceServer,
    EdgeTLS,
    describe,
    is_loopback_host,
    predict,
)
from fedprune.data import run_dataset
from fedprune.deploy.address_checks import check_host, check_port
from fedprune.deploy.certificates import SERVER_CERT, SERVER_KEY
from fedprune.deploy.launch import warn_insecure
from fedprune.server.run_config import ConfigError


def _serving_tls(args: argparse.Namespace) -> EdgeTLS | None:
    """The TLS pair ``serve`` was given (``--certs`` or ``--tls-cert``/``--tls-key``); ``None`` with
    ``--insecure`` (plaintext, loopback only)."""
    if args.insecure:
        if args.certs or args.tls_cert or args.tls_key:
            raise ConfigError("insecure", "give TLS material or --insecure, not both")
        if not is_loopback_host(args.host):
            raise ConfigError("host", f"{args.host} is not a loopback address: plaintext is served on loopback "
                                      "only; serve over TLS (--certs) to listen there")
        warn_insecure()
        return None
    if args.certs and (args.tls_cert or args.tls_key):
        raise ConfigError("certs", "give --certs or --tls-cert/--tls-key, not both")
    if args.certs:
        cert, key = Path(args.certs) / SERVER_CERT, Path(args.certs) / SERVER_KEY
    elif args.tls_cert and args.tls_key:
        cert, key = Path(args.tls_cert), Path(args.tls_key)
    else:
        raise ConfigError("certs", "edge inference is served over TLS: give --certs DIR (server.crt, server.key "
                                   "from `fedprune deploy certs`) or --tls-cert/--tls-key; --insecure serves "
                                   "plaintext on loopback")
    for option, path in (("certs" if args.certs else "tls-cert", cert), ("certs" if args.certs else "tls-key", key)):
        if not path.expanduser().is_file():
            raise ConfigError(option, f"{path} does not exist")
    return EdgeTLS.from_files(cert, key)


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve ``--model-dir``'s model until stopped: over TLS, or plaintext on loopback with ``--insecure``."""
    check_host("host", args.host)
    check_port("port", args.port)
    if not 1 <= args.max_batch <= LARGEST_MAX_BATCH:
        raise ConfigError("max-batch", f"{args.max_batch}: give 1-{LARGEST_MAX_BATCH} inputs per request")
    tls = _serving_tls(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        server = EdgeInferenceServer(args.model_dir, host=args.host, port=args.port, max_batch=args.max_batch,
                                     tls=tls, insecure=args.insecure).start()
    except OSError as exc:
        raise ConfigError("port", str(exc)) from None
    print(f"edge inference on {server.address} ({'plaintext' if tls is None else 'TLS'}) serving "
          f"{Path(args.model_dir).resolve()}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server.server.stop(1))  # systemd stop: finish in-flight requests
    try:
        server.wait()
    except KeyboardInterrupt:
        server.stop()
    return 0


def _read_npy(path: str) -> Any:
    """The array in a ``.npy`` file, memory-mapped (read on use); never unpickles anything."""
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


def _root_certificate(args: argparse.Namespace) -> bytes | None:
    """The CA ``predict`` verifies the server with; ``None`` with ``--insecure``."""
    if args.insecure:
        return None
    if not args.root_cert:
        raise ConfigError("root-cert", "give the CA that signed the server's certificate (or --insecure for a "
                                       "plaintext loopback server)")
    path = Path(args.root_cert).expanduser()
    if not path.is_file():
        raise ConfigError("root-cert", f"{args.root_cert} does not exist")
    return path.read_bytes()


def cmd_predict(args: argparse.Namespace) -> int:
    """Describe the served model, then send it ``--npy``'s batch or a dataset's first test images."""
    if not (args.npy or args.dataset or args.describe):
        raise ConfigError("npy", "give --npy FILE or --dataset NAME (or --describe)")
    if args.count < 1:
        raise ConfigError("count", f"{args.count}: send at least one input")
    array = _read_npy(args.npy) if args.npy else None  # a bad file is reported before the server is asked
    root = _root_certificate(args)
    try:
        info = describe(args.address, root_certificate=root)
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
            test = run_dataset(args).test
            x, labels_true = test.x[: args.count], test.y[: args.count]
            _check_batch("count", x.shape, info)
        labels, _, model_round = predict(args.address, x, root_certificate=root)
    except grpc.RpcError as exc:
        print(f"fedprune predict: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    print(f"predicted by the round-{model_round} model: {labels.tolist()}")
    if labels_true is not None:
        accuracy = float((labels == labels_true).mean())
        print(f"true labels:                 {labels_true.tolist()} (accuracy {accuracy:.3f})")
    return 0
