"""The ``fedprune`` command: ``simulate`` on Ray, ``tune`` budgets, ``deploy`` for real, ``predict`` at the edge,
``report``.

Every option is validated before anything starts; a bad value prints one line
naming the option and what is allowed, and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from fedprune.deploy.arguments import add_deploy_parsers
from fedprune.deploy.cli import HANDLERS as DEPLOY_HANDLERS
from fedprune.kernels.benchmark import run as run_kernel_benchmark
from fedprune.protos.wire_benchmark import run as run_wire_benchmark
from fedprune.run_options import add_run_options, check_partition, dataset_labels, settings_from_args
from fedprune.server.results import client_round_bytes
from fedprune.server.run_config import ConfigError
from fedprune.simulation.launcher import SimulationError, run_simulation
from fedprune.simulation.report import plot_report, run_label
from fedprune.strategies.registry import check_budget_tiers
from fedprune.tuning.cli import HANDLERS as TUNE_HANDLERS
from fedprune.tuning.cli import add_tune_parsers

EXIT_USAGE = 2


def _simulate_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="run a simulated federation on Ray and write results.json + report.png",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_run_options(p)
    p.add_argument("--ray-address", default=None,
                   help="attach to an existing Ray cluster: HOST:PORT (e.g. 127.0.0.1:6379), or 'auto' (the one "
                        "started on this machine); 'local' = a private instance, as without this option")
    p.add_argument("--cpus-per-client", type=int, default=1,
                   help="CPUs per Ray actor (integer; at most this machine's CPUs unless --ray-address)")
    p.add_argument("--gpus-per-client", type=float, default=0.0,
                   help="GPUs per Ray actor (Flower's client-resources-num-gpus; 0.25 = four clients share a GPU); "
                        "needs a CUDA GPU here unless --ray-address")


def cmd_simulate(args: argparse.Namespace) -> int:
    """Run a simulation on a private SuperLink with Ray; plot it; exit 1 with the reason if it failed."""
    settings = settings_from_args(args)
    labels = dataset_labels(settings)
    if settings.strategy == "fedtiny" and settings.budget_tiers:
        check_budget_tiers(settings)
    check_partition(settings, labels)
    print(f"fedprune: {settings.strategy} on {settings.dataset}/{settings.model}, {settings.num_clients} clients "
          f"({settings.clients_per_round}/round, {settings.partition}), {settings.rounds} rounds -> {settings.out}",
          flush=True)
    try:
        document = run_simulation(settings, num_cpus_per_client=args.cpus_per_client,
                                  num_gpus_per_client=args.gpus_per_client, ray_address=args.ray_address,
                                  progress=lambda line: print(line, flush=True))
    except SimulationError as exc:
        print(f"fedprune simulate: {exc}", file=sys.stderr)
        return 1
    out = Path(settings.out)
    plot_report({settings.strategy: document}, out / "report.png")
    s = document["summary"]
    print(f"final accuracy {s['final_accuracy']:.4f} (last-5 mean {s['final_accuracy_last5']:.4f}), "
          f"uplink {s['total_uplink_bytes']:,} B, downlink {s['total_downlink_bytes']:,} B, "
          f"median round {s['median_round_seconds']:.1f}s")
    print(f"wrote {out / 'results.json'} and {out / 'report.png'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """Plot one or more results.json files into one PNG; print each run's accuracy and bytes per client-round,
    and for two runs how many times fewer bytes the second moved."""
    documents = {}
    for item in args.results:
        path = Path(item)
        path = path / "results.json" if path.is_dir() else path
        if not path.is_file():
            raise ConfigError("results", f"{path} does not exist")
        document = json.loads(path.read_text())
        documents[f"{document['config'].get('strategy')} ({path.parent.name})"] = document
    print(f"wrote {plot_report(documents, Path(args.out))}")
    for label, document in documents.items():
        print(f"{label}: final accuracy {document['summary']['final_accuracy']:.4f}; {run_label('', document)[2:]}")
    if len(documents) == 2:
        print(compare_line(*documents.items()))
    return 0


def compare_line(first: tuple[str, dict], second: tuple[str, dict]) -> str:
    """One line: both runs' final accuracy, and how many times fewer bytes (both ways) the second moved."""
    (a, da), (b, db) = first, second

    def moved(d: dict) -> float:
        return sum(client_round_bytes(d))

    ratio = moved(da) / moved(db) if moved(db) else float("nan")
    return (f"{b}: accuracy {db['summary']['final_accuracy']:.4f} against {a}'s "
            f"{da['summary']['final_accuracy']:.4f}, moving {ratio:,.0f}x fewer bytes per client-round (both ways)")


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "wire":
        run_wire_benchmark(Path(args.json) if args.json else None)
    else:
        run_kernel_benchmark(Path(args.json) if args.json else None, Path(args.markdown) if args.markdown else None,
                    quick=args.quick, threads=args.threads)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedprune", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _simulate_parser(sub)
    report = sub.add_parser("report", help="plot one or more results.json files into one PNG")
    report.add_argument("results", nargs="+", help="results.json files or run directories")
    report.add_argument("--out", default="report.png")
    bench = sub.add_parser("bench", help="measure: `wire` (codec sizes, throughput, bytes/round) or `kernels`")
    bench.add_argument("what", choices=["wire", "kernels"])
    bench.add_argument("--json", default=None, help="also save the figures as JSON here")
    bench.add_argument("--markdown", default=None, help="kernels: also save the Markdown table here")
    bench.add_argument("--quick", action="store_true", help="kernels: Linear layers and FL CNNs only")
    bench.add_argument("--threads", type=int, default=None, help="kernels: torch intra-op threads")
    add_deploy_parsers(sub)
    add_tune_parsers(sub)
    return parser


def _exit_on_sigterm() -> None:
    """Make ``kill PID`` end a command like Ctrl-C does: ``SystemExit`` runs the ``finally`` blocks that stop
    the SuperLink, Ray and SuperNodes a run started (the default SIGTERM action would orphan them)."""
    signal.signal(signal.SIGTERM, lambda sig, frame: sys.exit(128 + sig))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _exit_on_sigterm()
    handlers = {"simulate": cmd_simulate, "report": cmd_report, "bench": cmd_bench, **DEPLOY_HANDLERS, **TUNE_HANDLERS}
    try:
        return handlers[args.command](args)
    except ConfigError as exc:
        print(f"fedprune {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
