"""``fedprune tune run | report | best``: the command line of the tuner (options checked before anything runs;
a bad space, parameter or constraint is one line and exit code 2)."""

from __future__ import annotations

import argparse
import functools
import math
import sys
from pathlib import Path

from fedprune.tuning.best_trial import Limits, best_text, best_trial
from fedprune.tuning.constraints import Constraint, ConstraintError, broken, parse_constraint
from fedprune.tuning.search_space import PRESETS, SearchSpace, SpaceError, load_space
from fedprune.tuning.study_report import write_report
from fedprune.tuning.study_storage import DB_FILE, SAMPLERS, default_study_dir, load_existing, make_storage
from fedprune.tuning.study_worker import TunePlan, run_study
from fedprune.tuning.trial_costs import cheapest_per_strategy
from fedprune.tuning.trial_runs import run_simulation_process

_FORMAT = argparse.ArgumentDefaultsHelpFormatter


def add_tune_parsers(sub: argparse._SubParsersAction) -> None:
    """``fedprune tune`` and its three steps."""
    tune = sub.add_parser("tune", help="search strategies and densities for a communication/memory budget (Optuna)")
    steps = tune.add_subparsers(dest="tune_step", required=True)
    run = steps.add_parser("run", formatter_class=_FORMAT, help="run (or continue) a study: one simulation per trial")
    _study_options(run)
    run.add_argument("--trials", type=int, required=True, help="finished trials the study should hold")
    space = run.add_mutually_exclusive_group()
    space.add_argument("--space", default=None, help="search space TOML file")
    space.add_argument("--preset", default=None, choices=PRESETS, help="a search space shipped with fedprune")
    run.add_argument("--sampler", default="tpe", choices=SAMPLERS, help="how trials are chosen")
    run.add_argument("--sampler-seed", type=int, default=0, help="seeds the sampler")
    run.add_argument("--seeds", default="0", help="comma-separated run seeds; a trial's accuracy is their mean")
    run.add_argument("--rounds", type=int, default=None, help="rounds per run (default: the space's)")
    run.add_argument("--ray-address", default=None,
                     help="each trial's simulation attaches to this Ray cluster (as `fedprune simulate --ray-address`)")
    run.add_argument("--constraint", action="append", default=[], metavar="METRIC<=VALUE",
                     help="uplink_kb, downlink_kb, total_kb, memory_mb, mflops (<=), accuracy (>=); repeatable")
    report = steps.add_parser("report", formatter_class=_FORMAT, help="trials.csv, front.md and pareto.png")
    _study_options(report)
    best = steps.add_parser("best", formatter_class=_FORMAT, help="the most accurate trial within limits")
    _study_options(best)
    for name, unit in (("uplink-kb", "kB per client-round"), ("downlink-kb", "kB per client-round"),
                       ("memory-mb", "MB of client training state"), ("mflops", "million FLOPs per sample")):
        best.add_argument(f"--max-{name}", type=float, default=math.inf, help=unit)


def _study_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--study", required=True, help="the study's name")
    p.add_argument("--storage", default=None,
                   help="Optuna storage: a SQLAlchemy URL (postgresql://..., mysql://...) or journal:PATH; default "
                        "a SQLite file in the study folder")
    p.add_argument("--out", default=None, help="study folder: trial results, report (default runs/tune/STUDY)")


def _study_dir(args: argparse.Namespace) -> Path:
    return Path(args.out).expanduser() if args.out else default_study_dir(args.study)


def _plan(args: argparse.Namespace) -> TunePlan:
    if args.trials < 1:
        raise SpaceError("trials", f"{args.trials} must be >= 1")
    if args.rounds is not None and args.rounds < 1:
        raise SpaceError("rounds", f"{args.rounds} must be >= 1")
    try:
        seeds = tuple(int(s) for s in args.seeds.split(","))
    except ValueError:
        raise SpaceError("seeds", f"'{args.seeds}' is not a comma-separated list of integers") from None
    if not seeds or len(set(seeds)) != len(seeds) or any(not 0 <= s < 2**32 for s in seeds):
        raise SpaceError("seeds", f"'{args.seeds}': distinct integers in 0..2^32-1")
    space = load_space(preset=args.preset) if args.preset else load_space(path=args.space or "")
    constraints = tuple(parse_constraint(text) for text in args.constraint)
    check_possible(space, constraints, args.rounds)
    return TunePlan(args.study, _study_dir(args), args.storage, args.trials, space, args.sampler, seeds, args.rounds,
                    constraints, args.sampler_seed)


def check_possible(space: SearchSpace, constraints: tuple[Constraint, ...], rounds: int | None) -> None:
    """Refuse a memory/FLOPs/bytes constraint that no strategy of the space meets even at its least density."""
    cost_bound = [c for c in constraints if c.metric != "accuracy"]
    if not cost_bound:
        return
    cheapest = cheapest_per_strategy(space, rounds)
    for constraint in cost_bound:
        figures = {}
        for strategy, costs in cheapest.items():
            known = costs.figures() | ({"uplink_bytes": costs.min_model_bytes, "downlink_bytes": costs.min_model_bytes,
                                        "total_bytes": 2.0 * costs.min_model_bytes} if costs.min_model_bytes else {})
            if not broken([constraint], known):
                break
            figures[strategy] = broken([constraint], known)[0]
        else:
            least = "; ".join(f"{s}: {why}" for s, why in figures.items())
            raise ConstraintError(f"'{constraint}' cannot be met by any strategy of the space at its least density "
                                  f"({least})")


def cmd_tune(args: argparse.Namespace) -> int:
    """Dispatch ``fedprune tune <step>``."""
    if args.tune_step == "run":
        plan = _plan(args)
        print(f"fedprune tune: study '{plan.study}' ({plan.space.source}, sampler {plan.sampler}, seeds "
              f"{','.join(map(str, plan.seeds))}) -> {plan.study_dir}", flush=True)
        try:
            runner = functools.partial(run_simulation_process, ray_address=args.ray_address)
            study = run_study(plan, run=runner)
        except KeyboardInterrupt:
            print("fedprune tune: interrupted; rerun the same command to continue (the running trial is retried)",
                  file=sys.stderr)
            return 130
        paths = write_report(study, plan.study_dir)
        print(f"wrote {paths['csv']}, {paths['front']} and {paths['plot']}")
        return 0
    if not args.storage and not (_study_dir(args) / DB_FILE).is_file():
        raise SpaceError("study", f"no study database in {_study_dir(args)} (give --out or --storage)")
    study = load_existing(args.study, make_storage(args.storage, _study_dir(args)))
    if args.tune_step == "report":
        paths = write_report(study, _study_dir(args))
        print(f"wrote {paths['csv']}, {paths['front']} and {paths['plot']}")
        return 0
    limits = Limits(args.max_uplink_kb, args.max_downlink_kb, args.max_memory_mb, args.max_mflops)
    trial = best_trial(study, limits)
    if trial is None:
        print(f"fedprune tune best: no complete trial of '{args.study}' fits {limits}", file=sys.stderr)
        return 1
    print(best_text(study, trial, limits))
    return 0


HANDLERS = {"tune": cmd_tune}

