"""The warm executor's footing in Flower: the internals it relies on, and its own small parts.

The warm executor (``deploy.warm_executor``) does the job of Flower's SuperExec and ``flwr-clientapp``
with Flower's own pieces. These tests fail loudly, naming what moved, when a Flower release changes
them (the pin stays ``flwr<1.40``); the real runs are in ``test_deploy_loopback.py``.
"""

import inspect
import os
import signal
import subprocess
import sys
import time
import types
from importlib.metadata import version

import pytest
from fedprune.deploy import warm_executor
from fedprune.deploy.launch import executor_command, supernode_command
from fedprune.deploy.node_supervisor import MAX_RESTARTS, NodeSupervisor, write_auth_secret
from fedprune.deploy.supernode_process import PollClock, use_idle_poll
from fedprune.simulation.flower_processes import flower_bin
from flwr.proto.runtime_pb2 import AcquireTaskRequest, AcquireTaskResponse
from flwr.supercore.constant import TaskType
from flwr.supercore.inflatable.inflatable_utils import pull_and_inflate_object_from_tree
from flwr.supercore.superexec import run_superexec
from flwr.supernode import start_client_internal
from flwr.supernode.runtime import run_clientapp


def _parameters(function) -> list[str]:
    return list(inspect.signature(function).parameters)


def test_flower_is_the_release_the_warm_executor_was_written_against():
    major, minor = (int(part) for part in version("flwr").split(".")[:2])
    assert (major, minor) >= (1, 39) and (major, minor) < (1, 40), "re-check deploy/warm_executor.py against it"


def test_the_flower_internals_it_calls_keep_their_shape():
    # What flwr-clientapp does, in pieces the executor calls itself (its own pull_task_input mirrors Flower's,
    # with a shorter first retry for content the SuperNode does not hold yet).
    flowers = inspect.getsource(run_clientapp.pull_task_input)
    for step in ("client.PullTaskInput(", "client.PullMessages(", "pull_and_inflate_object_from_tree(",
                 "make_pull_object_fn_protobuf(client.PullObject", "client.ConfirmMessageReceived",
                 '__dict__["_message_id"] = object_tree.object_id'):
        assert step in flowers, f"Flower's pull_task_input no longer does {step}: re-check the warm executor's"
    assert {"initial_backoff", "backoff_cap"} <= set(_parameters(pull_and_inflate_object_from_tree))
    assert _parameters(run_clientapp.push_message) == ["client", "message", "context"]
    assert _parameters(run_clientapp.push_task_output) == ["client", "context", "sub_status", "details"]
    # SuperExec's request for a task, and the task it gets.
    assert {"supported_task_types", "agentapp_fab_hashes"} <= set(AcquireTaskRequest.DESCRIPTOR.fields_by_name)
    assert {"task", "token"} <= set(AcquireTaskResponse.DESCRIPTOR.fields_by_name)
    assert TaskType.CLIENT_APP == "flwr-clientapp"
    # The Runtime API methods SuperExec authentication protects are the ones the executor signs.
    source = inspect.getsource(run_superexec)
    for method in warm_executor.AUTH_METHODS:
        assert method in source, f"{method} is no longer protected by SuperExec auth"


def test_the_supernode_still_takes_process_isolation_and_an_executor_secret():
    help_text = subprocess.run([flower_bin("flower-supernode"), "--help"], capture_output=True, text=True,
                               timeout=120).stdout
    for flag in ("--isolation {subprocess,process}", "--superexec-auth-secret-file"):
        assert flag in help_text
    # The SuperNode's own waits (the floor of a deployed round; deploy.supernode_process shortens them).
    assert "time.sleep(3)" in inspect.getsource(start_client_internal.start_client_internal)
    assert "time.sleep(0.5)" in inspect.getsource(start_client_internal._push_messages)
    assert start_client_internal.time is time or isinstance(start_client_internal.time, PollClock)


