"""What keeping whole 32×32 tiles costs in accuracy against single weights, on the CPU (issue 23).

Usage:
  python benchmarks/tile_granularity.py run [--seeds 0] [--rounds 30] [--store DIR]
  python benchmarks/tile_granularity.py report [--seeds 0] [--store DIR]

Fashion-MNIST, FL CNN, Dirichlet 0.5, 100 clients, 10 per round, 1 local epoch, ``--rounds`` rounds; HideNseek
and static SynFlow at density 0.1 and 0.01, each with ``--mask-granularity weight`` and ``tile32``. Each run
goes on the in-process grid (the real ClientApp and Flower's serialization, no Ray) in its own process; a
finished run is kept as a small record (accuracy per round, kept-weight density, tile occupancy, commit) in
``benchmarks/results/tile_granularity/`` (committed, so a later session skips it). ``report`` prints the mean
accuracy over the last 5 rounds per row and the tile32 − weight difference per (strategy, density, seed).
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

ROOT = Path(__file__).resolve().parent.parent
STORE = ROOT / "benchmarks" / "results" / "tile_granularity"
COMMON = dict(dataset="fashion-mnist", model="fl-cnn", partition="dirichlet", alpha=0.5, num_clients=100,
              clients_per_round=10, local_epochs=1, personal_eval_every=0)
CONFIGS = [(strategy, density, granularity) for strategy in ("hidenseek", "static-synflow")
           for density in (0.1, 0.01) for granularity in ("weight", "tile32")]
LAST = 5


def record_path(store: Path, strategy: str, density: float, granularity: str, seed: int) -> Path:
    return store / f"{strategy}-{density:g}-{granularity}-seed{seed}.json"


def one(strategy: str, density: float, granularity: str, seed: int, rounds: int, path: str) -> int:
    """Run one configuration in this process and write its record to ``path``."""
    sys.path.insert(0, str(ROOT))
    import tempfile

    from fedprune.client.app import app as client_app
    from fedprune.pruning.tile_masks import kept_tile_fraction
    from fedprune.server.run_config import RunSettings
    from fedprune.server.runner import run_federation

    from tests.inprocess_grid import InProcessGrid

    with tempfile.TemporaryDirectory() as out:
        settings = RunSettings(**COMMON, strategy=strategy, density=density, mask_granularity=granularity, seed=seed,
                               rounds=rounds, out=out)
        settings.validate()
        grid = InProcessGrid(client_app, settings.num_clients, settings.to_run_config())
        started = time.monotonic()
        document = run_federation(grid, settings, progress=lambda line: print(line, flush=True))
    mask = _mask_of(settings)
    kept = sum(int(m.sum()) for m in mask.values()) / sum(m.size for m in mask.values())
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    record = {"strategy": strategy, "density": density, "granularity": granularity, "seed": seed, "rounds": rounds,
              "commit": commit.stdout.strip(), "common": COMMON, "status": document["status"],
              "accuracy": [r["accuracy"] for r in document["rounds"]], "kept_weight_density": kept,
              "tile_occupancy": kept_tile_fraction(mask), "seconds": time.monotonic() - started}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(record, indent=1) + "\n")
    return 0


def _mask_of(settings: object) -> dict:
    """The run's SynFlow mask, rebuilt as the server builds it (deterministic from the settings)."""
    from fedprune.pruning.schedules import data_free_mask
    from fedprune.strategies.registry import seeded_model

    model, _ = seeded_model(settings)
    return data_free_mask(model, "synflow", settings.density, settings.seed, granularity=settings.mask_granularity)


def run(args: argparse.Namespace) -> int:
    """Run every configuration and seed the store lacks, one at a time, a line per finished run."""
    store, seeds = Path(args.store), [int(s) for s in args.seeds.split(",")]
    todo = [(c, s) for s in seeds for c in CONFIGS if not record_path(store, *c, s).is_file()]
    print(f"{len(todo)} runs to go; records in {store}", flush=True)
    started = time.monotonic()
    for done, ((strategy, density, granularity), seed) in enumerate(todo, 1):
        path = record_path(store, strategy, density, granularity, seed)
        log = path.with_suffix(".log")
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "w") as handle:
            code = subprocess.call([sys.executable, __file__, "one", strategy, str(density), granularity, str(seed),
                                    str(args.rounds), str(path)], stdout=handle, stderr=subprocess.STDOUT,
                                   env={**os.environ, "OMP_NUM_THREADS": "1"})
        log.unlink(missing_ok=code == 0)
        elapsed = time.monotonic() - started
        print(f"{strategy} {density:g} {granularity} seed {seed}: exit {code}; {done}/{len(todo)} in "
              f"{elapsed / 60:.0f} min, ~{elapsed / done * (len(todo) - done) / 60:.0f} min to go", flush=True)
    return 0


def report(args: argparse.Namespace) -> int:
    """Mean accuracy over the last rounds per row; tile32 − weight per (strategy, density), paired by seed."""
    store, seeds = Path(args.store), [int(s) for s in args.seeds.split(",")]
    print(f"| strategy | density | granularity | kept weights | tiles occupied | last-{LAST} accuracy per seed |")
    print("|---|---|---|---|---|---|")
    means: dict[tuple, dict[int, float]] = {}
    for config in CONFIGS:
        records = {s: json.loads(record_path(store, *config, s).read_text()) for s in seeds
                   if record_path(store, *config, s).is_file()}
        if not records:
            continue
        means[config] = {s: statistics.fmean(r["accuracy"][-LAST:]) for s, r in records.items()}
        first = next(iter(records.values()))
        cells = ", ".join(f"{means[config][s]:.4f}" for s in sorted(means[config]))
        print(f"| {config[0]} | {config[1]:g} | {config[2]} | {first['kept_weight_density']:.4f} | "
              f"{first['tile_occupancy']:.3f} | {cells} |")
    for strategy, density, granularity in CONFIGS:
        if granularity != "tile32" or (strategy, density, "weight") not in means:
            continue
        tiles, weights = means.get((strategy, density, "tile32"), {}), means[(strategy, density, "weight")]
        diffs = [tiles[s] - weights[s] for s in tiles if s in weights]
        if diffs:
            print(f"{strategy} {density:g}: tile32 − weight {statistics.fmean(diffs) * 100:+.2f} points "
                  f"({len(diffs)} seed{'s' if len(diffs) > 1 else ''})")
    return 0


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "one":
        strategy, density, granularity, seed, rounds, path = sys.argv[2:8]
        return one(strategy, float(density), granularity, int(seed), int(rounds), path)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("run", "report"):
        command = sub.add_parser(name)
        command.add_argument("--seeds", default="0")
        command.add_argument("--store", default=str(STORE))
    sub.choices["run"].add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    return run(args) if args.command == "run" else report(args)


if __name__ == "__main__":
    sys.exit(main())
