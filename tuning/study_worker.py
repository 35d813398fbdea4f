"""One worker of a study: recover what an interrupted worker left, then ask, run, tell until the study holds
``--trials`` finished trials. Several workers (here or on other machines) may run this against one storage.

A trial's path: parameters from the space (or the queue: the dense anchor, the grid, retries) → its run options
→ costs before running (``trial_costs``): a broken memory/FLOPs/bytes limit makes it *infeasible* (Optuna
state PRUNED, with the reason) and no SuperLink starts → one ``fedprune simulate`` per seed → figures →
``tell`` with the five objectives and the constraint violations.

Interrupted (Ctrl-C, SIGTERM) or dead (its process gone, or no heartbeat for ``STALE_SECONDS``): the trial is
marked failed and run again once, before any new trial; a failure of the run itself is recorded with its reason,
not retried. Two workers that start at the same moment may both retry one interrupted trial (the storage has no
lock for that); every other trial runs once.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from fedprune.server.run_config import ConfigError
from fedprune.tuning.constraints import Constraint, broken, violations
from fedprune.tuning.search_space import SearchSpace, settings_for
from fedprune.tuning.study_storage import (
    OBJECTIVES,
    check_study_settings,
    make_sampler,
    make_storage,
    open_study,
)
from fedprune.tuning.trial_costs import pre_run_costs
from fedprune.tuning.trial_runs import TrialRunError, mean_figures, run_figures, run_simulation_process
from fedprune.tuning.trial_summary import trial_line
from optuna.trial import FrozenTrial, TrialState
from tqdm import tqdm

HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = 600.0
RunFn = Callable[[Mapping[str, Any], int, Path], dict[str, Any]]


@dataclass(frozen=True)
class TunePlan:
    """What ``fedprune tune run`` was asked to do."""

    study: str
    study_dir: Path
    storage: str | None
    trials: int
    space: SearchSpace
    sampler: str = "tpe"
    seeds: tuple[int, ...] = (0,)
    rounds: int | None = None
    constraints: tuple[Constraint, ...] = ()
    sampler_seed: int = 0

    def settings(self) -> dict[str, Any]:
        """The study-level settings stored at creation and checked on every rerun."""
        return {"space": self.space.describe(), "seeds": list(self.seeds), "rounds": self.rounds,
                "constraints": [str(c) for c in self.constraints], "study_dir": str(self.study_dir.resolve())}


class TrialInfeasible(Exception):
    """A trial's costs break a constraint before it runs."""