def test_a_shorter_idle_poll_changes_only_flowers_two_waits(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    holder = types.ModuleType("loop")
    clock = use_idle_poll(0.25, holder)
    assert holder.time is clock
    for seconds in (3, 0.5, 1.0, 0.01):
        clock.sleep(seconds)
    assert slept == [0.25, 0.25, 1.0, 0.01]
    assert use_idle_poll(2.0, holder).reply == 0.5 and clock.monotonic is time.monotonic
    command = supernode_command("link:9092", root_cert=None, private_key=None, node_config={}, idle_poll=0.5)
    assert command[:6] == [sys.executable, "-m", "fedprune.deploy.supernode_process", "--idle-poll", "0.5", "--"]
    assert command[6:8] == ["--grpc-rere", "--superlink"]
    default = supernode_command("link:9092", root_cert=None, private_key=None, node_config={})
    assert default[:6] == [sys.executable, "-m", "fedprune.deploy.supernode_process", "--idle-poll", "3.0", "--"]


def test_a_forked_child_imports_the_app_from_the_bundle_not_from_the_parent():
    import fedprune.client.app  # noqa: F401 - the parent holds the app's modules

    code = ("import sys, fedprune.client.app\n"
            "from fedprune.deploy.warm_executor import drop_app_modules\n"
            "dropped = drop_app_modules()\n"
            "assert 'fedprune.client.app' in dropped and 'fedprune' in dropped, dropped\n"
            "assert not [m for m in sys.modules if m.split('.')[0] == 'fedprune'], 'left behind'\n"
            "assert 'torch' in sys.modules and 'numpy' in sys.modules\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_exit_descriptions_name_the_signal():
    pid = os.fork()
    if pid == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    assert warm_executor.exit_description(status) == "killed by signal 9 (SIGKILL)"
    pid = os.fork()
    if pid == 0:
        os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert warm_executor.exit_description(status) == "exit code 3"


def test_the_executor_refuses_a_bad_poll_interval_and_a_missing_secret(tmp_path, capsys):
    assert warm_executor.main(["--runtime-api-address", "127.0.0.1:1", "--poll-seconds", "0"]) == 2
    assert "--poll-seconds" in capsys.readouterr().err
    assert warm_executor.main(["--runtime-api-address", "127.0.0.1:1",
                               "--superexec-auth-secret-file", str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


def test_supernode_and_executor_share_the_secret_and_the_runtime_port(tmp_path):
    secret = tmp_path / "s"
    node = supernode_command("link:9092", root_cert=None, private_key=None, node_config={"partition-id": 0},
                             runtime_port=9100, auth_secret=secret)
    assert node[node.index("--isolation") + 1] == "process"
    assert node[node.index("--superexec-auth-secret-file") + 1] == str(secret)
    assert node[node.index("--port") + 1] == "9100" and node[node.index("--host") + 1] == "127.0.0.1"
    warm = executor_command("warm", 9100, secret, 42)
    assert warm[:3] == [sys.executable, "-m", "fedprune.deploy.warm_executor"]
    flower = executor_command("flower", 9100, secret, 42)
    assert flower[0].endswith("flower-superexec") and "--insecure" in flower
    for command in (warm, flower):
        assert command[command.index("--runtime-api-address") + 1] == "127.0.0.1:9100"
        assert command[command.index("--superexec-auth-secret-file") + 1] == str(secret)
        assert command[command.index("--parent-pid") + 1] == "42"
    with pytest.raises(ValueError, match="unknown executor"):
        executor_command("cold", 9100, secret, 42)
    # Without a secret the node runs Flower's own executor in subprocess isolation.
    assert "--isolation" not in supernode_command("link:9092", root_cert=None, private_key=None, node_config={})


def test_the_secret_is_private_and_random(tmp_path):
    first, second = write_auth_secret(), write_auth_secret()
    try:
        assert first.stat().st_mode & 0o777 == 0o600 and first.parent.stat().st_mode & 0o777 == 0o700
        assert len(first.read_bytes()) == 32 and first.read_bytes() != second.read_bytes()
    finally:
        for path in (first, second):
            path.unlink()
            path.parent.rmdir()


def test_a_warm_executor_that_keeps_dying_falls_back_to_flowers(capsys):
    supervisor = NodeSupervisor(["true"], 1, lambda kind: [kind], {})
    for _ in range(MAX_RESTARTS - 1):
        supervisor.executor_exited(1)
        assert supervisor.executor == "warm"
    supervisor.executor_exited(1)
    assert supervisor.executor == "flower"
    log = capsys.readouterr().err
    assert "warm executor exited with code 1; restarting it" in log
    assert "falling back to Flower's executor" in log


def test_the_executor_outlives_a_runtime_api_that_is_not_there_yet(tmp_path):
    """A SuperNode restarting must not make its executor exit (each exit counts toward the fallback)."""
    log = tmp_path / "executor.log"
    with open(log, "wb") as handle:
        process = subprocess.Popen([sys.executable, "-m", "fedprune.deploy.warm_executor", "--runtime-api-address",
                                    "127.0.0.1:9"], stdout=handle, stderr=subprocess.STDOUT)
    try:  # waits by what the log says, not a fixed time: importing torch takes long on a loaded machine
        deadline = time.monotonic() + 90
        while not ("retrying" in log.read_text() or "did not answer" in log.read_text()):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"no retry within 90 s:\n{log.read_text()}"
            time.sleep(0.2)
        time.sleep(2)  # and it goes on asking
        assert process.poll() is None, log.read_text()
    finally:
        process.kill()
        process.wait(timeout=10)
