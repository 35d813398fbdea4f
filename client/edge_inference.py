"""Edge inference service: answers local applications with the model this node last trained.

``EdgeInferenceServer`` serves ``protos/edge_inference.proto`` on a gRPC port (by default
loopback only: it is for applications on the device, not for the network). It loads
``<model-dir>/edge-model.pt`` (written by the ClientApp after every training round,
``client.edge_model``) and reloads it when the file changes, so predictions always come from
the latest round. Hostile input never reaches the model: a request with the wrong dtype,
shape or byte count, or an empty one, gets ``INVALID_ARGUMENT``; a batch larger than
``max_batch`` gets ``RESOURCE_EXHAUSTED``; a message over the gRPC size limit is refused by
gRPC itself (``RESOURCE_EXHAUSTED``) before it is parsed. The server keeps serving after any of them.
"""

from __future__ import annotations

import threading
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np

from client.edge_model import EDGE_MODEL_NAME, EdgeModel, load_edge_model
from protos import edge_inference_pb2 as pb
from protos import edge_inference_pb2_grpc as pb_grpc

DEFAULT_MAX_BATCH = 256
DEFAULT_PORT = 9095


def max_message_bytes(max_batch: int, input_shape: tuple[int, ...] = (3, 64, 64)) -> int:
    """gRPC receive limit: a full batch of float32 inputs plus framing, never below 1 MiB."""
    return max(1 << 20, max_batch * int(np.prod(input_shape)) * 4 + 4096)


class ModelStore:
    """The latest edge model in ``model_dir``, reloaded when its file changes (thread-safe)."""

    def __init__(self, model_dir: str | Path) -> None:
        self.path = Path(model_dir).expanduser() / EDGE_MODEL_NAME
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._model: EdgeModel | None = None

    def current(self) -> EdgeModel | None:
        """The model for this request (reloaded if a new round replaced the file)."""
        try:
            stat = self.path.stat()
        except FileNotFoundError:
            return self._model
        stamp = (stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if stamp != self._stamp:
                self._model, self._stamp = load_edge_model(self.path), stamp
            return self._model


class EdgeInferenceServicer(pb_grpc.EdgeInferenceServicer):
    """Validates every request before the model sees it."""

    def __init__(self, store: ModelStore, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        self.store = store
        self.max_batch = max_batch

    def _model(self, context: grpc.ServicerContext) -> EdgeModel:
        try:
            model = self.store.current()
        except Exception as exc:  # a corrupt file must not take the service down
            context.abort(grpc.StatusCode.UNAVAILABLE, f"the stored model could not be loaded: {exc}")
        if model is None:
            context.abort(grpc.StatusCode.UNAVAILABLE,
                          f"no trained model yet in {self.store.path.parent} (the node has not trained a round)")
        return model

    def Predict(self, request: pb.PredictRequest, context: grpc.ServicerContext) -> pb.PredictResponse:  # noqa: N802
        model = self._model(context)
        x = self._inputs(request, model, context)
        logits = model.predict(x).astype(np.float32)
        return pb.PredictResponse(labels=logits.argmax(axis=1).tolist(), model_round=model.round,
                                  logits=pb.Tensor(shape=list(logits.shape), dtype="float32",
                                                   data=logits.astype("<f4").tobytes()))

    def Describe(self, request: pb.DescribeRequest, context: grpc.ServicerContext) -> pb.ModelDescription:  # noqa: N802
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


class EdgeInferenceServer:
    """A running gRPC server for one model directory; ``stop()`` ends it."""

    def __init__(self, model_dir: str | Path, *, host: str = "127.0.0.1", port: int = DEFAULT_PORT,
                 max_batch: int = DEFAULT_MAX_BATCH, max_message: int | None = None, workers: int = 2) -> None:
        self.store = ModelStore(model_dir)
        limit = max_message or max_message_bytes(max_batch)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                                  options=[("grpc.max_receive_message_length", limit),
                                           ("grpc.max_send_message_length", limit)])
        pb_grpc.add_EdgeInferenceServicer_to_server(EdgeInferenceServicer(self.store, max_batch), self.server)
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        if self.port == 0:
            raise OSError(f"cannot listen on {host}:{port}")
        self.address = f"{host}:{self.port}"

    def start(self) -> EdgeInferenceServer:
        self.server.start()
        return self

    def wait(self) -> None:
        self.server.wait_for_termination()

    def stop(self, grace: float = 1.0) -> None:
        self.server.stop(grace).wait()


def predict(address: str, x: np.ndarray, timeout: float = 30.0) -> tuple[np.ndarray, np.ndarray, int]:
    """(labels, logits, model round) from an edge inference server for a float32 batch."""
    x = np.ascontiguousarray(x, dtype="<f4")
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", x.nbytes + 4096)]) as channel:
        reply = pb_grpc.EdgeInferenceStub(channel).Predict(
            pb.PredictRequest(inputs=pb.Tensor(shape=list(x.shape), dtype="float32", data=x.tobytes())),
            timeout=timeout)
    logits = np.frombuffer(reply.logits.data, dtype="<f4").reshape(tuple(reply.logits.shape))
    return np.asarray(reply.labels, dtype=np.int64), logits, int(reply.model_round)


def describe(address: str, timeout: float = 30.0) -> pb.ModelDescription:
    """The served model's description (strategy, round, density, size in bytes, ...)."""
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.EdgeInferenceStub(channel).Describe(pb.DescribeRequest(), timeout=timeout)
