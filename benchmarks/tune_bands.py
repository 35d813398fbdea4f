"""Which strategy holds the front in each band of bytes and of client memory, from a study's trials.csv.

Usage: python benchmarks/tune_bands.py runs/tune/fmnist-budgets/trials.csv
For each band of total bytes per client-round (uplink + downlink) and each band of client training state, the
most accurate complete trial whose figure lies in the band or below it (what a budget at the band's top buys),
with its accuracy and figures; then the study's total trial seconds.
"""

from __future__ import annotations

import csv
import sys

BYTE_BANDS = (30e3, 100e3, 300e3, 1e6, 3e6, 20e6)
MEMORY_BANDS = (0.5e6, 1e6, 2e6, 5e6, 25e6)


def best_within(rows: list[dict], figure: str, limit: float) -> dict | None:
    fitting = [r for r in rows if float(r[figure]) <= limit]
    return max(fitting, key=lambda r: (float(r["accuracy"]), -float(r[figure]))) if fitting else None


def describe(row: dict | None) -> str:
    if row is None:
        return "none"
    density = "" if row["strategy"] == "fedavg" else f" {float(row['density']):g}"
    return (f"{row['strategy']}{density} (trial {row['trial']}): accuracy {float(row['accuracy']):.4f}, "
            f"{float(row['total_bytes']) / 1e3:,.1f} kB per client-round, {float(row['memory_bytes']) / 1e6:.3f} MB")


def main() -> int:
    with open(sys.argv[1]) as handle:
        rows = [r for r in csv.DictReader(handle) if r["state"] == "complete" and r["feasible"] == "True"]
    print(f"{len(rows)} complete feasible trials")
    for limit in BYTE_BANDS:
        print(f"total bytes <= {limit / 1e3:,.0f} kB: {describe(best_within(rows, 'total_bytes', limit))}")
    for limit in MEMORY_BANDS:
        print(f"client memory <= {limit / 1e6:g} MB: {describe(best_within(rows, 'memory_bytes', limit))}")
    print(f"sum of trial seconds (setup + rounds, as each run measured): {sum(float(r['seconds']) for r in rows):,.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
