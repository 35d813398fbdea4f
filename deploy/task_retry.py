"""Runtime API retries for the warm executor's own calls: one refused task ends that call, not the process.

Flower's HTTP retry invoker (``make_simple_http_retry_invoker``) answers a refused task token (HTTP 401)
by interrupting its own process, and a run that is no longer running (403) with a ``BaseException``:
right for ``flwr-clientapp``, which serves one task and exits. The warm executor serves every task of its
node; the SuperNode revokes a task's token when it drops the task (for example the message of a run the
SuperLink has finished), and that must end the pull of that one task, not the executor. Transport errors
and 503/504 are retried as Flower retries them.
"""

from __future__ import annotations

import httpx
from flwr.common.constant import MAX_RETRY_DELAY
from flwr.supercore.retry import RetryInvoker, exponential

RETRYABLE_STATUS = frozenset({httpx.codes.SERVICE_UNAVAILABLE, httpx.codes.GATEWAY_TIMEOUT})
TRANSPORT_ERRORS: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError, httpx.ConnectTimeout,
    httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout)


def gives_up(error: Exception) -> bool:
    """Stop retrying on an HTTP status other than 503/504 (401 and 403 included) and on TLS failures."""
    if isinstance(error, httpx.HTTPStatusError):
        return error.response.status_code not in RETRYABLE_STATUS
    return any(term in str(error).lower() for term in ("certificate", "ssl", "tls"))


def task_retry_invoker() -> RetryInvoker:
    """Exponential backoff (Flower's cap) on transport errors and 503/504; any other HTTP error is raised."""
    return RetryInvoker(wait_gen_factory=lambda: exponential(max_delay=MAX_RETRY_DELAY),
                        recoverable_exceptions=(*TRANSPORT_ERRORS, httpx.HTTPStatusError), max_tries=None,
                        max_time=None, should_giveup=gives_up)
