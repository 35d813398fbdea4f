"""The tuner without simulations: search spaces, constraints, the Pareto front, ``best``, and a study's life
(anchor, infeasible trials, interrupt and rerun, dead workers, two workers on one journal) with a stand-in
runner (``tests/tuning_fakes.py``). The real ``fedprune simulate`` runs are in ``test_tuning_e2e.py``."""

from __future__ import annotations

import csv
import itertools
import math
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from fedprune.tuning.best_trial import Limits, best_trial
from fedprune.tuning.constraints import ConstraintError, parse_constraint
from fedprune.tuning.pareto import dominates, pareto_front
from fedprune.tuning.search_space import SpaceError, load_space, parse_space
from fedprune.tuning.study_report import feasible_trials, front_trials, write_report
from fedprune.tuning.study_storage import make_storage
from fedprune.tuning.study_worker import TunePlan, pending_retry, recover, run_study, start_retry
from optuna.trial import TrialState

from fedprune.cli import main as cli_main
from tests.tuning_fakes import CALLS_ENV, fake_run

ROOT = Path(__file__).resolve().parent.parent
DIGITS_SPACE = ROOT / "tests" / "tune_digits.toml"


def plan(tmp_path: Path, trials: int, **kw) -> TunePlan:
    return TunePlan(kw.pop("study", "t"), tmp_path / "study", kw.pop("storage", None), trials,
                    load_space(path=str(DIGITS_SPACE)), **kw)


def quiet(line: str) -> None:
    pass


# --- search spaces -------------------------------------------------------------------------------------------


def test_preset_loads_with_anchor_first_and_conditional_parameters():
    space = load_space(preset="fmnist-budgets")
    assert space.parameters[0].name == "strategy" and "fedavg" in space.parameters[0].choices
    assert space.anchor()["strategy"] == "fedavg" and "density" not in space.anchor()
    grid = list(space.grid())
    assert len(grid) == space.grid_size() - 1 == 25
    assert all("aggregation" in g for g in grid if g["strategy"] == "hidenseek")
    assert all("aggregation" not in g and "adjust-alpha" not in g for g in grid if g["strategy"] != "hidenseek"
               and g["strategy"] != "fedtiny")
    assert space.trial_options({"strategy": "fedtiny"})["model"] == "fl-cnn-bn"


def test_fedavg_is_added_to_a_space_without_it():
    space = parse_space({"fixed": {"dataset": "digits"}, "parameters": {"strategy": {"choices": ["hidenseek"]}}},
                        "x")
    assert space.parameters[0].choices == ("fedavg", "hidenseek")


@pytest.mark.parametrize("document, needle", [
    ({"parameters": {"densty": {"low": 0.1, "high": 0.2, "grid": [0.1]}}}, "unknown parameter 'densty'"),
    ({"fixed": {"seed": 3}}, "'seed' is set by the tuner"),
    ({"nonsense": {}}, "unknown table [nonsense]"),
    ({"parameters": {"density": {"low": 0.3, "high": 0.2, "grid": [0.25]}}}, "low < high"),
    ({"parameters": {"density": {"low": 0.1, "high": 0.2, "grid": [0.5]}}}, "grid value 0.5"),
    ({"parameters": {"density": {"low": 0.1, "high": 0.2}}}, "needs 'grid' values"),
    ({"parameters": {"density": {"low": 0.0, "high": 0.2, "log": True, "grid": [0.1]}}}, "log scale"),
    ({"parameters": {"lr": {"low": 0.1, "high": 0.2, "grid": [0.1], "when": {"strategy2": ["x"]}}}},
     "'when' names 'strategy2'"),
    ({"parameters": {"strategy": {"choices": ["fedavg", "hidenseek"]},
                     "aggregation": {"choices": ["tally"]}}}, "--score-optimizer"),
    ({"parameters": {"strategy": {"choices": ["nope"]}}}, "--strategy"),
    ({"fixed": {"density": 0.1}, "parameters": {"density": {"choices": [0.1]}}}, "both fixed and searched"),
    ({"parameters": {"rounds": {"choices": ["two"]}}}, "not a int"),
])
def test_a_bad_space_is_one_line_naming_the_key(document, needle):
    with pytest.raises(SpaceError) as caught:
        parse_space({"fixed": {"dataset": "digits"}, **document} if "fixed" not in document else document, "s.toml")
    assert needle in str(caught.value) and "\n" not in str(caught.value)


