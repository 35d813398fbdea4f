"""Loopback TLS deployment vs. simulation: the same HideNseek run, per-round wall time and bytes.

Usage: python benchmarks/deploy_loopback.py [ROUNDS] [OUT_DIR]
   e.g. python benchmarks/deploy_loopback.py 5 runs/deploy-bench
The SuperNodes run ``fedprune deploy supernode`` with its defaults (the warm executor).
Fashion-MNIST, FL CNN, IID over 3 clients (all 3 train every round), HideNseek d=0.1 (SynFlow mask,
tally aggregation), 1 local epoch, seed 0. First the deployment: SuperLink + 3 SuperNodes over TLS
with node authentication on loopback, the SuperNodes behind a byte-counting TCP proxy on the Fleet
API (``deploy.wire_meter``); then the same settings as a Ray simulation of 3 SuperNodes. Prints, per
round: the ServerApp's round wall time, its serialized message bytes (MeteredGrid, both runs) and,
for the deployment, the bytes the proxy saw on the wire (TLS records, HTTP/2 and gRPC framing,
heartbeats and polling included). Writes both results.json, wire.json and a summary JSON.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedprune.deploy.loopback import run_loopback  # noqa: E402
from fedprune.server.run_config import RunSettings  # noqa: E402
from fedprune.simulation.launcher import run_simulation  # noqa: E402


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
    out = Path(sys.argv[2] if len(sys.argv) > 2 else "runs/deploy-bench").resolve()
    base = dict(strategy="hidenseek", dataset="fashion-mnist", model="fl-cnn", partition="iid", num_clients=3,
                clients_per_round=3, rounds=rounds, density=0.1, score="synflow", personal_eval_every=rounds,
                seed=0, round_timeout=1800.0)
    t0 = time.perf_counter()
    deployed, wire = run_loopback(RunSettings(**base, out=str(out / "deployed")), workdir=out / "deployment",
                                  progress=lambda line: print(f"[deploy] {line}", flush=True))
    t_deploy = time.perf_counter() - t0
    t0 = time.perf_counter()
    simulated = run_simulation(RunSettings(**base, out=str(out / "simulated")),
                               progress=lambda line: print(f"[sim]    {line}", flush=True))
    t_sim = time.perf_counter() - t0

    print(f"\n{'round':>5} | {'deploy s':>8} | {'sim s':>6} | {'msg up B':>9} | {'msg down B':>10} | "
          f"{'sim up B':>9} | {'sim down B':>10} | {'wire up B':>10} | {'wire down B':>11}")
    rows = []
    for d, s, w in zip(deployed["rounds"], simulated["rounds"], wire, strict=True):
        row = {"round": d["round"], "deploy_seconds": d["seconds"], "sim_seconds": s["seconds"],
               "deploy_uplink_bytes": d["uplink_bytes"], "deploy_downlink_bytes": d["downlink_bytes"],
               "sim_uplink_bytes": s["uplink_bytes"], "sim_downlink_bytes": s["downlink_bytes"],
               "wire_uplink_bytes": w["wire_uplink_bytes"], "wire_downlink_bytes": w["wire_downlink_bytes"],
               "deploy_accuracy": d["accuracy"], "sim_accuracy": s["accuracy"]}
        rows.append(row)
        print(f"{row['round']:>5} | {row['deploy_seconds']:>8.1f} | {row['sim_seconds']:>6.1f} | "
              f"{row['deploy_uplink_bytes']:>9,} | {row['deploy_downlink_bytes']:>10,} | "
              f"{row['sim_uplink_bytes']:>9,} | {row['sim_downlink_bytes']:>10,} | "
              f"{row['wire_uplink_bytes']:>10,} | {row['wire_downlink_bytes']:>11,}")
    summary = {
        "rounds": rows,
        "deploy_total_seconds": t_deploy, "sim_total_seconds": t_sim,
        "deploy_median_round_seconds": statistics.median(r["deploy_seconds"] for r in rows),
        "sim_median_round_seconds": statistics.median(r["sim_seconds"] for r in rows),
        "deploy_final_accuracy": deployed["summary"]["final_accuracy"],
        "sim_final_accuracy": simulated["summary"]["final_accuracy"],
        "environment": deployed["environment"],
    }
    summary["median_ratio"] = summary["deploy_median_round_seconds"] / summary["sim_median_round_seconds"]
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\nmedian round: deployed {summary['deploy_median_round_seconds']:.1f}s, simulated "
          f"{summary['sim_median_round_seconds']:.1f}s ({summary['median_ratio']:.2f}x); whole run incl. start/stop: "
          f"deployed {t_deploy:.0f}s, "
          f"simulated {t_sim:.0f}s; final accuracy deployed {summary['deploy_final_accuracy']:.4f}, "
          f"simulated {summary['sim_final_accuracy']:.4f}\nwrote {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
