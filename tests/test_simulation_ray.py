"""Real runs: a private SuperLink in simulation mode, Ray actors, `flwr run`, an attached Ray cluster.

Each test stops what it started (SuperLink process group, Ray head) by PID.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fedprune.server.results import validate_results
from fedprune.server.run_config import RunSettings
from fedprune.simulation.launcher import APP_DIR, LocalSuperLink, _bin, free_port, run_simulation

pytestmark = pytest.mark.slow


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_ray_simulation_smoke_20_clients_2_rounds(tmp_path):
    settings = RunSettings(dataset="digits", model="digits-cnn", partition="dirichlet", alpha=1.0,
                           num_clients=20, clients_per_round=5, rounds=2, out=str(tmp_path / "run"),
                           min_partition_size=5)
    lines = []
    document = run_simulation(settings, progress=lines.append)
    validate_results(document)
    assert document["status"] == "completed"
    assert [r["round"] for r in document["rounds"]] == [1, 2]
    assert all(r["clients_sampled"] == 5 and r["clients_failed"] == 0 for r in document["rounds"])
    assert document["setup"]["nodes"] == 20
    assert len(lines) == 2 and lines[0].startswith("round   1/2 | acc ")
    on_disk = json.loads((tmp_path / "run" / "results.json").read_text())
    assert on_disk["summary"] == document["summary"]


def test_flwr_run_dot_against_local_simulation_superlink(tmp_path):
    link = LocalSuperLink.start(home=tmp_path / "flwr-home")
    try:
        out = tmp_path / "flwr-run"
        overrides = (f'dataset="digits" model="digits-cnn" partition="iid" num-clients=10 clients-per-round=3 '
                     f'rounds=2 out="{out}"')
        started = subprocess.run(
            [_bin("flwr"), "run", ".", "fedprune", "--run-config", overrides,
             "--federation-config", "num-supernodes=10 client-resources-num-cpus=1", "--format", "json"],
            cwd=APP_DIR, env={**os.environ, "FLWR_HOME": str(link.home),
                              "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"},
            capture_output=True, text=True, timeout=120)
        run_id = json.loads(started.stdout)["run-id"]
        deadline = time.monotonic() + 300
        status = ""
        while time.monotonic() < deadline:
            listing = json.loads(link.flwr("ls", "fedprune", "--run-id", str(run_id), "--format", "json").stdout)
            status = listing["runs"][0]["status"]
            if status.startswith("finished"):
                break
            time.sleep(1)
        assert status == "finished:completed"
        document = json.loads((out / "results.json").read_text())
        validate_results(document)
        assert document["status"] == "completed" and len(document["rounds"]) == 2
    finally:
        link.stop()
    assert not _alive(link.process.pid)


def test_attach_to_existing_ray_cluster(tmp_path):
    port = free_port()
    ray_bin = str(Path(sys.executable).parent / "ray")
    head = subprocess.Popen(  # ray start --block spawns its daemons by name from PATH
        [ray_bin, "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--include-dashboard=false",
         "--disable-usage-stats"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    try:
        deadline = time.monotonic() + 60
        ready = False
        while time.monotonic() < deadline and not ready:
            probe = subprocess.run([ray_bin, "status", f"--address=127.0.0.1:{port}"], capture_output=True)
            ready = probe.returncode == 0
            time.sleep(1)
        assert ready, "ray head did not come up"
        settings = RunSettings(dataset="digits", model="digits-cnn", partition="iid", num_clients=10,
                               clients_per_round=3, rounds=1, out=str(tmp_path / "attached"))
        document = run_simulation(settings, ray_address=f"127.0.0.1:{port}", progress=lambda _: None)
        assert document["status"] == "completed"
        # The simulation's driver registered as a job in *this* cluster (not a private Ray instance).
        probe = (f"import ray; ray.init(address='127.0.0.1:{port}', logging_level='ERROR'); "
                 "print(len(ray._private.state.jobs()))")
        jobs = subprocess.run(
            [sys.executable, "-c", probe],
            capture_output=True, text=True, timeout=120)
        assert int(jobs.stdout.strip().splitlines()[-1]) >= 2, jobs.stderr
    finally:
        os.killpg(head.pid, signal.SIGTERM)
        try:
            head.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=10)
        marker = Path("/tmp/ray/ray_current_cluster")  # the head's address file outlives it
        if marker.exists() and str(port) in marker.read_text():
            marker.unlink()
    assert not _alive(head.pid)


def test_hidenseek_ray_simulation_3_rounds_on_digits(tmp_path):
    settings = RunSettings(strategy="hidenseek", dataset="digits", model="digits-cnn", partition="iid",
                           num_clients=10, clients_per_round=4, rounds=3, density=0.3, score="synflow",
                           personal_eval_every=3, out=str(tmp_path / "hns"))
    document = run_simulation(settings, progress=lambda _: None)
    validate_results(document)
    assert document["status"] == "completed"
    for entry in document["rounds"]:
        assert entry["clients_failed"] == 0
        assert entry["flip_rate"] is not None
        payloads = entry["uplink_payload_bytes"]
        assert len(payloads) == 4
        # measured uplink per client = the codec's coded payload + fixed framing of the record and metrics
        for client in entry["clients"]:
            assert 0 < client["uplink_bytes"] - payloads[str(client["node_id"])] < 400
    assert "federated_evaluation" in document["rounds"][2]


def test_tile32_hidenseek_ray_simulation_nodes_rebuild_the_tile_mask(tmp_path):
    """--mask-granularity tile32 end to end on Ray: every node rebuilds the server's tile mask from θ0 (a node
    whose rebuild differed would answer with an error: a failed client), and the run completes."""
    settings = RunSettings(strategy="hidenseek", dataset="digits", model="digits-cnn", partition="iid",
                           num_clients=6, clients_per_round=3, rounds=2, density=0.3, score="synflow",
                           mask_granularity="tile32", personal_eval_every=0, out=str(tmp_path / "tiles"))
    document = run_simulation(settings, progress=lambda _: None)
    validate_results(document)
    assert document["status"] == "completed" and document["config"]["mask-granularity"] == "tile32"
    assert all(r["clients_failed"] == 0 and r["aggregated"] for r in document["rounds"])


def _descendants(root: int) -> set[int]:
    """Every live process below ``root`` (from /proc), however deep (Ray daemons start their own sessions)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def test_sigterm_to_simulate_stops_everything_it_started(tmp_path):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "fedprune.cli", "simulate", "--dataset", "digits", "--model", "digits-cnn",
               "--partition", "iid", "--num-clients", "6", "--clients-per-round", "3", "--rounds", "50",
               "--out", str(out)]
    run = subprocess.Popen(command, cwd=APP_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           start_new_session=True)
    started: set[int] = set()
    try:
        for line in run.stdout:  # wait until a round has trained: SuperLink, Ray and its actors are all up
            started |= _descendants(run.pid)
            if line.startswith("round   1/"):
                break
        started |= _descendants(run.pid)
        assert len(started) >= 4, started  # SuperLink, flwr-simulation, raylet, actors, ...
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=60) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_alive(pid) for pid in started):
            time.sleep(0.5)
        assert not [pid for pid in started if _alive(pid)]
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
        for pid in started:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_run_status_checks_start_no_flwr_process(tmp_path, monkeypatch):
    """After `flwr run` submits the run, its status comes from the Control API, asked from this process:
    however often it is asked, no further `flwr` interpreter is started."""
    started: list[list[str]] = []

    class CountedPopen(subprocess.Popen):
        def __init__(self, args, *rest, **kwargs):
            started.append([str(a) for a in args] if isinstance(args, list | tuple) else [str(args)])
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", CountedPopen)
    settings = RunSettings(dataset="digits", model="digits-cnn", partition="iid", num_clients=3, clients_per_round=3,
                           rounds=3, out=str(tmp_path / "run"))
    document = run_simulation(settings, progress=lambda line: None, status_poll_seconds=0.2)
    assert document["status"] == "completed"
    flwr = [args for args in started if Path(args[0]).name == "flwr"]
    assert [args[1] for args in flwr] == ["run"], flwr
    assert any(Path(args[0]).name == "flower-superlink" for args in started)