def test_cli_refuses_bad_space_unknown_parameter_and_impossible_constraint(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("[parameters.dnsity]\nchoices = [0.1]\n")
    assert cli_main(["tune", "run", "--study", "x", "--trials", "2", "--space", str(bad), "--out", str(tmp_path)]) == 2
    assert "unknown parameter 'dnsity'" in capsys.readouterr().err
    broken_toml = tmp_path / "broken.toml"
    broken_toml.write_text("[fixed\n")
    assert cli_main(["tune", "run", "--study", "x", "--trials", "2", "--space", str(broken_toml)]) == 2
    assert "not valid TOML" in capsys.readouterr().err
    code = cli_main(["tune", "run", "--study", "x", "--trials", "2", "--space", str(DIGITS_SPACE), "--out",
                     str(tmp_path / "s"), "--constraint", "memory_mb<=0.001"])
    err = capsys.readouterr().err
    assert code == 2 and "cannot be met by any strategy" in err and err.count("\n") == 1
    assert not (tmp_path / "s" / "study.db").exists()
    assert cli_main(["tune", "run", "--study", "x", "--trials", "2", "--space", str(DIGITS_SPACE),
                     "--constraint", "speed<=3"]) == 2
    assert "unknown metric 'speed'" in capsys.readouterr().err


# --- constraints, front, best -------------------------------------------------------------------------------


def test_constraints_parse_and_measure_violation_in_their_unit():
    c = parse_constraint("uplink_kb<=20")
    assert c.violation({"uplink_bytes": 25_000}) == pytest.approx(5.0)
    assert c.violation({"uplink_bytes": 10_000}) == pytest.approx(-10.0)
    assert parse_constraint("accuracy>=0.8").violation({"accuracy": 0.75}) == pytest.approx(0.05)
    for text in ("uplink_kb<20", "memory_mb>=1", "accuracy<=0.5", "mflops<=-1", "memory_mb<=inf", "x<=1"):
        with pytest.raises(ConstraintError):
            parse_constraint(text)


def brute_force_front(points, maximize):
    return [i for i, p in enumerate(points) if not any(dominates(q, p, maximize) for q in points)]


def test_pareto_front_equals_brute_force_with_ties():
    rng = random.Random(0)
    for case in range(400):
        dims = rng.randint(1, 5)
        maximize = [rng.random() < 0.5 for _ in range(dims)]
        points = [[rng.choice([0.0, 1.0, 2.0, 3.0]) if case % 2 else rng.random() for _ in range(dims)]
                  for _ in range(rng.randint(0, 25))]
        assert pareto_front(points, maximize) == brute_force_front(points, maximize)


@pytest.fixture
def finished_study(tmp_path):
    p = plan(tmp_path, 6, sampler="grid")
    return run_study(p, run=fake_run, echo=quiet), p


def test_a_study_runs_the_anchor_first_and_writes_its_report(finished_study, tmp_path):
    study, p = finished_study
    trials = sorted(study.trials, key=lambda t: t.number)
    assert trials[0].user_attrs["options"]["strategy"] == "fedavg" and trials[0].user_attrs.get("anchor")
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 5  # the anchor + a grid of 4
    paths = write_report(study, p.study_dir)
    rows = list(csv.DictReader(paths["csv"].open()))
    assert [int(r["trial"]) for r in rows] == [t.number for t in trials]
    front = front_trials(feasible_trials(study))
    expected = brute_force_front([[t.user_attrs["figures"][k] for k in ("accuracy", "uplink_bytes",
                                  "downlink_bytes", "memory_bytes", "flops_per_sample")]
                                  for t in feasible_trials(study)], [True, False, False, False, False])
    assert [t.number for t in front] == [feasible_trials(study)[i].number for i in expected]
    table = paths["front"].read_text()
    assert all(f"| {t.number} |" in table for t in front)
    assert paths["plot"].stat().st_size > 10_000
    for t in trials:  # every complete trial links its results
        assert all(Path(r).is_file() for r in t.user_attrs.get("results", []))


def test_best_never_returns_a_trial_over_a_limit(finished_study):
    study, _ = finished_study
    figures = [t.user_attrs["figures"] for t in feasible_trials(study)]
    rng = random.Random(1)
    for _ in range(300):
        limits = Limits(rng.choice([math.inf, *(f["uplink_bytes"] / 1e3 for f in figures)]) * rng.uniform(0.9, 1.1),
                        rng.choice([math.inf, *(f["downlink_bytes"] / 1e3 for f in figures)]),
                        rng.choice([math.inf, *(f["memory_bytes"] / 1e6 for f in figures)]),
                        rng.choice([math.inf, 1.0, 100.0]))
        best = best_trial(study, limits)
        fitting = [f for f in figures if limits.admit(f)]
        if best is None:
            assert not fitting
            continue
        f = best.user_attrs["figures"]
        assert limits.admit(f) and f["uplink_bytes"] <= limits.uplink_kb * 1e3
        assert f["accuracy"] == max(g["accuracy"] for g in fitting)


def test_best_command_prints_a_ready_simulate_command(finished_study, capsys):
    _, p = finished_study
    assert cli_main(["tune", "best", "--study", "t", "--out", str(p.study_dir), "--max-uplink-kb", "20"]) == 0
    out = capsys.readouterr().out
    assert "fedprune simulate --dataset digits" in out and "fedprune deploy run" in out and "node budgets" in out
    assert cli_main(["tune", "best", "--study", "t", "--out", str(p.study_dir), "--max-memory-mb", "0.0001"]) == 1
    assert "no complete trial" in capsys.readouterr().err
    assert cli_main(["tune", "report", "--study", "nope", "--out", str(p.study_dir)]) == 2


# --- a study's life ------------------------------------------------------------------------------------------


def test_an_infeasible_trial_never_runs(tmp_path, monkeypatch):
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv(CALLS_ENV, str(calls))
    study = run_study(plan(tmp_path, 5, sampler="grid", constraints=(parse_constraint("memory_mb<=1"),)),
                      run=fake_run, echo=quiet)
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned and all("memory_mb" in t.user_attrs["infeasible"] for t in pruned)
    assert any(t.user_attrs["options"]["strategy"] == "fedavg" for t in pruned)  # dense digits CNN: 2.3 MB
    ran = {line.split()[0] for line in calls.read_text().splitlines()}
    assert all(f"{t.number:04d}" not in ran and not (tmp_path / "study" / "trials" / f"{t.number:04d}").exists()
               for t in pruned)
    assert all(t.user_attrs["estimated_memory_bytes"] <= 1e6 for t in study.trials if t.state == TrialState.COMPLETE)


def test_interrupt_and_rerun_keeps_finished_trials_and_retries_once(tmp_path, monkeypatch):
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv(CALLS_ENV, str(calls))
    count = itertools.count()

    def interrupted_third(options, seed, out):
        if next(count) == 2:
            raise KeyboardInterrupt
        return fake_run(options, seed, out)

    with pytest.raises(KeyboardInterrupt):
        run_study(plan(tmp_path, 5, sampler="grid"), run=interrupted_third, echo=quiet)
    before = {t.number: t.values for t in optuna.load_study(study_name="t", storage=make_storage(
        None, tmp_path / "study")).trials if t.state == TrialState.COMPLETE}
    assert len(before) == 2
    study = run_study(plan(tmp_path, 5, sampler="grid"), run=fake_run, echo=quiet)
    complete = {t.number: t.values for t in study.trials if t.state == TrialState.COMPLETE}
    assert len(complete) == 5 and all(complete[n] == v for n, v in before.items())
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(failed) == 1 and failed[0].user_attrs["error"] == "interrupted"
    retry = [t for t in study.trials if t.user_attrs.get("retry_of") == failed[0].number]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].params == failed[0].params
    lines = calls.read_text().splitlines()
    assert len(lines) == len({line.split()[0] for line in lines}) == 5  # every run once; the interrupted one never ran


