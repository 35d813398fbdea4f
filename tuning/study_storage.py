"""Where a study lives and how it samples: Optuna storage (SQLite file, SQLAlchemy URL, journal file), the
objectives, the sampler, and the settings a study is created with (a rerun must match them).

Several machines work on one study by pointing at one storage — a PostgreSQL/MySQL URL, or a journal file on a
shared filesystem (``journal:PATH``); Optuna's storage hands each waiting trial to one worker.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna
from fedprune.tuning.search_space import SpaceError
from optuna.storages import BaseStorage, JournalStorage, RDBStorage
from optuna.storages.journal import JournalFileBackend, JournalFileOpenLock
from optuna.trial import FrozenTrial

OBJECTIVES = ("accuracy", "uplink_bytes", "downlink_bytes", "memory_bytes", "flops_per_sample")
DIRECTIONS = ("maximize", "minimize", "minimize", "minimize", "minimize")
SAMPLERS = ("tpe", "gp", "nsga2", "grid")
DB_FILE = "study.db"
# Study attributes fixed at creation: a rerun with other values would mix incomparable trials.
FIXED_ATTRS = ("space", "seeds", "rounds", "constraints")


def default_study_dir(name: str) -> Path:
    """The study folder when ``--out`` is not given."""
    return Path("runs") / "tune" / name


def make_storage(storage: str | None, study_dir: Path) -> BaseStorage:
    """SQLite in the study folder (None), a journal file (``journal:PATH``), or any SQLAlchemy URL."""
    if not storage:
        study_dir.mkdir(parents=True, exist_ok=True)
        return RDBStorage(f"sqlite:///{(study_dir / DB_FILE).resolve()}")
    if storage.startswith("journal:"):
        path = Path(storage.removeprefix("journal:")).expanduser()
        if not path.parent.is_dir():
            raise SpaceError("storage", f"the journal's folder {path.parent} does not exist")
        return JournalStorage(JournalFileBackend(str(path), lock_obj=JournalFileOpenLock(str(path))))
    try:
        return RDBStorage(storage)
    except Exception as exc:  # SQLAlchemy raises many types for a bad URL or an unreachable server
        raise SpaceError("storage", f"cannot open '{storage}': {str(exc).splitlines()[0]}") from None


def constraints_of(trial: FrozenTrial) -> Sequence[float]:
    """The violations a finished trial recorded (what Optuna's constrained samplers read)."""
    return trial.user_attrs.get("constraints", [])


def make_sampler(name: str, seed: int, constrained: bool) -> optuna.samplers.BaseSampler:
    """The sampler ``--sampler`` names, seeded. ``grid``: the space's grid is enqueued when the study is
    created; this sampler only serves a trial the queue does not cover (never, in practice)."""
    constraints = constraints_of if constrained else None
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constraints_func=constraints,
                                          n_startup_trials=8)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, constraints_func=constraints, n_startup_trials=8)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, constraints_func=constraints, population_size=8)
    if name == "grid":
        return optuna.samplers.RandomSampler(seed=seed)
    raise SpaceError("sampler", f"'{name}' is not one of {', '.join(SAMPLERS)}")


def open_study(name: str, storage: BaseStorage, sampler: optuna.samplers.BaseSampler
               ) -> tuple[optuna.Study, bool]:
    """(the study, whether this call created it). Of several workers starting at once exactly one creates it."""
    try:
        study = optuna.create_study(study_name=name, storage=storage, sampler=sampler,
                                    directions=list(DIRECTIONS))
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler)
        if list(study.directions) != [optuna.study.StudyDirection[d.upper()] for d in DIRECTIONS]:
            raise SpaceError("study", f"study '{name}' exists and is not a fedprune tune study") from None
        return study, False


def load_existing(name: str, storage: BaseStorage) -> optuna.Study:
    """A study that must already exist (report, best)."""
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage)]
        raise SpaceError("study", f"no study '{name}' in this storage (studies: {', '.join(names) or 'none'})"
                         ) from None


def check_study_settings(study: optuna.Study, storage: BaseStorage, created: bool, settings: dict[str, Any]
                         ) -> None:
    """Store the study's fixed settings on creation; on a rerun, refuse settings that differ."""
    encoded = {k: json.dumps(settings[k], sort_keys=True) for k in FIXED_ATTRS}
    if created:
        for key, value in encoded.items():
            study.set_user_attr(key, value)
        study.set_user_attr("study_dir", settings["study_dir"])
        return
    stored = study.user_attrs
    for _ in range(50):  # another worker may have created it a moment ago and still be writing its settings
        if all(k in stored for k in FIXED_ATTRS):
            break
        time.sleep(0.2)
        stored = optuna.load_study(study_name=study.study_name, storage=storage).user_attrs
    for key, value in encoded.items():
        if stored.get(key) != value:
            raise SpaceError(key, f"study '{study.study_name}' was created with another {key} "
                                  f"({stored.get(key, 'none')[:120]}); use a new --study name")
