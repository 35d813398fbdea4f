"""Run four reference simulations and compare their rounds with another checkout's, number for number.

Usage:
  python benchmarks/behaviour_equivalence.py run OUT_DIR        # the four runs, through `fedprune simulate`
  python benchmarks/behaviour_equivalence.py compare DIR_A DIR_B

A code change that must not change behaviour (a refactor) is checked by running ``run`` before and after it
and ``compare`` on the two folders: every round's accuracy, loss, uplink and downlink bytes must be
identical. The runs go through the ``fedprune`` command (not module paths), so the script works across
changes to the package layout. Fashion-MNIST, 100 clients, 10 per round, seed 0:
dense FedAvg (5 rounds), HideNseek at density 0.1 (10 rounds), static SynFlow at 0.1 (5 rounds), and
FedTiny at 0.01 with one progressive-pruning adjustment (after round 5; 10 rounds).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

COMMON = ["--dataset", "fashion-mnist", "--num-clients", "100", "--clients-per-round", "10", "--seed", "0"]
RUNS = {
    "fedavg-5": ["--strategy", "fedavg", "--rounds", "5"],
    "hidenseek-0.1-10": ["--strategy", "hidenseek", "--density", "0.1", "--rounds", "10"],
    "static-synflow-0.1-5": ["--strategy", "static-synflow", "--density", "0.1", "--rounds", "5"],
    "fedtiny-0.01-10": ["--strategy", "fedtiny", "--model", "fl-cnn-bn", "--density", "0.01", "--rounds", "10",
                        "--adjust-every", "5", "--adjust-until", "5"],
}
COMPARED = ("accuracy", "loss", "uplink_bytes", "downlink_bytes")


def _fedprune() -> str:
    found = Path(sys.executable).parent / "fedprune"
    return str(found) if found.exists() else shutil.which("fedprune") or "fedprune"


def run(out: Path) -> int:
    """The four reference runs into ``out/<name>``; prints one line per finished run."""
    for name, options in RUNS.items():
        started = time.perf_counter()
        done = subprocess.run([_fedprune(), "simulate", *COMMON, *options, "--out", str(out / name)],
                              capture_output=True, text=True)
        if done.returncode:
            print(f"{name}: failed (exit {done.returncode}): {done.stderr.strip()[-400:]}", flush=True)
            return 1
        rounds = json.loads((out / name / "results.json").read_text())["rounds"]
        print(f"{name}: {len(rounds)} rounds, last accuracy {rounds[-1]['accuracy']:.4f}, "
              f"{time.perf_counter() - started:.0f} s", flush=True)
    return 0


def compare(a: Path, b: Path) -> int:
    """Exit 0 if every run's rounds agree on every compared figure; print the first difference otherwise."""
    same = True
    for name in RUNS:
        left = json.loads((a / name / "results.json").read_text())["rounds"]
        right = json.loads((b / name / "results.json").read_text())["rounds"]
        diffs = [(r1["round"], key, r1[key], r2[key]) for r1, r2 in zip(left, right, strict=False)
                 for key in COMPARED if r1[key] != r2[key]]
        if len(left) != len(right):
            diffs.insert(0, ("-", "rounds", len(left), len(right)))
        same &= not diffs
        print(f"{name}: {len(left)} rounds, " + ("identical " + ", ".join(COMPARED) if not diffs else
                                                 f"{len(diffs)} differences, first: {diffs[0]}"))
    return 0 if same else 1


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "run":
        return run(Path(argv[1]))
    if len(argv) == 3 and argv[0] == "compare":
        return compare(Path(argv[1]), Path(argv[2]))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
