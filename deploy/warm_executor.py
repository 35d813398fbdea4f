"""A warm executor for one SuperNode: each ClientApp task runs in a child forked from a process that has
already imported torch, numpy and Flower's runtime.

Flower 1.39's SuperNode starts a new ``flwr-clientapp`` process for every message (its SuperExec
``Popen``s one per task); that process spends ~3.5 s of CPU importing torch and Flower before it
runs the app. Beside ``flower-supernode --isolation process`` this executor does SuperExec's job
instead: it acquires tasks from the SuperNode's Runtime API (authenticated with the shared secret
where the SuperNode requires one), pulls the task's message, context and app bundle, and forks. The
child does what ``flwr-clientapp`` does (install the bundle, load its ClientApp, run it, push the
reply and the context) and exits; the app's own modules are imported in the child from the bundle
the SuperLink sent, never from this parent (``fedprune`` modules the parent holds are dropped in the
child first), so the code that runs is the code that was submitted.

A child that dies without replying (killed, out of memory) gets an error reply from the parent at
once, naming the signal, so the server's round goes on without that node and the node takes the
next message; Flower's own executor leaves that to a 60 s token expiry.

Relies on Flower internals pinned by ``flwr<1.40``: ``tests/test_warm_executor.py`` fails loudly
when the names used here move.
"""

# size: one process's loop, its fork and its child's run belong together; split they would share every name
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from dataclasses import dataclass
from logging import ERROR, INFO, WARNING
from pathlib import Path

import httpx
import numpy  # noqa: F401  (the point of this process: imported once, shared by every child)
import torch  # noqa: F401
import torch._dynamo  # noqa: F401  (torch imports it lazily on the first optimizer: 3 s per child otherwise)
from fedprune.deploy.task_retry import task_retry_invoker
from flwr.app import Context, Message
from flwr.app.error import Error
from flwr.cli.install import install_from_fab
from flwr.clientapp.client_app import ClientApp, LoadClientAppError
from flwr.clientapp.utils import get_load_client_app_fn
from flwr.common.constant import ErrorCode, SubStatus
from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
from flwr.proto.node_pb2 import Node
from flwr.proto.runtime_pb2 import (
    AcquireTaskRequest,
    PullAppMessagesRequest,
    PullAppMessagesResponse,
    PullTaskInputRequest,
    PullTaskInputResponse,
)
from flwr.proto.task_pb2 import Task
from flwr.supercore import log
from flwr.supercore.app_utils import start_parent_process_monitor
from flwr.supercore.auth.superexec_secret import load_superexec_auth_secret
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.inflatable.inflatable_protobuf_utils import (
    make_confirm_message_received_fn_protobuf,
    make_pull_object_fn_protobuf,
)
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
)
from flwr.supercore.retry import RetryInvoker, make_simple_http_retry_invoker
from flwr.supercore.run import Run
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.runtime.run_clientapp import push_message, push_task_output

# The Runtime API methods SuperExec authentication protects (flwr.supercore.superexec.run_superexec).
AUTH_METHODS = frozenset({"/flwr.proto.Runtime/AcquireTask", "/flwr.proto.Runtime/PullPendingTasks",
                          "/flwr.proto.Runtime/ClaimTask"})
EXIT_REPLIED = 0  # the child pushed the app's reply
EXIT_APP_FAILED = 10  # the app raised; the child pushed Flower's error reply
EXIT_PUSH_FAILED = 11  # the child could not push its reply
READY_LINE = "warm executor ready"
PULL_FIRST_RETRY = 0.05  # seconds before asking again for message content the SuperNode does not hold yet
PULL_LONGEST_RETRY = 1.0


