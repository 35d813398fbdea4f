"""Edge inference service: answers local applications with the model this node last trained.

``EdgeInferenceServer`` serves ``protos/edge_inference.proto`` on a gRPC port, over TLS with a
certificate and key (``EdgeTLS``: the ``server.crt``/``server.key`` that ``fedprune deploy certs``
makes, or any pair its CA signed); clients verify it with the CA (``predict(..., root_certificate=)``).
Plaintext is possible only with ``insecure=True`` and only on a loopback address. It loads
``<model-dir>/edge-model.pt`` (written by the ClientApp after every training round,
``client.edge_model``) and reloads it when the file changes, so predictions come from the
latest round; a replacement that cannot be loaded or cannot predict is logged and the last
good model keeps serving.

Hostile input never reaches the model. Each request's bytes are checked before they are
parsed: more than the served model can need (``max_batch`` inputs of its input size, plus
framing) gets ``RESOURCE_EXHAUSTED``, bytes that are not the request message get
``INVALID_ARGUMENT``. A parsed request with the wrong dtype, shape or byte count, an empty
one or one holding NaN gets ``INVALID_ARGUMENT``; a batch larger than ``max_batch`` gets
``RESOURCE_EXHAUSTED``. gRPC itself refuses messages over a transport ceiling before
buffering them. The server keeps serving after any of them.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from fedprune.client.edge_model import EDGE_MODEL_NAME, EdgeModel, load_edge_model
from fedprune.protos import edge_inference_pb2 as pb
from fedprune.protos import edge_inference_pb2_grpc as pb_grpc

DEFAULT_MAX_BATCH = 256
LARGEST_MAX_BATCH = 4096  # keeps every receive limit far below gRPC's 2 GiB ceiling
DEFAULT_PORT = 9095
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["EdgeInference"].full_name
# Transport ceiling when no model is loaded yet: an input as large as any fedprune dataset's, with margin
# (fashion-mnist 1x28x28, cifar10 3x32x32). A served model's own limit applies to every request.
CEILING_INPUT_SHAPE = (3, 64, 64)
FRAMING_BYTES = 4096  # protobuf framing of a request: tags, shape varints, dtype, length prefixes
DESCRIBE_REQUEST_LIMIT = 1024

log = logging.getLogger("fedprune.edge_inference")


@dataclass(frozen=True)
class EdgeTLS:
    """The service's TLS certificate (PEM, with any intermediate certificates) and private key (PEM)."""

    certificate_chain: bytes
    private_key: bytes

    @classmethod
    def from_files(cls, certificate: str | Path, key: str | Path) -> EdgeTLS:
        return cls(Path(certificate).expanduser().read_bytes(), Path(key).expanduser().read_bytes())


def channel(address: str, root_certificate: bytes | None, options: list | None = None) -> grpc.Channel:
    """A channel to an edge inference server: TLS verified against ``root_certificate`` (the CA, PEM), or
    plaintext when it is ``None`` (a loopback server started with ``insecure=True``)."""
    if root_certificate is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(root_certificates=root_certificate),
                               options=options)


def max_message_bytes(max_batch: int, input_shape: tuple[int, ...]) -> int:
    """Receive limit for a model: a full batch of its float32 inputs plus framing."""
    return max_batch * int(np.prod(input_shape)) * 4 + FRAMING_BYTES


def is_loopback_host(host: str) -> bool:
    """Whether ``host`` (a name or an IP, IPv6 with or without brackets) is this machine's loopback only."""
    name = host.strip().removeprefix("[").removesuffix("]")
    if name.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _listen_address(host: str, port: int) -> str:
    name = host.strip().removeprefix("[").removesuffix("]")
    return f"[{name}]:{port}" if ":" in name else f"{name}:{port}"


class ModelStore:
    """The latest edge model in ``model_dir``, reloaded when its file changes (thread-safe).

    A replacement file that cannot be loaded, or whose model cannot predict a zero input, is
    logged once and skipped: the last good model keeps serving until a good file replaces it.
    """

    def __init__(self, model_dir: str | Path) -> None:
        self.path = Path(model_dir).expanduser() / EDGE_MODEL_NAME
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._model: EdgeModel | None = None
        self._error: str | None = None

    def current(self) -> EdgeModel | None:
        """The model for this request (reloaded if a new round replaced the file).

        Raises ``RuntimeError`` only while no good model has been loaded and the file is bad.
        """
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return self._model
        stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp != self._stamp:
                self._stamp = stamp
                self._reload()
            if self._model is None and self._error:
                raise RuntimeError(self._error)
            return self._model

    def loaded(self) -> EdgeModel | None:
        """``current()``, or None while there is no good model (for sizing limits, where no error is due)."""
        try:
            return self.current()
        except RuntimeError:
            return None

    def _reload(self) -> None:
        try:
            model = load_edge_model(self.path)
            logits = model.predict(np.zeros((1, *model.input_shape), np.float32))
            if logits.shape != (1, model.num_classes):
                raise ValueError(f"it answers a zero input with logits shaped {logits.shape}, "
                                 f"not (1, {model.num_classes})")
        except Exception as exc:  # a corrupt or half-written replacement must not take the service down
            self._error = f"the stored model {self.path} could not be loaded: {exc}"
            if self._model is None:
                log.error("%s; nothing to serve until a good model is written", self._error)
            else:
                log.warning("%s; still serving the round-%d model", self._error, self._model.round)
            return
        self._model, self._error = model, None
        log.info("serving the round-%d %s model from %s", model.round, model.strategy, self.path)


