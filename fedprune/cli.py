"""The ``fedprune`` command: ``simulate`` on Ray, ``deploy`` for real, ``predict`` at the edge, ``report``.

Every option is validated before anything starts; a bad value prints one line
naming the option and what is allowed, and exits with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from fedprune.server.run_config import ConfigError, RunSettings, check_model_takes_inputs

if TYPE_CHECKING:
    import numpy as np

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


def add_run_options(p: argparse.ArgumentParser) -> None:
    """The options of one run (``RunSettings``), shared by ``simulate`` and ``deploy run|loopback``."""
    defaults = RunSettings()
    p.add_argument("--strategy", default=defaults.strategy,
                   help="fedavg | flwr-fedavg | hidenseek | fedtiny | static-synflow | static-magnitude | "
                        "static-random")
    p.add_argument("--dataset", default=defaults.dataset, help="fashion-mnist | digits | cifar10")
    p.add_argument("--dataset-path", default="", help="dataset directory (default: the dataset's standard place)")
    p.add_argument("--model", default=None, help="architecture (default: the dataset's usual model)")
    p.add_argument("--partition", default=defaults.partition, help="iid | dirichlet | pathological")
    p.add_argument("--alpha", type=float, default=defaults.alpha, help="Dirichlet concentration")
    p.add_argument("--classes-per-client", type=int, default=defaults.classes_per_client,
                   help="classes per client for the pathological partition")
    p.add_argument("--min-partition-size", type=int, default=defaults.min_partition_size,
                   help="smallest partition the Dirichlet partitioner may produce")
    p.add_argument("--local-test-fraction", type=float, default=defaults.local_test_fraction,
                   help="share of each client's data held out for personalized evaluation")
    p.add_argument("--num-clients", type=int, default=defaults.num_clients)
    p.add_argument("--clients-per-round", type=int, default=defaults.clients_per_round)
    p.add_argument("--min-train-nodes", type=int, default=defaults.min_train_nodes,
                   help="valid replies a round needs to update the model")
    p.add_argument("--rounds", type=int, default=defaults.rounds)
    p.add_argument("--local-epochs", type=int, default=defaults.local_epochs)
    p.add_argument("--lr", type=float, default=defaults.lr)
    p.add_argument("--momentum", type=float, default=defaults.momentum)
    p.add_argument("--batch-size", type=int, default=defaults.batch_size)
    p.add_argument("--density", type=float, default=defaults.density, help="kept fraction of prunable weights")
    p.add_argument("--score", default=defaults.score, help="hidenseek mask score: synflow | magnitude | random")
    p.add_argument("--aggregation", default=defaults.aggregation,
                   help="hidenseek: ternary-delta (score change as stochastic ternary values, global scores "
                        "downlink) | tally (1 bit/weight, confidence kept on the server) | vote | score-average")
    p.add_argument("--dense-params", default=defaults.dense_params,
                   help="hidenseek biases/BatchNorm: averaged | personal")
    p.add_argument("--mask-transfer", default=defaults.mask_transfer,
                   help="hidenseek: send (coded mask to new nodes) | recompute (clients rebuild it, digest checked)")
    p.add_argument("--score-lr", type=float, default=defaults.score_lr,
                   help="hidenseek client step size on scores (relative to each layer's |θ0| for layer-sgd; "
                        "absolute for adam, e.g. 0.001)")
    p.add_argument("--score-optimizer", default=defaults.score_optimizer,
                   help="hidenseek client optimizer on scores: layer-sgd (RMS-normalized per layer) | adam")
    p.add_argument("--score-momentum", type=float, default=defaults.score_momentum,
                   help="hidenseek layer-sgd momentum")
    p.add_argument("--local-loss", default=defaults.local_loss,
                   help="client loss: cross-entropy | logit-adjusted (by the client's label prior) | auto "
                        "(logit-adjusted for hidenseek, cross-entropy otherwise)")
    p.add_argument("--server-lr", type=float, default=defaults.server_lr,
                   help="hidenseek: server step size on the clients' mean score change")
    p.add_argument("--server-momentum", type=float, default=defaults.server_momentum,
                   help="hidenseek score-average/ternary-delta: server heavy-ball momentum on score changes")
    p.add_argument("--moved-share", type=float, default=defaults.moved_share,
                   help="hidenseek ternary-delta: at most this share of scores moves per client-round "
                        "(fewer bits, more variance)")
    p.add_argument("--personal-eval-every", type=int, default=defaults.personal_eval_every,
                   help="hidenseek: rounds between personalized evaluations (0 = never)")
    p.add_argument("--candidates", type=int, default=defaults.candidates,
                   help="fedtiny: candidate masks for adaptive BN selection (1 = no BN selection)")
    p.add_argument("--candidate-spread", type=float, default=defaults.candidate_spread,
                   help="fedtiny: spread (std of a normal shift in logit space) of candidates' layer-wise densities")
    p.add_argument("--candidate-ranking", default=defaults.candidate_ranking,
                   help="fedtiny: which weights a candidate keeps within a layer once --score set the layer's count: "
                        "magnitude (largest |θ0|) | score (the score's own choice)")
    p.add_argument("--adjust-every", type=int, default=defaults.adjust_every,
                   help="fedtiny: every ΔT-th round also reports top-K pairs and adjusts the mask after it (0 = off)")
    p.add_argument("--adjust-until", type=int, default=defaults.adjust_until,
                   help="fedtiny: last round whose training reports top-K pairs for an adjustment, T_end")
    p.add_argument("--adjust-alpha", type=float, default=defaults.adjust_alpha,
                   help="fedtiny: α in K_t = α/2·(1+cos(πt/T_end)) × the layer's active count")
    p.add_argument("--adjust-layers", default=defaults.adjust_layers,
                   help="fedtiny: output-first (one layer per adjustment, output→input) | all")
    p.add_argument("--gradient-tap", default=defaults.gradient_tap,
                   help="fedtiny: how an adjusting client forms pruned-position gradients: dense (exact, one "
                        "accumulator the size of the layer) | buffered (running sums at 8·K positions, a few "
                        "rows at a time) | auto (dense where the node's budget holds it, else buffered)")
    p.add_argument("--budget-tiers", default=defaults.budget_tiers,
                   help="fedtiny simulation: client budgets 'MB:FLOPS,...' assigned round-robin by partition "
                        "(a node's memory-budget-mb / flops-budget node config wins)")
    p.add_argument("--seed", type=int, default=defaults.seed)
    p.add_argument("--out", default=defaults.out, help="directory for results.json, report.png, checkpoint")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    p.add_argument("--round-timeout", type=float, default=defaults.round_timeout,
                   help="seconds a round waits for replies before going on with what arrived")
    p.add_argument("--max-failed-rounds", type=int, default=defaults.max_failed_rounds,
                   help="stop the run as failed after this many rounds in a row without enough valid replies to "
                        "update the model (0 = never stop)")


def _settings_from_args(args: argparse.Namespace, local_out: bool = True) -> RunSettings:
    """Validated settings; ``local_out=False`` when ``--out`` is a path on another host (deploy run)."""
    from fedprune.models import default_model_for

    model = args.model
    if model is None:
        try:
            model = default_model_for(args.dataset)
        except KeyError:
            model = RunSettings().model  # the dataset error below names the problem
    settings = RunSettings(
        strategy=args.strategy, dataset=args.dataset, dataset_path=args.dataset_path, model=model,
        partition=args.partition, alpha=args.alpha, classes_per_client=args.classes_per_client,
        min_partition_size=args.min_partition_size, local_test_fraction=args.local_test_fraction,
        num_clients=args.num_clients, clients_per_round=args.clients_per_round,
        min_train_nodes=args.min_train_nodes, rounds=args.rounds, local_epochs=args.local_epochs, lr=args.lr,
        momentum=args.momentum, batch_size=args.batch_size, density=args.density, seed=args.seed,
        score=args.score, aggregation=args.aggregation, dense_params=args.dense_params,
        mask_transfer=args.mask_transfer, score_lr=args.score_lr, score_optimizer=args.score_optimizer,
        score_momentum=args.score_momentum, local_loss=args.local_loss, server_lr=args.server_lr,
        server_momentum=args.server_momentum, moved_share=args.moved_share,
        personal_eval_every=args.personal_eval_every, candidates=args.candidates,
        candidate_spread=args.candidate_spread, candidate_ranking=args.candidate_ranking,
        adjust_every=args.adjust_every, adjust_until=args.adjust_until, adjust_alpha=args.adjust_alpha,
        adjust_layers=args.adjust_layers, gradient_tap=args.gradient_tap, budget_tiers=args.budget_tiers,
        # An empty --out stays empty (validate refuses it) instead of resolving to the current folder.
        out=str(Path(args.out).expanduser().resolve()) if local_out and args.out.strip() else args.out,
        resume=args.resume, round_timeout=args.round_timeout, max_failed_rounds=args.max_failed_rounds,
    )
    settings.validate(check_out_dir=local_out)
    check_model_takes_inputs(settings)
    _check_ray_options(getattr(args, "ray_address", None), getattr(args, "cpus_per_client", 1))
    if local_out and args.resume and not (Path(settings.out) / "checkpoint.pt").is_file():
        raise ConfigError("resume", f"no checkpoint in {settings.out} to resume from")
    return settings


# What Ray's ray.init(address=...) takes for a running cluster: HOST:PORT, an IPv6 host in brackets.
_RAY_ADDRESS = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_][A-Za-z0-9_.-]*):(?P<port>[0-9]{1,5})")


def _check_ray_options(ray_address: str | None, cpus_per_client: int) -> None:
    """``--ray-address`` must be an address Ray can attach to; ``--cpus-per-client`` must fit one Ray node.

    Without ``--ray-address`` (or with 'local') Ray starts on this machine with its CPUs, and an actor that asks
    for more is never placed: the run would wait forever. A cluster's nodes may be bigger, so no upper limit then.
    """
    if ray_address is not None and ray_address not in ("auto", "local"):
        match = _RAY_ADDRESS.fullmatch(ray_address)
        if match is None or not 1 <= int(match["port"]) <= 65535:
            raise ConfigError("ray-address", f"'{ray_address}' is not HOST:PORT with a port in 1-65535 (e.g. "
                                             "127.0.0.1:6379), 'auto' (the cluster started on this machine) or "
                                             "'local' (a private instance)")
    if cpus_per_client < 1:
        raise ConfigError("cpus-per-client", f"{cpus_per_client} must be a positive integer")
    cpus = os.cpu_count()
    if ray_address in (None, "local") and cpus is not None and cpus_per_client > cpus:
        raise ConfigError("cpus-per-client", f"{cpus_per_client} exceeds this machine's {cpus} CPUs, so Ray could "
                                             f"never place a client; use 1 to {cpus}, or --ray-address for a cluster")


def _check_dataset(settings: RunSettings) -> None:
    """The dataset loads, and its seeded partition gives every client examples to train on."""
    _check_partition(settings, _dataset_labels(settings))


def _dataset_labels(settings: RunSettings) -> np.ndarray:
    """The training labels of the run's dataset; ``ConfigError('dataset')`` saying how to get it if it is missing."""
    from fedprune.data import DatasetMissingError, load_dataset

    try:
        return load_dataset(settings.dataset, settings.dataset_path or None).train.y
    except DatasetMissingError as exc:
        raise ConfigError("dataset", str(exc)) from None