def run_study(plan: TunePlan, run: RunFn = run_simulation_process, echo: Callable[[str], None] = tqdm.write
              ) -> optuna.Study:
    """Work on the study until it holds ``plan.trials`` finished trials (or its grid is done)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = make_storage(plan.storage, plan.study_dir)
    study, created = open_study(plan.study, storage, make_sampler(plan.sampler, plan.sampler_seed,
                                                                  bool(plan.constraints)))
    check_study_settings(study, storage, created, plan.settings())
    if created:
        study.enqueue_trial(plan.space.anchor(), user_attrs={"anchor": True})
        if plan.sampler == "grid":
            for point in plan.space.grid():
                study.enqueue_trial(point)
    recover(study, storage, echo)
    with tqdm(total=plan.trials, initial=min(plan.trials, _finished(study)), unit="trial", dynamic_ncols=True,
              desc=f"tune {plan.study}") as bar:
        while True:
            finished, running, waiting = _finished(study), _count(study, TrialState.RUNNING), \
                _count(study, TrialState.WAITING)
            bar.n = min(plan.trials, finished)
            bar.refresh()
            if finished + running >= plan.trials:
                break
            if plan.sampler == "grid" and not waiting and pending_retry(study) is None:
                echo(f"the grid is done: {finished} trials finished")
                break
            retry = pending_retry(study)
            trial = start_retry(study, storage, retry) if retry is not None else study.ask()
            if retry is not None:
                echo(f"trial {retry.number} was interrupted; retrying it as trial {trial.number}")
            state, values = _run_trial(plan, study, trial, run)
            study.tell(trial, values, state=state)
            echo(trial_line(study.trials[trial.number]))
    return study


def _run_trial(plan: TunePlan, study: optuna.Study, trial: optuna.Trial, run: RunFn
               ) -> tuple[TrialState, list[float] | None]:
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    stop = threading.Event()
    beat = threading.Thread(target=_heartbeat, args=(trial, stop), daemon=True)
    beat.start()
    try:
        return TrialState.COMPLETE, evaluate(plan, trial, run)
    except TrialInfeasible as exc:
        trial.set_user_attr("infeasible", str(exc))
        return TrialState.PRUNED, None
    except (TrialRunError, ConfigError) as exc:
        trial.set_user_attr("error", str(exc))
        return TrialState.FAIL, None
    except BaseException:
        trial.set_user_attr("error", "interrupted")
        trial.set_user_attr("retryable", True)
        study.tell(trial, state=TrialState.FAIL)
        raise
    finally:
        stop.set()


def _heartbeat(trial: optuna.Trial, stop: threading.Event) -> None:
    while True:
        trial.set_user_attr("heartbeat", time.time())
        if stop.wait(HEARTBEAT_SECONDS):
            return


def evaluate(plan: TunePlan, trial: optuna.Trial, run: RunFn) -> list[float]:
    """Run one trial: costs first (``TrialInfeasible`` if they break a limit), then one simulation per seed."""
    chosen = plan.space.suggest(trial)
    options = plan.space.trial_options(chosen)
    if plan.rounds is not None:
        options["rounds"] = plan.rounds
    trial.set_user_attr("options", options)
    settings = settings_for(options, seed=plan.seeds[0], out="")
    costs = pre_run_costs(settings)
    before = costs.figures()
    if costs.min_model_bytes:
        before |= {"uplink_bytes": costs.min_model_bytes, "downlink_bytes": costs.min_model_bytes,
                   "total_bytes": 2.0 * costs.min_model_bytes}
    trial.set_user_attr("estimated_memory_bytes", costs.memory_bytes)
    trial.set_user_attr("flops_per_sample", costs.flops_per_sample)
    trial.set_user_attr("backends", costs.backends)
    reasons = broken(plan.constraints, before)
    if reasons:
        raise TrialInfeasible(", ".join(reasons) + " (known before running)")
    folder = plan.study_dir / "trials" / f"{trial.number:04d}"
    runs = []
    for seed in plan.seeds:
        out = folder / f"seed-{seed}"
        runs.append(run_figures(run(options, seed, out)))
        trial.set_user_attr("results", [str(folder / f"seed-{s}" / "results.json") for s in plan.seeds[:len(runs)]])
    figures = mean_figures(runs)
    figures["memory_bytes"] = max(float(costs.memory_bytes), figures.get("measured_memory_bytes", 0.0))
    figures["flops_per_sample"] = float(costs.flops_per_sample)
    trial.set_user_attr("figures", figures)
    trial.set_user_attr("constraints", violations(plan.constraints, figures))
    trial.set_user_attr("broken", broken(plan.constraints, figures))
    return [figures[name] for name in OBJECTIVES]


def _finished(study: optuna.Study) -> int:
    """Trials that count toward ``--trials``: complete, infeasible, and failures that will not be retried."""
    return sum(1 for t in study.get_trials(deepcopy=False)
               if t.state in (TrialState.COMPLETE, TrialState.PRUNED)
               or (t.state == TrialState.FAIL and not t.user_attrs.get("retryable")))


def _count(study: optuna.Study, state: TrialState) -> int:
    return len(study.get_trials(deepcopy=False, states=(state,)))


def recover(study: optuna.Study, storage: optuna.storages.BaseStorage, echo: Callable[[str], None]) -> None:
    """Fail trials whose worker is gone (its process on this host, or no heartbeat for ``STALE_SECONDS``), so
    that the loop retries them."""
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(trial.user_attrs.get("worker", ":"))
        worker_host, _, pid = worker.rpartition(":")
        gone = worker_host == host and pid.isdigit() and not _alive(int(pid))
        stale = time.time() - float(trial.user_attrs.get("heartbeat", time.time())) > STALE_SECONDS
        if gone or stale:
            storage.set_trial_user_attr(trial._trial_id, "error", f"its worker {worker} stopped")
            storage.set_trial_user_attr(trial._trial_id, "retryable", True)
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
            echo(f"trial {trial.number}: its worker {worker} stopped; marked failed")


def pending_retry(study: optuna.Study) -> FrozenTrial | None:
    """The first interrupted trial not retried yet (a retry itself is never retried)."""
    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    return next((t for t in trials if t.state == TrialState.FAIL and t.user_attrs.get("retryable")
                 and "retry_of" not in t.user_attrs and t.number not in retried), None)


def start_retry(study: optuna.Study, storage: optuna.storages.BaseStorage, original: FrozenTrial) -> optuna.Trial:
    """A new running trial with ``original``'s parameters, started now rather than queued behind the waiting
    ones (a grid study would otherwise end before reaching it)."""
    trial_id = storage.create_new_trial(storage.get_study_id_from_name(study.study_name))
    for name, value in original.params.items():
        distribution = original.distributions[name]
        storage.set_trial_param(trial_id, name, distribution.to_internal_repr(value), distribution)
    storage.set_trial_user_attr(trial_id, "retry_of", original.number)
    if original.user_attrs.get("anchor"):
        storage.set_trial_user_attr(trial_id, "anchor", True)
    return optuna.Trial(study, trial_id)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