@dataclass(frozen=True)
class RefusedRequest:
    """What a request deserializer returns instead of raising (gRPC would answer INTERNAL)."""

    code: grpc.StatusCode
    message: str


class EdgeInferenceServicer(pb_grpc.EdgeInferenceServicer):
    """Validates every request before the model sees it."""

    def __init__(self, store: ModelStore, max_batch: int = DEFAULT_MAX_BATCH,
                 ceiling: int | None = None) -> None:
        self.store = store
        self.max_batch = max_batch
        self.ceiling = ceiling or max_message_bytes(max_batch, CEILING_INPUT_SHAPE)

    def request_limit(self) -> int:
        """Bytes a PredictRequest may have: a full batch of the served model's inputs (the ceiling if none)."""
        model = self.store.loaded()
        if model is None:
            return self.ceiling
        return min(self.ceiling, max_message_bytes(self.max_batch, model.input_shape))

    def parse_predict(self, raw: bytes) -> pb.PredictRequest | RefusedRequest:
        """Size check against the served model, then parse; never raises (see ``RefusedRequest``)."""
        limit = self.request_limit()
        if len(raw) > limit:
            return RefusedRequest(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"request of {len(raw)} bytes exceeds the {limit} bytes {self.max_batch} inputs "
                                  "of the served model need; split the batch")
        return _parse(pb.PredictRequest, raw)

    @staticmethod
    def parse_describe(raw: bytes) -> pb.DescribeRequest | RefusedRequest:
        """Parse an (empty) DescribeRequest; never raises."""
        if len(raw) > DESCRIBE_REQUEST_LIMIT:
            return RefusedRequest(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"DescribeRequest of {len(raw)} bytes; it carries no fields")
        return _parse(pb.DescribeRequest, raw)

    def _model(self, context: grpc.ServicerContext) -> EdgeModel:
        try:
            model = self.store.current()
        except RuntimeError as exc:
            context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        if model is None:
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"no trained model yet in {self.store.path.parent} (the node has not trained a round)")
        return model

    def Predict(self, request: pb.PredictRequest | RefusedRequest,  # noqa: N802
                context: grpc.ServicerContext) -> pb.PredictResponse:
        _refuse(request, context)
        model = self._model(context)
        x = self._inputs(request, model, context)
        logits = model.predict(x).astype(np.float32)
        return pb.PredictResponse(labels=logits.argmax(axis=1).tolist(), model_round=model.round,
                                  logits=pb.Tensor(shape=list(logits.shape), dtype="float32",
                                                   data=logits.astype("<f4").tobytes()))

    def Describe(self, request: pb.DescribeRequest | RefusedRequest,  # noqa: N802
                 context: grpc.ServicerContext) -> pb.ModelDescription:
        _refuse(request, context)
        model = self._model(context)
        return pb.ModelDescription(strategy=model.strategy, round=model.round, density=model.density,
                                   size_bytes=model.size_bytes, memory_bytes=model.memory_bytes,
                                   architecture=model.architecture,
                                   input_shape=list(model.input_shape), num_classes=model.num_classes,
                                   personalized=model.personalized, max_batch=self.max_batch)

    def _inputs(self, request: pb.PredictRequest, model: EdgeModel, context: grpc.ServicerContext) -> np.ndarray:
        bad = grpc.StatusCode.INVALID_ARGUMENT
        if not request.HasField("inputs") or not request.inputs.shape:
            context.abort(bad, "empty request: set inputs.shape, inputs.dtype and inputs.data")
        tensor = request.inputs
        shape = tuple(tensor.shape)
        expected = (*model.input_shape,)
        if len(shape) != 1 + len(expected) or shape[1:] != expected:
            context.abort(bad, f"inputs.shape is {list(shape)}; this model takes [N, {', '.join(map(str, expected))}]")
        if shape[0] < 1:
            context.abort(bad, f"batch size {shape[0]}: send at least one input")
        if shape[0] > self.max_batch:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                          f"batch of {shape[0]} inputs exceeds the limit of {self.max_batch}; split it")
        if tensor.dtype != "float32":
            context.abort(bad, f"inputs.dtype is '{tensor.dtype}'; only 'float32' (little-endian) is accepted")
        want = int(np.prod(shape)) * 4
        if len(tensor.data) != want:
            context.abort(bad, f"inputs.data has {len(tensor.data)} bytes; shape {list(shape)} float32 needs {want}")
        x = np.frombuffer(tensor.data, dtype="<f4").reshape(shape)
        if not np.isfinite(x).all():
            context.abort(bad, "inputs contain NaN or infinity")
        return x


