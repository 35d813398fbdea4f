"""FedTiny acceptance rows over several seeds: final accuracy per seed, means, and paired differences.

Usage: python benchmarks/fedtiny_seeds.py DIR [DIR ...] -- ROW [ROW ...]
Each DIR holds ``<row>/results.json`` for one seed (as ``SEED=N benchmarks/fedtiny_table.sh`` writes them;
the seed shown is the number a ``...seedN`` directory ends with, else 0). The first ROW is the reference.
For every other row, over the seeds where both ran, the script prints

* the paired difference of final accuracy (row − reference), its mean and a 95% t-interval over seeds;
* the paired difference averaged over rounds 21–30, per seed and its mean with a 95% t-interval.

Pairing cancels what a seed's partition and client sample do to every run alike (all runs of a seed sample
the same clients in the same rounds); the interval says whether a mean difference is beyond seed noise.
"""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

# two-sided 95% critical values of Student's t for 1..30 degrees of freedom (beyond: the value at 30, which
# errs wide)
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
       2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def accuracies(path: Path) -> list[float] | None:
    """Per-round test accuracy of one completed run, or None."""
    if not path.is_file():
        return None
    doc = json.loads(path.read_text())
    if doc.get("status") != "completed":  # still running (results.json is rewritten every round) or failed
        return None
    return [float(r["accuracy"]) for r in doc["rounds"]]


def seed_of(directory: Path) -> str:
    """The seed a results directory holds: the number ``...seedN`` ends with, else 0 (the table's default)."""
    found = re.search(r"seed(\d+)$", directory.name)
    return found.group(1) if found else "0"


def interval(diffs: list[float]) -> str:
    """Mean of paired differences in points with its 95% t-interval half-width (none for one seed)."""
    mean = statistics.fmean(diffs) * 100
    if len(diffs) < 2:
        return f"{mean:+.2f}"
    t = T95[min(len(diffs) - 1, len(T95)) - 1]
    half = t * statistics.stdev(diffs) / len(diffs) ** 0.5 * 100
    return f"{mean:+.2f} ± {half:.2f}"


def main() -> int:
    args = sys.argv[1:]
    split = args.index("--")
    dirs, rows = [Path(d) for d in args[:split]], args[split + 1:]
    runs = {row: [accuracies(d / row / "results.json") for d in dirs] for row in rows}
    reference = runs[rows[0]]
    seeds = " | ".join(f"seed {seed_of(d)}" for d in dirs)
    print(f"| run | {seeds} | mean final (n) | final Δ vs {rows[0]}, points, mean ± 95% | "
          f"paired Δ rounds 21–30, points: per seed; mean ± 95% |")
    print("|---|" + "---|" * (len(dirs) + 3))
    for row in rows:
        finals = [a[-1] if a else None for a in runs[row]]
        cells = " | ".join("—" if f is None else f"{f:.4f}" for f in finals)
        done = [a for a in runs[row] if a]
        mean_final = statistics.fmean(a[-1] for a in done) if done else float("nan")
        both = [(a, r) for a, r in zip(runs[row], reference, strict=True) if a and r]
        if row == rows[0] or not both:
            final_cell = paired_cell = "—"
        else:
            final_cell = interval([a[-1] - r[-1] for a, r in both])
            pairs = [statistics.fmean(x - y for x, y in zip(a[20:30], r[20:30], strict=True)) for a, r in both]
            paired_cell = " / ".join(f"{p * 100:+.2f}" for p in pairs) + f"; {interval(pairs)} ({len(pairs)})"
        print(f"| {row} | {cells} | {mean_final:.4f} ({len(done)}) | {final_cell} | {paired_cell} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
