"""FedTiny acceptance rows over several seeds: final accuracy per seed, means, and paired per-round differences.

Usage: python benchmarks/fedtiny_seeds.py DIR_SEED0 [DIR_SEED1 ...] -- ROW [ROW ...]
Each DIR holds ``<row>/results.json`` for one seed (as ``SEED=N benchmarks/fedtiny_table.sh`` writes them).
The first ROW is the reference: for every other row the script prints the mean over seeds of (row − reference)
over rounds 21–30, a paired comparison that cancels what the seed's partition and last-round sample do to
every run alike (all runs of a seed sample the same clients in the same rounds).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def accuracies(path: Path) -> list[float] | None:
    """Per-round test accuracy of one completed run, or None."""
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    if doc.get("status") != "completed":  # still running (results.json is rewritten every round) or failed
        return None
    return [float(r["accuracy"]) for r in doc["rounds"]]


def main() -> int:
    args = sys.argv[1:]
    split = args.index("--")
    dirs, rows = [Path(d) for d in args[:split]], args[split + 1:]
    runs = {row: [accuracies(d / row / "results.json") for d in dirs] for row in rows}
    reference = runs[rows[0]]
    seeds = " | ".join(f"seed {i}" for i in range(len(dirs)))
    print(f"| run | {seeds} | mean final | mean last-5 | mean paired Δ vs {rows[0]}, rounds 21–30 |")
    print("|---|" + "---|" * (len(dirs) + 3))
    for row in rows:
        finals = [a[-1] if a else None for a in runs[row]]
        cells = " | ".join("—" if f is None else f"{f:.4f}" for f in finals)
        done = [a for a in runs[row] if a]
        mean_final = sum(a[-1] for a in done) / len(done) if done else float("nan")
        mean_last5 = sum(sum(a[-5:]) / 5 for a in done) / len(done) if done else float("nan")
        pairs = [sum(x - y for x, y in zip(a[20:30], r[20:30], strict=True)) / 10
                 for a, r in zip(runs[row], reference, strict=True) if a and r]
        each = " / ".join(f"{p * 100:+.2f}" for p in pairs)
        paired = f"{sum(pairs) / len(pairs):+.4f} (per seed, points: {each})" if pairs and row != rows[0] else "—"
        print(f"| {row} | {cells} | {mean_final:.4f} ({len(done)}) | {mean_last5:.4f} | {paired} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
