"""A run's status, asked of the SuperLink's Control API from this process.

``flwr ls --run-id N`` gives the same answer, but each call starts a new interpreter that imports Flower
(2.3 s of CPU on a 2-core machine); following a run asked it every 15 s. This asks ``ListRuns`` over the
Control API with Flower's own HTTP client (TLS with the deployment's CA, or plaintext on loopback), the
same request ``flwr ls`` sends. The status reads as ``flwr ls`` prints it: ``running``,
``finished:completed``, ``finished:failed``, ...; ``unknown`` when the SuperLink cannot be asked.
SuperLinks with account authentication (``flwr login``) are not supported here: their runs are followed
with ``flwr ls``, as before.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from flwr.cli.cli_client_interceptor import CliClientHttpInterceptor
from flwr.common.serde import run_from_proto
from flwr.proto.control_pb2 import ListRunsRequest
from flwr.supercore.control import ControlHttpClient
from flwr.supercore.interceptors import RuntimeVersionHttpInterceptor


def status_text(status: str, sub_status: str) -> str:
    """``status`` and ``sub_status`` joined as ``flwr ls`` shows them (``finished:completed``, ``running``)."""
    return f"{status}:{sub_status}" if sub_status else status


@dataclass
class ControlApi:
    """The Control API of one SuperLink; ``root_certificate=None`` means plaintext (a loopback SuperLink)."""

    address: str
    root_certificate: Path | None = None
    last_error: str | None = None
    _client: ControlHttpClient | None = field(default=None, repr=False)

    def client(self) -> ControlHttpClient:
        if self._client is None:
            root = Path(self.root_certificate).read_bytes() if self.root_certificate is not None else None
            self._client = ControlHttpClient.from_server_address(
                server_address=self.address, insecure=root is None, root_certificates=root,
                interceptors=[CliClientHttpInterceptor(), RuntimeVersionHttpInterceptor(component_name="flwr CLI")])
        return self._client

    def run_status(self, run_id: int) -> str:
        """The run's status as the SuperLink reports it, or ``unknown`` (``last_error`` says why)."""
        try:
            response = self.client().ListRuns(ListRunsRequest(run_id=run_id))
        except Exception as exc:  # noqa: BLE001 - any transport or server error: ask again later
            self.last_error = f"{type(exc).__name__}: {exc}"
            return "unknown"
        runs = [run_from_proto(proto) for proto in response.run_dict.values()]
        if not runs:
            self.last_error = f"the SuperLink knows no run {run_id}"
            return "unknown"
        self.last_error = None
        return status_text(runs[0].status.status, runs[0].status.sub_status)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> ControlApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
