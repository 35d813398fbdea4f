"""FedTiny on the horizon progressive pruning was designed for: 100 rounds, five rows, paired over seeds.

Usage:
  python benchmarks/fedtiny_horizon.py run OUT --density 0.01 --seeds 0,1,2 [--rows a,b] [--jobs 2] [--rounds 100]
  python benchmarks/fedtiny_horizon.py report OUT --density 0.01 [--last 10] [--baseline fedtiny] [--rows a,b]

``--rows acceptance``: the five rows of issue 22 for today's FedTiny defaults (``ACCEPTANCE``).

The acceptance setting of issue 22: Fashion-MNIST, FL CNN-BN, Dirichlet 0.5, 100 clients, 10 per round,
1 local epoch, SGD lr 0.05 momentum 0.9, batch 32, 100 rounds, adjustments every 5 rounds until round 60.
Rows (``ROWS``): FedTiny, FedTiny without progressive pruning, FedTiny without BN selection, static SynFlow,
static magnitude; the three FedTiny rows with ``--candidate-ranking block-magnitude`` (``fedtiny-block*``), and
two of them with ``--bn-selection-z 2`` (``fedtiny-block-z2*``), and candidate 0 without progressive pruning
(``fedtiny-block-no-bn-no-pp``).
Each (row, seed) runs on the in-process grid (the real ClientApp and Flower's
serialization, no Ray) in its own process, writing ``OUT/<density>/seed<N>/<row>/results.json`` and a
checkpoint every round. ``run`` is resumable: a completed run is skipped, a stopped one continues from its
checkpoint (``--resume``), so the command can be rerun after an interruption. Progress: one line per
finished run with its elapsed time and an estimate for the rest. A finished run is also kept as a small
record (per-round accuracy, loss, density and client costs; the commit and the settings it ran with) in
``benchmarks/results/fedtiny_horizon/`` (``--store``), which is committed: the runs take hours, more than
one working session, and a fresh checkout skips every (row, seed) the store already holds.

``report`` reads the store and prints, per row, the mean accuracy over the last ``--last`` rounds per seed,
and the paired difference to FedTiny (row − FedTiny, per seed, mean ± 95% t-interval over seeds) —
pairing cancels what a seed's partition and client sample do to every row alike — plus client training
memory and FLOPs per sample (FedTiny's ``client_costs``), and writes ``OUT/<density>/report.json`` and ``report.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from fedprune.pruning.candidates import gated_candidate  # noqa: E402

STORE = ROOT / "benchmarks" / "results" / "fedtiny_horizon"
COMMON = dict(dataset="fashion-mnist", model="fl-cnn-bn", partition="dirichlet", alpha=0.5, num_clients=100,
              clients_per_round=10, local_epochs=1, batch_size=32, lr=0.05, momentum=0.9)
# each row names its candidate ranking and selection gate, so a row means the same whatever FedTiny's defaults are
FEDTINY = dict(strategy="fedtiny", adjust_every=5, adjust_until=60, candidate_ranking="magnitude", bn_selection_z=0.0)
ROWS = {
    "fedtiny": FEDTINY,
    "fedtiny-no-pp": {**FEDTINY, "adjust_every": 0},
    "fedtiny-no-bn": {**FEDTINY, "candidates": 1},
    "static-synflow": {"strategy": "static-synflow"},
    "static-magnitude": {"strategy": "static-magnitude"},
    # candidates inside SynFlow's channel block (costs clients no more than SynFlow's mask); not yet the default
    "fedtiny-block": {**FEDTINY, "candidate_ranking": "block-magnitude"},
    "fedtiny-block-no-pp": {**FEDTINY, "candidate_ranking": "block-magnitude", "adjust_every": 0},
    "fedtiny-block-no-bn": {**FEDTINY, "candidate_ranking": "block-magnitude", "candidates": 1},
    # ... and BN selection that replaces candidate 0 only beyond 2 standard errors (--bn-selection-z 2)
    "fedtiny-block-z2": {**FEDTINY, "candidate_ranking": "block-magnitude", "bn_selection_z": 2.0},
    "fedtiny-block-z2-no-pp": {**FEDTINY, "candidate_ranking": "block-magnitude", "bn_selection_z": 2.0,
                               "adjust_every": 0},
    # candidate 0 without progressive pruning: "without BN selection" for a default without progressive pruning
    "fedtiny-block-no-bn-no-pp": {**FEDTINY, "candidate_ranking": "block-magnitude", "candidates": 1,
                                  "adjust_every": 0},
}
# issue 22's five rows for today's FedTiny defaults (block-magnitude candidates, z = 2 gate, no progressive
# pruning): FedTiny, FedTiny with progressive pruning (the part its defaults dropped), FedTiny without BN
# selection, the two static masks; ``--rows acceptance`` names them in this order
ACCEPTANCE = ["fedtiny-block-z2-no-pp", "fedtiny-block-z2", "fedtiny-block-no-bn-no-pp", "static-synflow",
              "static-magnitude"]
# two-sided 95% critical values of Student's t for 1..10 degrees of freedom
T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def row_names(rows: str) -> list[str]:
    """``--rows``: comma-separated row names, ``acceptance`` for ``ACCEPTANCE``, empty for every row."""
    if not rows:
        return list(ROWS)
    names = [n for part in rows.split(",") for n in (ACCEPTANCE if part == "acceptance" else [part])]
    unknown = [n for n in names if n not in ROWS]
    if unknown:
        raise SystemExit(f"--rows: unknown {', '.join(unknown)}; rows are acceptance, {', '.join(ROWS)}")
    return names


def run_dir(out: Path, density: float, seed: int, row: str) -> Path:
    return out / f"{density:g}" / f"seed{seed}" / row


def status(directory: Path) -> str:
    """``completed``, ``running`` (a checkpoint to resume from) or ``new``."""
    results = directory / "results.json"
    if results.is_file():
        try:
            if json.loads(results.read_text()).get("status") == "completed":
                return "completed"
        except json.JSONDecodeError:
            pass
    return "running" if (directory / "checkpoint.pt").is_file() else "new"


def record_path(store: Path, density: float, seed: int, row: str) -> Path:
    return store / f"{density:g}" / f"seed{seed}" / f"{row}.json"


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def keep_record(directory: Path, path: Path, row: str, seed: int, density: float) -> None:
    """Write the small record of a completed run: what ``report`` needs, and what it ran with."""
    document = json.loads((directory / "results.json").read_text())
    rounds = document["rounds"]
    record = {"row": row, "seed": seed, "density": density, "commit": _commit(), "settings": ROWS[row],
              "common": COMMON, "status": document["status"],
              "accuracy": [r["accuracy"] for r in rounds], "loss": [r.get("loss") for r in rounds],
              "seconds": [r.get("seconds") for r in rounds], "client_costs": _median_costs(rounds),
              "bn_selection": rounds[0].get("bn_selection") if rounds else None,
              "adjustments": {r["round"]: r["adjustment"] for r in rounds if r.get("adjustment") is not None}}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")


def _median_costs(rounds: list[dict]) -> dict[str, float] | None:
    """A FedTiny client's training state (bytes) and FLOPs per sample, gradient tap included: the median over
    clients and rounds of its ``client_costs`` (static rows record none)."""
    costs = [c for r in rounds for c in r.get("client_costs") or []]
    if not costs:
        return None
    return {"state_bytes": statistics.median(c["est_param_memory_bytes"] + (c["est_tap_memory_bytes"] or 0)
                                             for c in costs),
            "flops_per_sample": statistics.median(c["est_flops_per_sample"] + (c["est_tap_flops_per_sample"] or 0)
                                                  for c in costs)}


def one(row: str, seed: int, density: float, rounds: int, directory: str) -> int:
    """Run (or resume) one row and seed in this process on the in-process grid."""
    sys.path.insert(0, str(ROOT))
    from fedprune.client.app import app as client_app
    from fedprune.server.run_config import RunSettings
    from fedprune.server.runner import run_federation

    from tests.inprocess_grid import InProcessGrid

    resume = status(Path(directory)) == "running"
    settings = RunSettings(**COMMON, **ROWS[row], density=density, seed=seed, rounds=rounds, out=directory,
                           resume=resume)
    grid = InProcessGrid(client_app, settings.num_clients, settings.to_run_config())
    run_federation(grid, settings, progress=lambda line: print(f"[{row} s{seed}] {line}", flush=True))
    return 0


def run(args: argparse.Namespace) -> int:
    """Start every (row, seed) that is not completed, ``--jobs`` at a time, each in its own process."""
    out, rows, store = Path(args.out), row_names(args.rows), Path(args.store)
    todo = []
    for seed, row in ((int(seed), row) for seed in args.seeds.split(",") for row in rows):
        if record_path(store, args.density, seed, row).is_file():
            continue
        if status(run_dir(out, args.density, seed, row)) == "completed":  # finished while no driver kept it
            keep_record(run_dir(out, args.density, seed, row), record_path(store, args.density, seed, row), row,
                        seed, args.density)
            continue
        todo.append((row, seed))
    print(f"{len(todo)} runs to go ({args.jobs} at a time); logs beside each results.json; records in {store}",
          flush=True)
    started, running, finished = time.monotonic(), [], 0
    while todo or running:
        while todo and len(running) < args.jobs:
            row, seed = todo.pop(0)
            directory = run_dir(out, args.density, seed, row)
            directory.mkdir(parents=True, exist_ok=True)
            log = open(directory / "run.log", "a")  # noqa: SIM115 - closed when the process ends
            command = [sys.executable, __file__, "one", row, str(seed), str(args.density), str(args.rounds),
                       str(directory)]
            running.append((row, seed, subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                                        env={**os.environ, "OMP_NUM_THREADS": "1"}), log))
        time.sleep(5)
        for item in list(running):
            row, seed, process, log = item
            if process.poll() is None:
                continue
            running.remove(item)
            log.close()
            finished += 1
            if status(run_dir(out, args.density, seed, row)) == "completed":
                keep_record(run_dir(out, args.density, seed, row), record_path(store, args.density, seed, row),
                            row, seed, args.density)
            elapsed = time.monotonic() - started
            eta = elapsed / finished * (len(todo) + len(running)) / max(1, args.jobs) * min(args.jobs, finished)
            print(f"{row} seed {seed}: exit {process.returncode} ({status(run_dir(out, args.density, seed, row))}); "
                  f"{finished} done in {elapsed / 60:.0f} min, ~{eta / 60:.0f} min to go", flush=True)
    return 0


def _record(store: Path, density: float, seed: int, row: str) -> dict | None:
    path = record_path(store, density, seed, row)
    return json.loads(path.read_text()) if path.is_file() else None


def _installed(store: Path, density: float, seed: int, settings: dict) -> int | None:
    """The candidate a z-gated BN selection with ``settings`` installs at this seed, read from any record with the
    same candidates (selection runs before round 1's training, so it is the same whatever the row trains after);
    None if no such record."""
    for row, other in ROWS.items():
        same = all(other.get(k) == settings.get(k) for k in ("strategy", "candidate_ranking", "candidates"))
        record = _record(store, density, seed, row) if same else None
        if record and record.get("bn_selection"):
            selection = record["bn_selection"]
            lowest = selection.get("lowest_loss", selection["selected"])
            margin, stderr = selection["loss_margins"][0], selection["loss_margin_stderr"][0]
            return gated_candidate(lowest, margin, stderr, settings.get("bn_selection_z", 0.0))
    return None


def equivalent_record(store: Path, density: float, seed: int, row: str) -> tuple[dict, str] | None:
    """For a row with no record at this seed, the record of a row that trains the same weights, and why.

    A run on candidate 0 trains the same weights with or without BN selection (its exchanges change only the
    evaluation-time running statistics of rounds 1-5; checked: identical test accuracy from round 6), so where
    the z gate installs candidate 0 the gated row is its ``--candidates 1`` row and the reverse; where the gate
    installs the lowest loss the gated row is its z = 0 row."""
    settings = ROWS[row]
    if settings.get("strategy") != "fedtiny":
        return None
    if settings.get("candidates", 5) == 1:
        gated = {k: v for k, v in settings.items() if k != "candidates"}
        for name, other in ROWS.items():
            if other.get("bn_selection_z", 0.0) > 0 and other == {**gated, "bn_selection_z": other["bn_selection_z"]}:
                record = _record(store, density, seed, name)
                if record and _installed(store, density, seed, other) == 0:
                    return record, f"{name} (its gate installed candidate 0)"
        return None
    z = settings.get("bn_selection_z", 0.0)
    installed = _installed(store, density, seed, settings) if z > 0 else None
    if installed is None:
        return None
    target = {**settings, "bn_selection_z": 0.0, **({"candidates": 1} if installed == 0 else {})}
    name = next((n for n, other in ROWS.items() if other == target), None)
    record = _record(store, density, seed, name) if name else None
    why = ("the gate installs candidate 0" if installed == 0 else
           f"the gate installs the lowest loss, candidate {installed}")
    return (record, f"{name} ({why})") if record else None


def _interval(diffs: list[float]) -> str:
    mean = statistics.fmean(diffs) * 100
    if len(diffs) < 2:
        return f"{mean:+.2f} (1 seed)"
    half = T95[min(len(diffs) - 1, len(T95)) - 1] * statistics.stdev(diffs) / len(diffs) ** 0.5 * 100
    return f"{mean:+.2f} ± {half:.2f}"


def _costs(record: dict | None) -> str:
    costs = (record or {}).get("client_costs")
    if not costs:
        return "—"
    return f"{costs['state_bytes'] / 1e6:.2f} MB, {costs['flops_per_sample'] / 1e6:.2f} MFLOPs"


def report(args: argparse.Namespace) -> int:
    """Per-row last-N mean accuracy per seed and the paired difference to ``--baseline`` (FedTiny unless told)
    with a 95% interval; each FedTiny row's BN selection per seed."""
    base, store = Path(args.out) / f"{args.density:g}", Path(args.store)
    base.mkdir(parents=True, exist_ok=True)
    seeds = sorted(int(p.name[4:]) for p in (store / f"{args.density:g}").glob("seed*"))
    shown = row_names(args.rows)
    records = {row: {seed: _record(store, args.density, seed, row) for seed in seeds} for row in ROWS}
    borrowed = {}  # (row, seed) -> why: cells read from an equivalent row's run (marked *)
    for row in shown:
        for seed in seeds:
            found = None if records[row][seed] else equivalent_record(store, args.density, seed, row)
            if found:
                records[row][seed], borrowed[(row, seed)] = found
    table, rows = {}, {}
    for row in shown:
        rows[row] = {seed: (rec or {}).get("accuracy") for seed, rec in records[row].items()}
    print(f"density {args.density:g}, mean accuracy over the last {args.last} rounds")
    baseline = args.baseline
    print("| row | " + " | ".join(f"seed {s}" for s in seeds) + f" | Δ vs {baseline}, points (paired) | client cost |")
    print("|---|" + "---|" * (len(seeds) + 2))
    for row, by_seed in rows.items():
        means = {s: statistics.fmean(a[-args.last:]) for s, a in by_seed.items() if a}
        base_runs = {s: rec["accuracy"] for s, rec in records[baseline].items() if rec}
        pairs = [means[s] - statistics.fmean(base_runs[s][-args.last:]) for s in means if s in base_runs]
        cells = " | ".join(f"{means[s]:.4f}" + ("*" if (row, s) in borrowed else "") if s in means else "—"
                           for s in seeds)
        delta = "—" if row == baseline or not pairs else _interval(pairs)
        print(f"| {row} | {cells} | {delta} | {_costs(next((r for r in records[row].values() if r), None))} |")
        table[row] = {"last_mean": means, f"paired_vs_{baseline}": pairs}
    for (row, seed), why in borrowed.items():
        print(f"* {row} seed {seed}: the run of {why}")
    for row, seed, record in ((r, s, rec) for r in shown for s, rec in records[r].items() if (r, s) not in borrowed):
        selection = (record or {}).get("bn_selection")
        if selection and len(selection["losses"]) > 1:
            margins = sorted((m, e) for m, e in zip(selection["loss_margins"], selection["loss_margin_stderr"],
                                                    strict=True) if m > 0)
            runner_up = f"next best {margins[0][0]:.4f} ± {margins[0][1]:.4f} behind" if margins else "alone"
            lowest = selection.get("lowest_loss", selection["selected"])  # margins are measured from it
            lead, stderr = selection["loss_margins"][0], selection["loss_margin_stderr"][0]
            gate = ("candidate 0 has the lowest loss" if lowest == 0 else
                    f"candidate 0 behind candidate {lowest} by {lead:.4f} ± {stderr:.4f}"
                    + (f", {lead / stderr:.1f} standard errors" if stderr else ""))
            print(f"{row} seed {seed}: BN selection installed candidate {selection['selected']} (lowest loss "
                  f"{min(selection['losses']):.4f}, {runner_up}; beyond noise: {selection['beyond_noise']}; {gate})")
    (base / "report.json").write_text(json.dumps(table, indent=1))
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for row, by_seed in rows.items():
        done = [a for a in by_seed.values() if a]
        if done:
            length = min(len(a) for a in done)
            ax.plot(range(1, length + 1), [statistics.fmean(a[i] for a in done) for i in range(length)], label=row)
    ax.set(xlabel="round", ylabel=f"test accuracy (mean of {len(seeds)} seeds)", title=f"density {args.density:g}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(base / "report.png", dpi=120)
    print(f"wrote {base / 'report.json'} and {base / 'report.png'}")
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "one":
        row, seed, density, rounds, directory = sys.argv[2:7]
        return one(row, int(seed), float(density), int(rounds), directory)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "report"):
        command = sub.add_parser(name)
        command.add_argument("out")
        command.add_argument("--density", type=float, required=True)
        command.add_argument("--store", default=str(STORE), help="where finished runs' records are kept")
    sub.choices["run"].add_argument("--seeds", default="0,1,2")
    for name in ("run", "report"):
        sub.choices[name].add_argument("--rows", default="",
                                       help=f"comma-separated subset of acceptance, {', '.join(ROWS)}")
    sub.choices["run"].add_argument("--jobs", type=int, default=2)
    sub.choices["run"].add_argument("--rounds", type=int, default=100)
    sub.choices["report"].add_argument("--last", type=int, default=10)
    sub.choices["report"].add_argument("--baseline", default="fedtiny", choices=list(ROWS),
                                       help="the row every other row is paired against")
    args = parser.parse_args()
    return run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    sys.exit(main())
