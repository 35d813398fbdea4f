"""Issue 20's acceptance table from the runs of ``benchmarks/hidenseek_downlink.sh``: per seed, the default
(float32 scores), the coded exchange (``step1``) and dense FedAvg with the logit-adjusted loss (``fedavg-la``);
last-5 accuracy, bytes per client-round both ways (results.json's summary: node discovery included) and their
sum's ratio to dense FedAvg's model bytes (the issue's bound is 1/100), paired differences.

Usage: python benchmarks/hidenseek_acceptance.py [RUNS_DIR] [DENSITY] [SEEDS]
       (default runs/hns-downlink 0.1 0,1,2; a missing run prints as '-')
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

DENSE_MODEL = 6_655_065  # dense FedAvg, FL CNN: uplink bytes per client-round (BENCHMARKS.md); the bound
# is up + down <= DENSE_MODEL / 100


def row(path: Path) -> dict | None:
    """last-5 accuracy and bytes per client-round of one results.json, or None if the run is missing."""
    try:
        doc = json.loads((path / "results.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if doc.get("status") != "completed":
        return None
    s = doc["summary"]
    return {"last5": s["final_accuracy_last5"], "up": s["uplink_bytes_per_client_round"],
            "down": s["downlink_bytes_per_client_round"]}


def main() -> int:
    runs = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/hns-downlink")
    density = sys.argv[2] if len(sys.argv) > 2 else "0.1"
    seeds = [int(x) for x in (sys.argv[3] if len(sys.argv) > 3 else "0,1,2").split(",")]
    table = {label: {seed: row(runs / f"{label}-{density if label != 'fedavg-la' else '0.1'}-{seed}")
                     for seed in seeds} for label in ("default", "step1", "fedavg-la")}
    print("| run | seed | last-5 | uplink B/client-round | downlink B/client-round | up + down | of dense one way |")
    print("|---|---|---|---|---|---|---|")
    for label, by_seed in table.items():
        for seed, r in by_seed.items():
            if r is None:
                print(f"| {label} | {seed} | - | - | - | - | - |")
                continue
            total = r["up"] + r["down"]
            print(f"| {label} | {seed} | {r['last5']:.4f} | {r['up']:,.0f} | {r['down']:,.0f} | {total:,.0f} | "
                  f"1/{DENSE_MODEL / total:.1f} |")
    for label in table:
        values = [r["last5"] for r in table[label].values() if r is not None]
        if values:
            print(f"mean last-5 {label}: {statistics.mean(values):.4f} over {len(values)} seeds")
    pairs = [(table["step1"][s], table["default"][s], table["fedavg-la"][s]) for s in seeds]
    for name, index in (("step1 - default", 1), ("step1 - fedavg-la", 2)):
        diffs = [(p[0]["last5"] - p[index]["last5"]) * 100 for p in pairs if p[0] and p[index]]
        if diffs:
            print(f"{name}: {', '.join(f'{d:+.2f}' for d in diffs)} points (mean {statistics.mean(diffs):+.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