@dataclass(frozen=True)
class RuntimeEndpoint:
    """Where the SuperNode's Runtime API listens and how to reach it."""

    address: str
    root_certificates: bytes | None = None  # None: plaintext (the API is on the node's loopback)
    auth_secret: bytes | None = None  # the SuperNode's --superexec-auth-secret-file contents

    def client(self, token: str | None = None, retry: RetryInvoker | None = None) -> RuntimeHttpClient:
        """A Runtime API client: authenticated as the executor (no token) or as one task (its token);
        ``retry``: Flower's HTTP retry unless given (``task_retry_invoker`` for the executor's own calls)."""
        interceptors: list = [RuntimeVersionHttpInterceptor(component_name="SuperExec" if token is None
                                                            else "flwr-clientapp")]
        if token is not None:
            interceptors.append(RuntimeTokenHttpInterceptor(token))
        elif self.auth_secret:
            interceptors.append(SuperExecAuthHttpInterceptor(master_secret=self.auth_secret,
                                                             protected_methods=AUTH_METHODS))
        return RuntimeHttpClient.from_server_address(
            server_address=self.address, insecure=self.root_certificates is None,
            root_certificates=self.root_certificates, interceptors=interceptors,
            retry_invoker=retry or make_simple_http_retry_invoker())


@dataclass
class TaskInput:
    """What the parent pulled for one task before forking; kept to answer for a child that dies."""

    token: str
    task_id: int
    message: Message
    context: Context
    run: Run
    fab_content: bytes
    fab_hash: str
    acquired: float = 0.0  # time.perf_counter() when the executor got the task


def drop_app_modules(prefixes: tuple[str, ...] = ("fedprune",)) -> list[str]:
    """Forget the app's modules this process imported, so the child imports them from the app bundle."""
    names = [name for name in sys.modules if name.split(".")[0] in prefixes]
    for name in names:
        del sys.modules[name]
    return names


def run_app(task: TaskInput) -> tuple[Message, str, str]:
    """Install the bundle, load its ClientApp and run the message; (reply, sub-status, details), as
    ``flwr-clientapp`` does it (an exception becomes an error reply, the context is not updated)."""
    try:
        started = time.perf_counter()
        install_from_fab(task.fab_content, skip_prompt=True)
        load = get_load_client_app_fn(default_app_ref="", app_path=None, multi_app=True)
        client_app: ClientApp = load(task.run.fab_id, task.run.fab_version, task.fab_hash)
        loaded = time.perf_counter()
        reply = client_app(message=task.message, context=task.context)
        log(INFO, "task %d: child started %.2fs after the task was acquired, app loaded in %.2fs, %s message "
            "handled in %.2fs", task.task_id, started - task.acquired, loaded - started,
            task.message.metadata.message_type, time.perf_counter() - loaded)
        return reply, SubStatus.COMPLETED, ""
    except Exception as ex:  # noqa: BLE001 - any exception of the app is the node's error reply
        code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION if isinstance(ex, LoadClientAppError) \
            else ErrorCode.CLIENT_APP_RAISED_EXCEPTION
        reason = ("An exception was raised when attempting to load `ClientApp`"
                  if isinstance(ex, LoadClientAppError) else f"{type(ex)}:<'{ex}'>")
        log(ERROR, "ClientApp raised an exception", exc_info=ex)
        return Message(Error(code=code, reason=reason), reply_to=task.message), SubStatus.FAILED, reason


def child_main(endpoint: RuntimeEndpoint, task: TaskInput) -> int:
    """Run one task in a forked child; returns the exit code (``EXIT_*``)."""
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
        signal.signal(sig, signal.SIG_DFL)
    drop_app_modules()
    client = endpoint.client(task.token)
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    heartbeat.start()
    try:
        reply, status, details = run_app(task)
        try:
            push_message(client, reply, task.context)
        except Exception as ex:  # noqa: BLE001
            log(ERROR, "Failed to push reply message", exc_info=ex)
            return EXIT_PUSH_FAILED
        push_task_output(client, task.context if status == SubStatus.COMPLETED else None, status, details)
        return EXIT_REPLIED if status == SubStatus.COMPLETED else EXIT_APP_FAILED
    finally:
        heartbeat.stop()