def test_a_trial_whose_worker_died_is_failed_and_retried(tmp_path):
    storage = make_storage(None, tmp_path / "study")
    study = optuna.create_study(study_name="t", storage=storage, directions=["maximize"] + ["minimize"] * 4)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    trial = study.ask({"strategy": optuna.distributions.CategoricalDistribution(["fedavg"])})
    trial.set_user_attr("worker", f"{socket.gethostname()}:{dead.pid}")
    alive = study.ask({"strategy": optuna.distributions.CategoricalDistribution(["fedavg"])})
    alive.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    alive.set_user_attr("heartbeat", 1e12)
    recover(study, storage, quiet)
    states = {t.number: t.state for t in study.get_trials()}
    assert states[trial.number] == TrialState.FAIL and states[alive.number] == TrialState.RUNNING
    assert pending_retry(study).number == trial.number
    retry = start_retry(study, storage, pending_retry(study))
    assert retry.params == {"strategy": "fedavg"} and retry.suggest_categorical("strategy", ["fedavg"]) == "fedavg"
    assert pending_retry(study) is None  # retried once; a retry is never retried


def test_a_rerun_with_another_space_is_refused(tmp_path):
    run_study(plan(tmp_path, 1), run=fake_run, echo=quiet)
    other = tmp_path / "other.toml"
    other.write_text(DIGITS_SPACE.read_text().replace("grid = [0.1, 0.3]", "grid = [0.1]"))
    with pytest.raises(SpaceError, match="another space"):
        run_study(TunePlan("t", tmp_path / "study", None, 2, load_space(path=str(other))), run=fake_run, echo=quiet)


def test_two_workers_on_one_journal_run_no_trial_twice(tmp_path):
    calls = tmp_path / "calls.txt"
    journal = f"journal:{tmp_path / 'journal.log'}"
    env = {**os.environ, CALLS_ENV: str(calls), "PYTHONPATH": str(ROOT)}
    workers = [subprocess.Popen([sys.executable, "-m", "tests.tuning_fakes", str(tmp_path / "study"), journal, "8",
                                 str(DIGITS_SPACE)], cwd=ROOT, env=env) for _ in range(2)]
    assert [w.wait(timeout=300) for w in workers] == [0, 0]
    study = optuna.load_study(study_name="shared", storage=make_storage(journal, tmp_path))
    finished = [t for t in study.trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert 8 <= len(finished) <= 9  # a worker may start one trial while the other finishes the eighth
    folders = [line.split()[0] for line in calls.read_text().splitlines()]
    assert len(folders) == len(set(folders)) == len(finished)
    assert sum(1 for t in study.trials if t.user_attrs.get("anchor")) == 1
