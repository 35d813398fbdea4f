"""Issue 20's acceptance table from the runs of ``benchmarks/hidenseek_downlink.sh``: per seed, last-5 accuracy,
bytes per client-round both ways (results.json's summary: node discovery included) and their sum's ratio to
dense FedAvg's model bytes (the issue's bound is 1/100); paired differences of each coded row against the
float32 default (``default``) and against dense FedAvg with the logit-adjusted loss (``fedavg-la``).

Usage: python benchmarks/hidenseek_acceptance.py [RUNS_DIR] [DENSITY] [SEEDS] [CODED_ROWS]
       (default: runs/hns-downlink 0.1 0,1,2 step1,sqrt0.25; a missing run prints as '-')
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

DENSE_MODEL = 6_655_065  # dense FedAvg, FL CNN: uplink bytes per client-round (BENCHMARKS.md); bound: up + down / 100


def row(path: Path) -> dict | None:
    """last-5 accuracy and bytes per client-round of one completed results.json, else None."""
    try:
        doc = json.loads((path / "results.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if doc.get("status") != "completed":
        return None
    s = doc["summary"]
    return {"last5": s["final_accuracy_last5"], "up": s["uplink_bytes_per_client_round"],
            "down": s["downlink_bytes_per_client_round"]}


def paired(name: str, a: dict, b: dict) -> None:
    diffs = [(a[s]["last5"] - b[s]["last5"]) * 100 for s in a if a[s] and b.get(s)]
    if diffs:
        print(f"{name}: {', '.join(f'{d:+.2f}' for d in diffs)} points (mean {statistics.mean(diffs):+.2f}, "
              f"{len(diffs)} seeds)")


def main() -> int:
    runs = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/hns-downlink")
    density = sys.argv[2] if len(sys.argv) > 2 else "0.1"
    seeds = [int(x) for x in (sys.argv[3] if len(sys.argv) > 3 else "0,1,2").split(",")]
    coded = (sys.argv[4] if len(sys.argv) > 4 else "step1,sqrt0.25").split(",")
    labels = ["default", *coded, "fedavg-la"]
    table = {label: {seed: row(runs / f"{label}-{density if label != 'fedavg-la' else '0.1'}-{seed}")
                     for seed in seeds} for label in labels}
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
    for label in labels:
        values = [r["last5"] for r in table[label].values() if r is not None]
        if values:
            print(f"mean last-5 {label}: {statistics.mean(values):.4f} over {len(values)} seeds")
    for label in coded:
        paired(f"{label} - default", table[label], table["default"])
        paired(f"{label} - fedavg-la", table[label], table["fedavg-la"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
