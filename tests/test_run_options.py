"""Hostile option values (issue 17): each is refused before anything starts, with one line naming the option.

Every test goes through ``fedprune.cli.main`` and checks exit code 2, one stderr line ``fedprune simulate: error:
--option: ...``, no ``--out`` folder, and that the launcher was never called.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
import torch
from fedprune.server.run_config import FLOAT_RANGES, ConfigError, RunSettings, model_facts

from fedprune.cli import EXIT_USAGE, main


class LauncherCalled(Exception):
    """Raised by the stand-in launcher: the option was accepted."""


@pytest.fixture
def no_launch(monkeypatch):
    """Replace ``run_simulation`` so a test fails loudly if a run would have started."""
    from fedprune.simulation import launcher

    from fedprune import cli

    calls = []

    def refuse(*args, **kwargs):
        calls.append(kwargs)
        raise launcher.SimulationError("launcher called")

    monkeypatch.setattr(cli, "run_simulation", refuse)
    return calls


def refused(args: list[str], option: str, tmp_path, capsys, no_launch, needle: str = "") -> str:
    """Run ``fedprune simulate ARGS``; assert it was refused naming ``option``; return the error line."""
    out = [] if "--out" in args else ["--out", str(tmp_path / "o")]
    code = main(["simulate", *args, *out])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_USAGE, err
    assert len(err) == 1, err
    assert err[0].startswith(f"fedprune simulate: error: --{option}: "), err[0]
    assert needle in err[0]
    assert not (tmp_path / "o").exists()
    assert not no_launch
    return err[0]


FLOAT_OPTIONS = sorted(name.replace("_", "-") for name in FLOAT_RANGES)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("option", FLOAT_OPTIONS)
def test_non_finite_float_options_are_refused(option, value, tmp_path, capsys, no_launch):
    refused(["--dataset", "digits", f"--{option}={value}"], option, tmp_path, capsys, no_launch,
            "is not a finite number; it must be ")


def test_every_float_option_has_a_range():
    floats = {f.name for f in dataclasses.fields(RunSettings) if f.type == "float"}
    assert floats == set(FLOAT_RANGES)


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_seed_outside_32_bits_is_refused(seed, tmp_path, capsys, no_launch):
    refused(["--dataset", "digits", "--seed", seed], "seed", tmp_path, capsys, no_launch, "[0, 4294967295]")


def test_seed_limits_are_accepted_by_validation():
    RunSettings(seed=0).validate(check_out_dir=False)
    RunSettings(seed=2**32 - 1).validate(check_out_dir=False)


def test_server_app_path_refuses_a_bad_seed_too():
    with pytest.raises(ConfigError) as info:
        RunSettings.from_run_config({"seed": -1}, check_out_dir=False)
    assert info.value.option == "seed"


def test_classes_per_client_above_the_datasets_classes_is_refused(tmp_path, capsys, no_launch):
    refused(["--dataset", "digits", "--partition", "pathological", "--classes-per-client", "11"],
            "classes-per-client", tmp_path, capsys, no_launch, "exceeds the 10 classes of digits; use 1 to 10")


def test_more_clients_than_training_examples_is_refused(tmp_path, capsys, no_launch):
    refused(["--dataset", "digits", "--num-clients", "2000"], "num-clients", tmp_path, capsys, no_launch,
            "2000 exceeds the 1,437 training examples of digits; use at most 1,437")


def test_min_partition_size_the_dataset_cannot_fill_is_refused(tmp_path, capsys, no_launch):
    refused(["--dataset", "digits", "--num-clients", "100", "--min-partition-size", "20"], "min-partition-size",
            tmp_path, capsys, no_launch, "use at most 14 for 100 clients")


def test_dirichlet_draws_that_never_meet_min_partition_size_are_refused(tmp_path, capsys, no_launch):
    # 100 x 10 <= 1,437, but ten seeded draws never give every client 10 examples: the clients would fail.
    refused(["--dataset", "digits", "--num-clients", "100"], "min-partition-size", tmp_path, capsys, no_launch,
            "raise --alpha")


def test_a_client_left_without_examples_is_named(tmp_path, capsys, no_launch):
    line = refused(["--dataset", "digits", "--num-clients", "1000", "--min-partition-size", "0", "--alpha", "0.05"],
                   "min-partition-size", tmp_path, capsys, no_launch, "would get no training examples")
    assert "client " in line and "seed 0" in line


def test_pathological_partition_the_classes_cannot_fill_is_refused(tmp_path, capsys, no_launch):
    refused(["--dataset", "digits", "--partition", "pathological", "--num-clients", "1000",
             "--classes-per-client", "10"], "num-clients", tmp_path, capsys, no_launch, "more clients than it has")


def test_feasible_partition_reaches_the_launcher(tmp_path, capsys, no_launch):
    code = main(["simulate", "--dataset", "digits", "--num-clients", "20", "--clients-per-round", "5",
                 "--out", str(tmp_path / "o")])
    assert code == 1 and len(no_launch) == 1  # the stand-in launcher's SimulationError


def test_cpus_per_client_above_this_machine_is_refused(tmp_path, capsys, no_launch, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    refused(["--dataset", "digits", "--cpus-per-client", "3"], "cpus-per-client", tmp_path, capsys, no_launch,
            "exceeds this machine's 2 CPUs")
    refused(["--dataset", "digits", "--cpus-per-client", "3", "--ray-address", "local"], "cpus-per-client",
            tmp_path, capsys, no_launch)


def test_cpus_per_client_is_not_capped_on_a_cluster(tmp_path, no_launch, monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    code = main(["simulate", "--dataset", "digits", "--partition", "iid", "--num-clients", "10", "--cpus-per-client",
                 "8", "--ray-address", "10.0.0.5:6379", "--out", str(tmp_path / "o")])
    assert code == 1 and no_launch == [{"num_cpus_per_client": 8, "num_gpus_per_client": 0.0,
                                        "ray_address": "10.0.0.5:6379", "progress": no_launch[0]["progress"]}]


@pytest.mark.skipif(torch.cuda.is_available(), reason="asserts what a host without a GPU answers")
def test_gpu_options_on_a_host_without_a_gpu_stop_with_one_line(tmp_path, capsys, no_launch):
    refused(["--dataset", "digits", "--gpus-per-client", "0.5"], "gpus-per-client", tmp_path, capsys, no_launch,
            "no CUDA GPU on this machine")
    refused(["--dataset", "digits", "--device", "cuda"], "device", tmp_path, capsys, no_launch, "no CUDA GPU")


def test_gpu_options_that_make_no_sense_anywhere_are_refused(tmp_path, capsys, no_launch):
    refused(["--dataset", "digits", "--gpus-per-client", "-1"], "gpus-per-client", tmp_path, capsys, no_launch)
    refused(["--dataset", "digits", "--device", "tpu"], "device", tmp_path, capsys, no_launch)
    refused(["--dataset", "digits", "--mask-granularity", "tile64"], "mask-granularity", tmp_path, capsys, no_launch)
    refused(["--dataset", "digits", "--strategy", "fedtiny", "--density", "0.3", "--mask-granularity", "tile32",
             "--model", "digits-cnn-bn", "--candidates", "1"], "mask-granularity", tmp_path, capsys, no_launch,
            "fedtiny keeps single weights")


def test_gpus_per_client_reaches_the_launcher_for_a_cluster(tmp_path, no_launch):
    code = main(["simulate", "--dataset", "digits", "--partition", "iid", "--num-clients", "10", "--gpus-per-client",
                 "0.25", "--device", "auto", "--mask-granularity", "tile32", "--strategy", "static-synflow",
                 "--density", "0.1", "--ray-address", "10.0.0.5:6379", "--out", str(tmp_path / "o")])
    assert code == 1 and no_launch[0]["num_gpus_per_client"] == 0.25


@pytest.mark.parametrize("address", ["foo", "127.0.0.1", "127.0.0.1:0", "127.0.0.1:65536", ":6379", "::1:6379",
                                     "ray://127.0.0.1:10001", "host:port", "127.0.0.1:6379 ", "a b:6379"])
def test_malformed_ray_address_is_refused(address, tmp_path, capsys, no_launch):
    refused(["--dataset", "digits", "--ray-address", address], "ray-address", tmp_path, capsys, no_launch,
            "is not HOST:PORT with a port in 1-65535")


@pytest.mark.parametrize("address", ["auto", "local", "127.0.0.1:6379", "[::1]:6379", "ray-head.cluster:1"])
def test_well_formed_ray_addresses_pass(address):
    from fedprune.run_options import check_ray_options

    check_ray_options(address, 1)


@pytest.mark.parametrize("model", ["digits-cnn", "resnet18"])
def test_density_below_one_weight_per_layer_is_refused(model, tmp_path, capsys, no_launch):
    facts = model_facts(model, "digits")
    line = refused(["--dataset", "digits", "--model", model, "--strategy", "hidenseek", "--density", "1e-9"],
                   "density", tmp_path, capsys, no_launch, f"fewer than its {facts.prunable_layers} prunable layers")
    minimum = float(line.split("use at least ")[1].split()[0])
    RunSettings(dataset="digits", model=model, strategy="hidenseek", density=minimum).validate(check_out_dir=False)


def test_model_facts_count_what_the_strategies_prune():
    from fedprune.models import build_model, prunable_names

    model = build_model("digits-cnn", (1, 8, 8), 10)
    params = dict(model.named_parameters())
    facts = model_facts("digits-cnn", "digits")
    assert facts.prunable_layers == len(prunable_names(model))
    assert facts.prunable_weights == sum(params[n].numel() for n in prunable_names(model))


def test_model_that_cannot_take_the_datasets_inputs_is_refused(tmp_path, capsys, no_launch):
    refused(["--dataset", "digits", "--model", "vgg11-bn"], "model", tmp_path, capsys, no_launch,
            "cannot take the 1x8x8 inputs of digits; use one of: ")


def test_empty_out_is_refused(tmp_path, capsys, no_launch, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused(["--dataset", "digits", "--out", ""], "out", tmp_path, capsys, no_launch, "names no directory")
    assert list(tmp_path.iterdir()) == []


def test_dataset_path_with_digits_is_refused(tmp_path, capsys, no_launch):
    refused(["--dataset", "digits", "--dataset-path", str(tmp_path)], "dataset-path", tmp_path, capsys, no_launch,
            "digits ships with scikit-learn")


@pytest.mark.parametrize("option", ["rounds", "batch-size", "personal-eval-every", "adjust-until"])
def test_integers_beyond_64_bits_are_refused(option, tmp_path, capsys, no_launch):
    refused(["--dataset", "digits", f"--{option}", str(2**63)], option, tmp_path, capsys, no_launch, "64-bit")


def test_dataset_facts_match_what_the_loaders_return():
    from fedprune.data.sources import DATASET_FACTS, DATASETS, load_dataset

    assert set(DATASET_FACTS) == set(DATASETS)
    splits = load_dataset("digits")
    assert DATASET_FACTS["digits"].input_shape == splits.input_shape
    assert DATASET_FACTS["digits"].num_classes == splits.num_classes == len(np.unique(splits.train.y))


def test_partition_read_through_arrow_is_the_one_datasets_columns_give():
    """data.partition reads the row column through Arrow (fast); the partition is the one the plain
    datasets column read gives."""
    import warnings

    from datasets import Dataset
    from fedprune.data import load_dataset, partition_indices
    from fedprune.data.partition import _build_partitioner

    labels = load_dataset("digits").train.y
    for kind in ("dirichlet", "pathological"):
        fast = partition_indices(labels, kind, 12, alpha=0.5, classes_per_client=3, min_partition_size=5, seed=4)
        partitioner = _build_partitioner(kind, 12, 0.5, 3, 5, 4)
        partitioner.dataset = Dataset.from_dict({"label": labels, "row": np.arange(len(labels))})
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plain = [np.sort(np.asarray(partitioner.load_partition(i)["row"])) for i in range(12)]
        assert all(np.array_equal(a, b) for a, b in zip(fast, plain, strict=True))


def test_deploy_loopback_runs_the_same_partition_check(tmp_path, capsys, monkeypatch):
    from fedprune.deploy import cli as deploy_cli

    def refuse(*args, **kwargs):
        raise AssertionError("loopback started")

    monkeypatch.setattr(deploy_cli, "run_loopback", refuse)
    code = main(["deploy", "loopback", "--dataset", "digits", "--num-clients", "2000", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == EXIT_USAGE and len(err) == 1 and "--num-clients: 2000 exceeds" in err[0]
    assert not (tmp_path / "o").exists()