def _check_partition(settings: RunSettings, labels: np.ndarray) -> None:
    """Run the partition the clients will run (deterministic for the settings) and refuse settings that leave a
    client without examples, before any process starts; otherwise a client would fail in round one."""
    import numpy as np

    from fedprune.data import partition_indices

    n, k, kind = len(labels), settings.num_clients, settings.partition
    where = f"the {n:,} training examples of {settings.dataset}"
    if k > n:
        raise ConfigError("num-clients", f"{k} exceeds {where}; use at most {n:,}")
    if kind == "dirichlet" and k * settings.min_partition_size > n:
        raise ConfigError("min-partition-size", f"{settings.min_partition_size} x {k} clients exceeds {where}; use "
                                                f"at most {n // k} for {k} clients")
    if kind == "iid":  # contiguous shards of n // k or n // k + 1 examples: nothing to run (and no 2 s import)
        return
    try:
        with warnings.catch_warnings():  # the partitioners warn on every retry; the error below says it once
            warnings.simplefilter("ignore")
            parts = partition_indices(labels, kind, k, alpha=settings.alpha,
                                      classes_per_client=settings.classes_per_client,
                                      min_partition_size=settings.min_partition_size, seed=settings.seed)
    except ValueError as exc:
        if kind == "pathological":
            raise ConfigError("num-clients", f"{k} clients with {settings.classes_per_client} classes each would "
                                             f"need some class of {where} in more clients than it has examples; "
                                             "use fewer clients or --classes-per-client") from None
        raise ConfigError("min-partition-size", " ".join(str(exc).split())) from None
    sizes = np.array([len(part) for part in parts])
    empty = np.flatnonzero(sizes == 0)
    if len(empty):
        more = f" and {len(empty) - 1} more" if len(empty) > 1 else ""
        alpha = f"alpha {settings.alpha:g}, " if kind == "dirichlet" else ""
        detail = (f"client {empty[0]}{more} of {k} would get no training examples in the seeded {kind} partition "
                  f"of {where} ({alpha}seed {settings.seed})")
        if kind == "dirichlet":
            raise ConfigError("min-partition-size", f"with {settings.min_partition_size}, {detail}; use 1 or more")
        raise ConfigError("num-clients", f"{detail}; use fewer clients")