def _parse(message_type: Any, raw: bytes) -> Any:
    try:
        return message_type.FromString(raw)
    except Exception:  # DecodeError, or anything else the parser raises on hostile bytes
        return RefusedRequest(grpc.StatusCode.INVALID_ARGUMENT,
                              f"the request is not a valid {message_type.DESCRIPTOR.full_name} protobuf message")


def _refuse(request: Any, context: grpc.ServicerContext) -> None:
    if isinstance(request, RefusedRequest):
        context.abort(request.code, request.message)


def _handlers(servicer: EdgeInferenceServicer) -> dict[str, grpc.RpcMethodHandler]:
    """The generated registration, but with deserializers that refuse instead of raising (INTERNAL)."""
    return {
        "Predict": grpc.unary_unary_rpc_method_handler(
            servicer.Predict, request_deserializer=servicer.parse_predict,
            response_serializer=pb.PredictResponse.SerializeToString),
        "Describe": grpc.unary_unary_rpc_method_handler(
            servicer.Describe, request_deserializer=servicer.parse_describe,
            response_serializer=pb.ModelDescription.SerializeToString),
    }


class EdgeInferenceServer:
    """A running gRPC server for one model directory; ``stop()`` ends it.

    ``port=0`` picks a free port (tests). ``max_message`` overrides the transport ceiling; by
    default it fits ``max_batch`` inputs of the model in ``model_dir`` or of the largest dataset
    input, whichever is larger. ``tls`` serves over TLS (any address); without it, plaintext needs
    ``insecure=True`` and a loopback ``host``.
    """

    def __init__(self, model_dir: str | Path, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 max_batch: int = DEFAULT_MAX_BATCH, max_message: int | None = None, workers: int = 2,
                 tls: EdgeTLS | None = None, insecure: bool = False) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} is outside 0-65535")
        if not 1 <= max_batch <= LARGEST_MAX_BATCH:
            raise ValueError(f"max_batch {max_batch} is outside 1-{LARGEST_MAX_BATCH}")
        if tls is None and not insecure:
            raise ValueError("edge inference serves over TLS: give its certificate and key (or insecure=True, "
                             "plaintext on loopback only)")
        if tls is None and not is_loopback_host(host):
            raise ValueError(f"{host} is not a loopback address; plaintext is served on loopback only (give TLS)")
        self.store = ModelStore(model_dir)
        model = self.store.loaded()
        shapes = [CEILING_INPUT_SHAPE] + ([model.input_shape] if model else [])
        limit = max_message or max(max_message_bytes(max_batch, shape) for shape in shapes)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                                  options=[("grpc.max_receive_message_length", limit),
                                           ("grpc.max_send_message_length", limit)])
        handlers = _handlers(EdgeInferenceServicer(self.store, max_batch, limit))
        self.server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
        self.server.add_registered_method_handlers(SERVICE_NAME, handlers)
        try:
            address = _listen_address(host, port)
            self.port = self.server.add_insecure_port(address) if tls is None else self.server.add_secure_port(
                address, grpc.ssl_server_credentials([(tls.private_key, tls.certificate_chain)]))
        except RuntimeError:  # grpcio raises where older versions returned 0
            self.port = 0
        if self.port == 0:
            raise OSError(f"cannot listen on {_listen_address(host, port)}")
        self.address = _listen_address(host, self.port)

    def start(self) -> EdgeInferenceServer:
        """Start serving (in gRPC's threads); returns ``self``."""
        self.server.start()
        return self

    def wait(self) -> None:
        """Block until the server stops."""
        self.server.wait_for_termination()

    def stop(self, grace: float = 1.0) -> None:
        """Stop, letting requests in flight finish for ``grace`` seconds."""
        self.server.stop(grace).wait()


def predict(address: str, x: np.ndarray, timeout: float = 30.0,
            root_certificate: bytes | None = None) -> tuple[np.ndarray, np.ndarray, int]:
    """(labels, logits, model round) from an edge inference server for a float32 batch (TLS verified
    against ``root_certificate``; ``None``: plaintext, a loopback server started insecure)."""
    x = np.ascontiguousarray(x, dtype="<f4")
    options = [("grpc.max_send_message_length", x.nbytes + 4096)]
    with channel(address, root_certificate, options) as opened:
        reply = pb_grpc.EdgeInferenceStub(opened).Predict(
            pb.PredictRequest(inputs=pb.Tensor(shape=list(x.shape), dtype="float32", data=x.tobytes())),
            timeout=timeout)
    logits = np.frombuffer(reply.logits.data, dtype="<f4").reshape(tuple(reply.logits.shape))
    return np.asarray(reply.labels, dtype=np.int64), logits, int(reply.model_round)


def describe(address: str, timeout: float = 30.0, root_certificate: bytes | None = None) -> pb.ModelDescription:
    """The served model's description (strategy, round, density, size in bytes, ...)."""
    with channel(address, root_certificate) as opened:
        return pb_grpc.EdgeInferenceStub(opened).Describe(pb.DescribeRequest(), timeout=timeout)