def fork_task(endpoint: RuntimeEndpoint, task: TaskInput) -> int:
    """Fork a child for ``task``; returns its PID (in the parent). The child never returns."""
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid:
        return pid
    code = EXIT_PUSH_FAILED
    try:
        code = child_main(endpoint, task)
    except BaseException as ex:  # noqa: BLE001 - nothing may unwind into the parent's loop
        log(ERROR, "warm executor child failed", exc_info=ex)
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def exit_description(status: int) -> str:
    """``waitpid`` status in words (``killed by signal 9 (SIGKILL)``, ``exit code 3``)."""
    if os.WIFSIGNALED(status):
        number = os.WTERMSIG(status)
        return f"killed by signal {number} ({signal.Signals(number).name})"
    return f"exit code {os.WEXITSTATUS(status)}"


def answer_for_dead_child(endpoint: RuntimeEndpoint, task: TaskInput, pid: int, status: int) -> None:
    """A child ended without its reply: push an error reply for its message and mark the task failed, so
    the SuperNode sends the server that reply now and takes its next message."""
    reason = f"ClientApp process {pid} {exit_description(status)} before it replied (warm executor)"
    log(WARNING, "task %d: %s", task.task_id, reason)
    client = endpoint.client(task.token)
    try:
        push_message(client, Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason),
                                     reply_to=task.message), task.context)
        push_task_output(client, None, SubStatus.FAILED, reason)
    except Exception as ex:  # noqa: BLE001 - the SuperNode's own token expiry still answers for it
        log(ERROR, "task %d: could not push the error reply: %s", task.task_id, ex)
    finally:
        client.close()


def pull_task_input(client: RuntimeHttpClient) -> tuple[Message, Context, Run, Fab]:
    """The task's message, context, run and app bundle, as Flower's ``pull_task_input`` gets them, but retrying
    an object the SuperNode does not hold yet after ``PULL_FIRST_RETRY`` seconds, not Flower's 1 s.

    The SuperNode creates the task before it has pulled the message's content from the SuperLink, so a task
    taken at once often asks for content still on its way (Flower's own executor, seconds slower to start a
    process, rarely does); a 1 s first retry then cost about a second per message."""
    res: PullTaskInputResponse = client.PullTaskInput(PullTaskInputRequest())
    TaskIdentity.task_id = res.task_id
    TaskIdentity.run_id = res.run.run_id
    TaskIdentity.node_id = res.context.node_id
    context, run, fab = context_from_proto(res.context), run_from_proto(res.run), fab_from_proto(res.fab)
    pulled: PullAppMessagesResponse = client.PullMessages(PullAppMessagesRequest())
    if not pulled.messages_list:
        raise RuntimeError("No messages received from Runtime API")
    node, tree = Node(node_id=context.node_id), pulled.message_object_trees[0]
    message = pull_and_inflate_object_from_tree(
        tree, make_pull_object_fn_protobuf(client.PullObject, node, context.run_id),
        make_confirm_message_received_fn_protobuf(client.ConfirmMessageReceived, node, context.run_id),
        return_type=Message, initial_backoff=PULL_FIRST_RETRY, backoff_cap=PULL_LONGEST_RETRY)
    message.metadata.__dict__["_message_id"] = tree.object_id  # the deflated message does not carry its own id
    return message, context, run, fab


