"""Small edge rounds: loopback deployments with the warm executor and with Flower's, and the same settings
simulated, back to back; where a warm deployed round's seconds go.

Usage: python benchmarks/deploy_small_rounds.py [ROUNDS] [OUT_DIR]
   e.g. python benchmarks/deploy_small_rounds.py 5 runs/deploy-small
The issue's setting: `fedprune deploy loopback --strategy hidenseek --dataset digits --num-clients 3
--clients-per-round 3 --rounds 5 --density 0.3` (TLS, node authentication, 3 SuperNodes on this host)
with the warm executor (the default), with Flower's executor (`--executor flower`), with the warm executor
and a 0.5 s idle poll (`--idle-poll 0.5`), and `fedprune simulate` with the same options. Prints per round
the ServerApp's round seconds for each mode, checks that accuracy and message bytes are identical to the
simulation's, and splits the warm deployments' rounds: server-side work (round minus the time the grid
waited for replies), and within that wait, per node, the executor's share (task acquired -> child running:
input pulled, fork), loading the app from the bundle, handling the message, and the rest (polling and
transport: the SuperNode's idle poll of the SuperLink every 3 s or --idle-poll, its 0.5 s wait for the
reply, the grid's pulls). Writes summary.json and round_seconds.png in OUT_DIR.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedprune.deploy.loopback import run_loopback  # noqa: E402
from fedprune.server.run_config import RunSettings  # noqa: E402
from fedprune.simulation.launcher import run_simulation  # noqa: E402

# what runs the SuperNodes' ClientApps, and how long an idle SuperNode waits between pulls (Flower's 3 s)
MODES = {"warm": {"executor": "warm"}, "flower": {"executor": "flower"},
         "warm-idle0.5": {"executor": "warm", "idle_poll": 0.5}, "simulated": None}
TASK_LINE = re.compile(r"child started ([\d.]+)s after the task was acquired, app loaded in ([\d.]+)s, "
                       r"(\w+) message handled in ([\d.]+)s")


def node_tasks(log: Path) -> list[dict]:
    """The warm executor's per-message timings, in order, from one node's log."""
    return [{"executor": float(m[1]), "load": float(m[2]), "type": m[3], "handle": float(m[4])}
            for m in TASK_LINE.finditer(log.read_text())]


def per_round(tasks: list[dict], rounds: int) -> list[dict]:
    """A node's messages grouped by round: the k-th train message opens round k (queries belong to setup)."""
    grouped, current = [{"executor": 0.0, "load": 0.0, "handle": 0.0} for _ in range(rounds)], -1
    for task in tasks:
        if task["type"] == "train":
            current += 1
        if 0 <= current < rounds and task["type"] != "query":
            for key in ("executor", "load", "handle"):
                grouped[current][key] += task[key]
    return grouped


def breakdown(document: dict, workdir: Path, nodes: int) -> list[dict]:
    """Per round of the warm deployment: round, reply wait, server work, the slowest node's child times, rest."""
    rounds = len(document["rounds"])
    by_node = [per_round(node_tasks(workdir / f"node-{i}" / "supernode.log"), rounds) for i in range(nodes)]
    rows = []
    for index, entry in enumerate(document["rounds"]):
        slowest = max((node[index] for node in by_node), key=lambda t: t["executor"] + t["load"] + t["handle"])
        child = slowest["executor"] + slowest["load"] + slowest["handle"]
        rows.append({"round": entry["round"], "seconds": entry["seconds"], "reply_wait": entry["reply_wait_seconds"],
                     "server_work": entry["seconds"] - entry["reply_wait_seconds"], **slowest,
                     "polling_and_transport": entry["reply_wait_seconds"] - child})
    return rows


def identical(a: dict, b: dict) -> bool:
    keys = ("accuracy", "loss", "uplink_bytes", "downlink_bytes")
    return all([r[k] for r in a["rounds"]] == [r[k] for r in b["rounds"]] for k in keys)


def plot(out: Path, runs: dict[str, dict], rows: list[dict]) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, document in runs.items():
        left.plot([r["round"] for r in document["rounds"]], [r["seconds"] for r in document["rounds"]], "o-",
                  label=name)
    left.set(xlabel="round", ylabel="seconds (ServerApp)", yscale="log", title="round time, digits HideNseek")
    left.legend()
    parts = ("server_work", "executor", "load", "handle", "polling_and_transport")
    bottom = [0.0] * len(rows)
    for part in parts:
        values = [max(0.0, row[part]) for row in rows]
        right.bar([row["round"] for row in rows], values, bottom=bottom, label=part)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    right.set(xlabel="round", ylabel="seconds", title="warm deployment: where a round goes (slowest node)")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "round_seconds.png", dpi=120)


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "runs/deploy-small").resolve()
    base = dict(strategy="hidenseek", dataset="digits", model="digits-cnn", num_clients=3, clients_per_round=3,
                rounds=rounds, density=0.3, seed=0)  # what `fedprune deploy loopback --dataset digits ...` runs
    runs, totals = {}, {}
    for name, options in MODES.items():
        started = time.perf_counter()
        settings = RunSettings(**base, out=str(out / name))
        say = (lambda tag: lambda line: print(f"[{tag:>9}] {line}", flush=True))(name)
        if options is None:
            runs[name] = run_simulation(settings, progress=say)
        else:
            runs[name] = run_loopback(settings, workdir=out / f"{name}-deployment", progress=say, **options)[0]
        totals[name] = time.perf_counter() - started

    print("\n" + " | ".join(f"{name:>12}" for name in ["round", *runs]) + " (seconds)")
    for index in range(rounds):
        print(" | ".join([f"{index + 1:>12}", *(f"{doc['rounds'][index]['seconds']:>12.2f}" for doc in runs.values())]))
    medians = {name: statistics.median(r["seconds"] for r in doc["rounds"]) for name, doc in runs.items()}
    breakdowns, parts = {}, {}
    for name in (n for n, options in MODES.items() if options and options["executor"] == "warm"):
        rows = breakdown(runs[name], out / f"{name}-deployment", base["num_clients"])
        later = rows[1:] or rows  # round 1 carries the first contact (setup payload, partition, mask rebuilt once)
        breakdowns[name] = rows
        parts[name] = {key: statistics.median(row[key] for row in later)
                       for key in ("seconds", "reply_wait", "server_work", "executor", "load", "handle",
                                   "polling_and_transport")}
        print(f"{name}, median of rounds 2+: " + ", ".join(f"{k} {v:.2f}s" for k, v in parts[name].items()))
    same = {name: identical(runs[name], runs["simulated"]) for name in runs if name != "simulated"}
    summary = {"median_round_seconds": medians, "whole_command_seconds": totals, "breakdown_rounds": breakdowns,
               "breakdown_median_rounds_2_on": parts, "identical_to_simulation": same,
               "environment": runs["warm"]["environment"]}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    plot(out, runs, breakdowns["warm"])
    print("median round: " + ", ".join(f"{name} {value:.2f}s ({value / medians['simulated']:.1f}x simulated)"
                                       for name, value in medians.items()))
    print("whole command: " + ", ".join(f"{k} {v:.0f}s" for k, v in totals.items()))
    print(f"accuracy and message bytes identical to simulation: {summary['identical_to_simulation']}")
    print(f"wrote {out / 'summary.json'} and {out / 'round_seconds.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
