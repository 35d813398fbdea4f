"""The options of one run on the command line: derived from ``RunSettings``, checked before anything starts.

``RunSettings`` (server/run_config.py) declares every run option once — name, type, default, help — and
its own validation; this module turns it into ``argparse`` options for ``fedprune simulate`` and
``fedprune deploy run|loopback``, builds validated settings from parsed arguments, and adds the checks
only the launching machine can make (the dataset on disk and its seeded partition, Ray's address and CPUs).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import re
import warnings
from pathlib import Path

import numpy as np

from fedprune.data import DatasetMissingError, partition_indices, run_dataset
from fedprune.models import default_model_for
from fedprune.models.device import cuda_available
from fedprune.server.run_config import ConfigError, RunSettings, check_model_takes_inputs

_ARG_TYPES = {"int": int, "float": float, "str": str}


def add_run_options(p: argparse.ArgumentParser) -> None:
    """One ``--option`` per ``RunSettings`` field, with its type, default and help (``--model`` defaults to
    the dataset's usual architecture; booleans are flags)."""
    for f in dataclasses.fields(RunSettings):
        if f.name == "extra":
            continue
        flag, help_text = "--" + f.name.replace("_", "-"), f.metadata.get("help")
        if f.type == "bool":
            p.add_argument(flag, action="store_true", help=help_text)
        elif f.name == "model":
            p.add_argument(flag, default=None, help=help_text)
        else:
            p.add_argument(flag, type=_ARG_TYPES[f.type], default=f.default, help=help_text)


def settings_from_args(args: argparse.Namespace, local_out: bool = True) -> RunSettings:
    """Validated settings; ``local_out=False`` when ``--out`` is a path on another host (deploy run)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(RunSettings) if f.name != "extra"}
    if values["model"] is None:
        try:
            values["model"] = default_model_for(args.dataset)
        except KeyError:
            values["model"] = RunSettings().model  # the dataset error below names the problem
    if local_out and args.out.strip():  # an empty --out stays empty (validate refuses it), not the current folder
        values["out"] = str(Path(args.out).expanduser().resolve())
    settings = RunSettings(**values)
    settings.validate(check_out_dir=local_out)
    check_model_takes_inputs(settings)
    check_ray_options(getattr(args, "ray_address", None), getattr(args, "cpus_per_client", 1),
                      getattr(args, "gpus_per_client", 0.0))
    if local_out and args.resume and not (Path(settings.out) / "checkpoint.pt").is_file():
        raise ConfigError("resume", f"no checkpoint in {settings.out} to resume from")
    return settings


# What Ray's ray.init(address=...) takes for a running cluster: HOST:PORT, an IPv6 host in brackets.
_RAY_ADDRESS = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_][A-Za-z0-9_.-]*):(?P<port>[0-9]{1,5})")


def check_ray_options(ray_address: str | None, cpus_per_client: int, gpus_per_client: float = 0.0) -> None:
    """``--ray-address`` must be an address Ray can attach to; ``--cpus-per-client`` must fit one Ray node;
    ``--gpus-per-client`` needs a GPU on this machine when Ray runs here.

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
    if not (math.isfinite(gpus_per_client) and gpus_per_client >= 0):
        raise ConfigError("gpus-per-client", f"{gpus_per_client} must be >= 0 (0 = CPU only)")
    if gpus_per_client > 0 and ray_address in (None, "local") and not cuda_available():
        raise ConfigError("gpus-per-client", f"{gpus_per_client:g} asked for, but torch sees no CUDA GPU on this "
                                             "machine, so Ray could never place a client; use 0, or --ray-address "
                                             "for a cluster with GPUs")


def check_dataset(settings: RunSettings) -> None:
    """The dataset loads, and its seeded partition gives every client examples to train on."""
    check_partition(settings, dataset_labels(settings))


def dataset_labels(settings: RunSettings) -> np.ndarray:
    """The training labels of the run's dataset; ``ConfigError('dataset')`` saying how to get it if it is missing."""
    try:
        return run_dataset(settings).train.y
    except DatasetMissingError as exc:
        raise ConfigError("dataset", str(exc)) from None


def check_partition(settings: RunSettings, labels: np.ndarray) -> None:
    """Run the partition the clients will run (deterministic for the settings) and refuse settings that leave a
    client without examples, before any process starts; otherwise a client would fail in round one."""
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