def acquire(endpoint_client: RuntimeHttpClient, endpoint: RuntimeEndpoint) -> TaskInput | None:
    """Ask the Runtime API for a ClientApp task and pull its input; ``None`` if there is none."""
    response = endpoint_client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP],
                                                              agentapp_fab_hashes=[]))
    if not (response.HasField("task") and response.token):
        return None
    acquired = time.perf_counter()
    task: Task = response.task
    client = endpoint.client(response.token, retry=task_retry_invoker())
    try:
        message, context, run, fab = pull_task_input(client)
    except httpx.HTTPStatusError as ex:  # 401/403: the SuperNode dropped the task (its run is over)
        log(WARNING, "task %d: the SuperNode no longer serves it (HTTP %d); skipped", task.task_id,
            ex.response.status_code)
        return None
    except Exception as ex:  # noqa: BLE001 - the task's token expires and the SuperNode answers for it
        # Finishing the task here would leave the SuperNode waiting for a reply that never comes (it holds no
        # message to reply to); left alone, its token expires (~60 s) and the SuperNode sends an error reply.
        log(ERROR, "task %d: could not pull its input (%s); the SuperNode answers for it when its token expires",
            task.task_id, ex)
        return None
    finally:
        client.close()
    return TaskInput(response.token, task.task_id, message, context, run, fab.content, fab.hash_str, acquired)


def wait_for_child(endpoint: RuntimeEndpoint, task: TaskInput, pid: int) -> int:
    """Wait until child ``pid`` ends; answer for it if it died without replying. Returns its wait status."""
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status) or os.WEXITSTATUS(status) not in (EXIT_REPLIED, EXIT_APP_FAILED):
        answer_for_dead_child(endpoint, task, pid, status)
    return status


def serve(endpoint: RuntimeEndpoint, poll_seconds: float = 0.1, stop_after: int | None = None) -> None:
    """Acquire tasks and run each in a forked child until stopped (``stop_after`` tasks, for tests).

    One task at a time, as the SuperNode hands them out (it waits for a message's reply before it takes
    the next): while a child runs, the executor waits for it instead of polling, so the child has the
    CPU to itself."""
    client = endpoint.client()
    launched = 0
    log(INFO, "%s (pid %d): Runtime API %s, polling every %.2fs", READY_LINE, os.getpid(), endpoint.address,
        poll_seconds)
    while stop_after is None or launched < stop_after:
        try:
            task = acquire(client, endpoint)
        except httpx.HTTPError as exc:  # the SuperNode restarting: keep asking, do not exit (and be restarted)
            log(WARNING, "the Runtime API at %s did not answer (%s); asking again", endpoint.address, exc)
            time.sleep(1.0)
            continue
        if task is None:
            time.sleep(poll_seconds)
            continue
        pid = fork_task(endpoint, task)
        launched += 1
        log(INFO, "task %d: run %d in child %d", task.task_id, task.run.run_id, pid)
        wait_for_child(endpoint, task, pid)
    client.close()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fedprune.deploy.warm_executor",
                                     description="Run a SuperNode's ClientApp tasks in forked warm children.")
    parser.add_argument("--runtime-api-address", required=True, help="the SuperNode's Runtime API (HOST:PORT)")
    parser.add_argument("--root-certificates", help="CA of the Runtime API's TLS certificate (default: plaintext)")
    parser.add_argument("--superexec-auth-secret-file", help="the secret file the SuperNode was given")
    parser.add_argument("--parent-pid", type=int, help="exit when this process exits")
    parser.add_argument("--poll-seconds", type=float, default=0.1, help="how often to ask for a task (0.1)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the warm executor process."""
    args = parse_args(argv)
    if not 0.01 <= args.poll_seconds <= 60:
        print("warm executor: --poll-seconds must be between 0.01 and 60", file=sys.stderr)
        return 2
    try:
        secret = load_superexec_auth_secret(args.superexec_auth_secret_file)
        root = Path(args.root_certificates).read_bytes() if args.root_certificates else None
    except (ValueError, OSError) as exc:
        print(f"warm executor: {exc}", file=sys.stderr)
        return 2
    if args.parent_pid is not None:
        start_parent_process_monitor(args.parent_pid)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        serve(RuntimeEndpoint(args.runtime_api_address, root, secret), args.poll_seconds)
    except KeyboardInterrupt:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