def cmd_simulate(args: argparse.Namespace) -> int:
    from fedprune.simulation.launcher import SimulationError, run_simulation
    from fedprune.simulation.report import plot_report

    settings = _settings_from_args(args)
    labels = _dataset_labels(settings)
    if settings.strategy == "fedtiny" and settings.budget_tiers:
        from fedprune.strategies.registry import check_budget_tiers

        check_budget_tiers(settings)
    _check_partition(settings, labels)
    print(f"fedprune: {settings.strategy} on {settings.dataset}/{settings.model}, {settings.num_clients} clients "
          f"({settings.clients_per_round}/round, {settings.partition}), {settings.rounds} rounds -> {settings.out}",
          flush=True)
    try:
        document = run_simulation(settings, num_cpus_per_client=args.cpus_per_client, ray_address=args.ray_address,
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
    from fedprune.simulation.report import plot_report

    documents = {}
    for item in args.results:
        path = Path(item)
        path = path / "results.json" if path.is_dir() else path
        if not path.is_file():
            raise ConfigError("results", f"{path} does not exist")
        document = json.loads(path.read_text())
        documents[f"{document['config'].get('strategy')} ({path.parent.name})"] = document
    print(f"wrote {plot_report(documents, Path(args.out))}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "wire":
        from fedprune.protos.wire_benchmark import run

        run(Path(args.json) if args.json else None)
    else:
        from fedprune.kernels.benchmark import run as run_kernels

        run_kernels(Path(args.json) if args.json else None, Path(args.markdown) if args.markdown else None,
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
    from fedprune.deploy.cli import add_deploy_parsers

    add_deploy_parsers(sub)
    return parser


def _exit_on_sigterm() -> None:
    """Make ``kill PID`` end a command like Ctrl-C does: ``SystemExit`` runs the ``finally`` blocks that stop
    the SuperLink, Ray and SuperNodes a run started (the default SIGTERM action would orphan them)."""
    signal.signal(signal.SIGTERM, lambda sig, frame: sys.exit(128 + sig))


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    _exit_on_sigterm()
    from fedprune.deploy.cli import HANDLERS as deploy_handlers

    handlers = {"simulate": cmd_simulate, "report": cmd_report, "bench": cmd_bench, **deploy_handlers}
    try:
        return handlers[args.command](args)
    except ConfigError as exc:
        print(f"fedprune {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
