"""Real deployment on loopback: SuperLink + SuperNodes over TLS with node authentication, and faults.

Every test starts its own SuperLink (own ports, FLWR_HOME, state database, certificates) and
SuperNodes, and stops all of them by process group in ``finally`` (the deployment's context
manager); every wait has a timeout so a hang fails instead of blocking CI.
"""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from fedprune.deploy.certificates import create_certificates, create_node_keys
from fedprune.deploy.loopback import WIRE_NAME, LoopbackDeployment
from fedprune.server.results import validate_results
from fedprune.server.run_config import RunSettings
from fedprune.simulation.flower_processes import descendants

pytestmark = pytest.mark.slow


def _settings(tmp_path, **overrides) -> RunSettings:
    values = dict(strategy="hidenseek", dataset="digits", model="digits-cnn", partition="iid", num_clients=3,
                  clients_per_round=3, min_train_nodes=2, rounds=3, density=0.3, score="magnitude",
                  personal_eval_every=0, score_lr=0.01, round_timeout=120.0, out=str(tmp_path / "run"))
    values.update(overrides)
    return RunSettings(**values)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, IndexError):
        return False


def _exit_code(process, timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.process.poll() is not None:
            return process.process.returncode
        time.sleep(0.5)
    return None


def _command_line(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]
    except FileNotFoundError:
        return []


def _child_command(pid: int, marker: str) -> list[str]:
    """The command line of ``pid``'s first descendant whose command line names ``marker``."""
    found = [_command_line(child) for child in descendants(pid) if marker in " ".join(_command_line(child))]
    assert found, f"no process '{marker}' under {pid}"
    return found[0]


def test_tls_node_auth_hidenseek_3_rounds_through_the_grpc_fleet_api_and_intruders_are_refused(tmp_path):
    settings = _settings(tmp_path)
    intruder_key = create_node_keys(tmp_path / "intruder", "intruder")  # never registered
    foreign_ca = create_certificates(tmp_path / "foreign", nodes=0).ca_cert  # a CA that did not sign the SuperLink
    with LoopbackDeployment(tmp_path / "deploy", 3, keep_models=True, idle_poll=0.5) as deployment:
        intruders = {
            "unregistered": deployment.start_supernode(0, private_key=intruder_key.private_key, max_retries=1,
                                                       name="unregistered"),
            "wrong-root": deployment.start_supernode(1, root_cert=foreign_ca, max_retries=1, name="wrong-root"),
            "insecure": deployment.start_supernode(2, insecure=True, max_retries=1, name="insecure"),
        }
        document, wire = deployment.run(settings, progress=lambda line: None, timeout=600)
        total_wire = deployment.meter.snapshot()
        listing = json.loads(deployment.flwr("supernode", "list", "loopback", "--format", "json").stdout)
        superlink_command = deployment.superlink.process.args
        node_commands = [_child_command(node.pid, "--grpc-rere") for node in deployment.supernodes]
        executors = [_child_command(node.pid, "fedprune.deploy.warm_executor") for node in deployment.supernodes]
        codes = {name: _exit_code(process, 60) for name, process in intruders.items()}
        logs = {name: process.log_path.read_text() for name, process in intruders.items()}

    validate_results(document)
    assert document["status"] == "completed" and [r["round"] for r in document["rounds"]] == [1, 2, 3]
    assert document["setup"]["nodes"] == 3
    for entry in document["rounds"]:
        assert entry["clients_sampled"] == 3 and entry["clients_failed"] == 0 and entry["aggregated"]
        assert sorted(c["partition_id"] for c in entry["clients"]) == [0, 1, 2]

    # Secure server side: TLS on every API, node authentication, gRPC-rere Fleet API, state database.
    for flag in ("--ssl-ca-certfile", "--ssl-certfile", "--ssl-keyfile", "--enable-supernode-auth", "--database"):
        assert flag in superlink_command
    assert superlink_command[superlink_command.index("--fleet-api-type") + 1] == "grpc-rere"
    assert "--insecure" not in superlink_command
    # Every SuperNode spoke gRPC-rere with TLS and its own key, through the wire meter to the Fleet API.
    for command, executor in zip(node_commands, executors, strict=True):
        assert "--grpc-rere" in command and "--insecure" not in command
        assert command[command.index("--idle-poll") + 1] == "0.5"  # Flower's SuperNode with a 0.5 s idle poll
        assert command[command.index("--superlink") + 1] == deployment.meter.address
        assert "--root-certificates" in command and "--auth-supernode-private-key" in command
        # ... and ran its ClientApps in the warm executor, which signs its Runtime API requests with the secret
        assert command[command.index("--isolation") + 1] == "process"
        secret = command[command.index("--superexec-auth-secret-file") + 1]
        assert executor[executor.index("--superexec-auth-secret-file") + 1] == secret
    assert deployment.meter.target == ("127.0.0.1", deployment.fleet_port)
    # The federation's messages really crossed that socket: more bytes on the wire than the
    # ServerApp's serialized message bytes, each way (TLS/HTTP2/gRPC framing and polling on top).
    assert total_wire.downlink > sum(r["downlink_bytes"] for r in document["rounds"])
    assert total_wire.uplink > sum(r["uplink_bytes"] for r in document["rounds"])
    assert [w["round"] for w in wire] == [1, 2, 3] and all(w["wire_downlink_bytes"] > 0 for w in wire)
    assert json.loads((tmp_path / "run" / WIRE_NAME).read_text()) == wire
    # The SuperNodes ran this checkout's ClientApp: each kept its round-3 model for edge inference.
    for index in range(3):
        assert (tmp_path / "deploy" / f"node-{index}" / "models" / "edge-model.pt").is_file()

    # Intruders: none got in, each exited with Flower's connection-failure code and says why.
    assert len(listing["nodes"]) == 3  # only the registered keys exist on the SuperLink
    assert all(code not in (None, 0) for code in codes.values()), codes
    assert all("Exit Code: 305" in log for log in logs.values()), logs  # 305: cannot connect to the SuperLink
    assert "Failed to activate SuperNode" in logs["unregistered"]
    assert "CERTIFICATE_VERIFY_FAILED" in logs["wrong-root"]
    assert "Starting insecure channel" in logs["insecure"]


def test_a_supernode_killed_mid_round_the_round_completes_with_the_others(tmp_path):
    # The SuperLink declares a node that missed heartbeats for 2 x 30 s unavailable and answers for
    # it with an error reply, so the round ends then; the round timeout is only the backstop (and
    # must leave the live nodes time to train on a loaded CI machine). The node is killed while its
    # ClientApp child trains round 2 (seen as a child of its warm executor), not after a fixed delay:
    # warm rounds take a few seconds, and a delay races them.
    settings = _settings(tmp_path, rounds=2, round_timeout=180.0, local_epochs=3)
    with LoopbackDeployment(tmp_path / "deploy", 3) as deployment:
        node = deployment.supernodes[2]
        killed = _start_round_2_watch(tmp_path / "run" / "results.json", node,
                                      lambda child: deployment.kill_supernode(2))
        run_id = deployment.submit(settings)
        status, document = deployment.follow(run_id, settings, progress=lambda line: None, timeout=400)
        assert not node.alive()
    assert killed, "node 2 was never seen training round 2"
    assert status == "finished:completed" and document["status"] == "completed"
    first, second = document["rounds"]
    assert first["clients_failed"] == 0
    assert second["clients_sampled"] == 3 and second["clients_failed"] == 1 and second["aggregated"]
    failed = [c for c in second["clients"] if c["failed"]]
    assert [c["partition_id"] for c in failed] == [2]
    assert second["seconds"] < settings.round_timeout  # ended by Flower's unavailable-node reply, not the timeout


def test_server_side_stopped_after_round_2_of_4_resumes_and_loses_nothing(tmp_path):
    settings = _settings(tmp_path, strategy="static-synflow", rounds=4, lr=0.05)
    with LoopbackDeployment(tmp_path / "deploy", 3) as deployment:
        stopped: list[dict] = []

        def stop_after_round_2(document):
            if document and len(document.get("rounds", [])) >= 2 and not stopped:
                stopped.append(json.loads(json.dumps(document)))
                server_side.extend(descendants(deployment.superlink.pid))  # SuperExec, ServerApp
                deployment.stop_superlink()  # SuperLink, SuperExec and the ServerApp, as a power cut would
                return True  # stop following: nothing is left to ask
            return False

        server_side: list[int] = []
        run_id = deployment.submit(settings)
        status, _ = deployment.follow(run_id, settings, progress=lambda line: None, timeout=400,
                                      on_poll=stop_after_round_2)
        assert status == "stopped" and stopped and not deployment.superlink.alive()
        deadline = time.monotonic() + 15
        while any(_alive(pid) for pid in server_side) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert server_side and not any(_alive(pid) for pid in server_side)  # no ServerApp left behind
        before = json.loads((tmp_path / "run" / "results.json").read_text())
        assert before["status"] == "running" and len(before["rounds"]) in (2, 3)

        deployment.start_superlink()  # same ports, same state database: registrations survive
        deadline = time.monotonic() + 120
        while deployment.online_nodes() < 3 and time.monotonic() < deadline:
            time.sleep(2)
        document, _ = deployment.run(RunSettings(**{**settings.__dict__, "resume": True}),
                                     progress=lambda line: None, timeout=400)

    assert document["status"] == "completed"
    assert [r["round"] for r in document["rounds"]] == [1, 2, 3, 4]
    assert document["rounds"][:2] == stopped[0]["rounds"][:2]  # rounds 1-2 unchanged, byte for byte in content
    assert all(r["clients_failed"] == 0 and r["aggregated"] for r in document["rounds"])


def _warm_executor_of(node) -> int | None:
    """PID of the warm executor ``fedprune deploy supernode`` runs for ``node`` (not its forked children)."""
    for pid in descendants(node.pid):
        line = _command_line(pid)
        if "fedprune.deploy.warm_executor" in " ".join(line) and _parent(pid) == node.pid:
            return pid
    return None


def _parent(pid: int) -> int | None:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (FileNotFoundError, IndexError, ValueError):
        return None


def _next_executor(node, old: int | None, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid = _warm_executor_of(node)
        if pid is not None and pid != old:
            return pid
        time.sleep(0.1)
    raise AssertionError(f"no new warm executor under {node.pid}; see {node.log_path}")


def _wait_for_log(node, text: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while text not in node.log_path.read_text():
        assert time.monotonic() < deadline, f"'{text}' not in {node.log_path}"
        time.sleep(0.2)


def _start_round_2_watch(results: Path, node, action) -> list[int]:
    """Call ``action(child)`` once, when ``node``'s warm executor has a forked child while ``results`` holds
    exactly one round (the child is training round 2); returns the list the child's PID is added to."""
    seen: list[int] = []

    def watch() -> None:
        warm = _next_executor(node, None)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not seen:
            try:
                document = json.loads(results.read_text()) if results.is_file() else {}
            except json.JSONDecodeError:  # caught mid-write
                document = {}
            children = [pid for pid in descendants(warm) if _parent(pid) == warm]
            if len(document.get("rounds", [])) == 1 and children:
                seen.append(children[0])
                action(children[0])
            time.sleep(0.01)

    threading.Thread(target=watch, daemon=True).start()
    return seen


def test_warm_executor_faults_killed_clientapp_child_and_killed_executors(tmp_path):
    """Node 0: its warm executor is killed once (restarted, still warm). Node 2: killed three times in a minute
    (falls back to Flower's executor). Node 1: the ClientApp child training round 2 is killed: that round
    goes on without it at once (the executor answers for the child), and round 3 includes it again."""
    settings = _settings(tmp_path, rounds=3, round_timeout=180.0, local_epochs=3)
    with LoopbackDeployment(tmp_path / "deploy", 3) as deployment:
        nodes = deployment.supernodes
        executor = _next_executor(nodes[0], None)
        os.kill(executor, signal.SIGKILL)
        _next_executor(nodes[0], executor)
        executor = _next_executor(nodes[2], None)
        for _ in range(3):
            os.kill(executor, signal.SIGKILL)
            _wait_for_log(nodes[2], "starting", timeout=30)
            time.sleep(0.5)
            executor = _warm_executor_of(nodes[2]) or executor
        _wait_for_log(nodes[2], "falling back to Flower's executor")

        killed = _start_round_2_watch(tmp_path / "run" / "results.json", nodes[1],
                                      lambda child: os.kill(child, signal.SIGKILL))
        run_id = deployment.submit(settings)
        status, document = deployment.follow(run_id, settings, progress=lambda line: None, timeout=500)
        logs = [node.log_path.read_text() for node in nodes]

    assert killed, "round 2's ClientApp child on node 1 was never seen"
    assert status == "finished:completed" and document["status"] == "completed"
    first, second, third = document["rounds"]
    assert first["clients_failed"] == 0 and third["clients_failed"] == 0  # node 1 is back in round 3
    assert second["clients_failed"] == 1 and second["aggregated"]
    [failed] = [c for c in second["clients"] if c["failed"]]
    assert failed["partition_id"] == 1
    [reason] = second["failure_reasons"]
    assert f"ClientApp process {killed[0]} killed by signal 9 (SIGKILL)" in reason["reason"]
    assert second["seconds"] < 45  # answered at once, not after Flower's 60 s task-token expiry
    assert "warm executor exited with code -9; restarting it" in logs[0]
    assert "falling back to Flower's executor" not in logs[0] and "app loaded" in logs[0]
    assert "falling back to Flower's executor (one process per message)" in logs[2]
    assert "Start `flwr-clientapp` process" in logs[2] or "flwr-clientapp" in logs[2]
