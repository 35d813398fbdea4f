"""Option validation: one clear line, exit code 2, nothing written."""

import subprocess
import sys

import pytest

from fedprune.cli import main


@pytest.mark.parametrize("args,needle", [
    (["--strategy", "fedsgd"], "--strategy: 'fedsgd' is not one of: fedavg"),
    (["--dataset", "mnist"], "--dataset: 'mnist' is not one of"),
    (["--model", "alexnet"], "--model: 'alexnet' is not one of"),
    (["--partition", "zipf"], "--partition: 'zipf' is not one of"),
    (["--density", "0"], "--density: 0.0 must be in (0, 1]"),
    (["--density", "1.5"], "--density: 1.5 must be in (0, 1]"),
    (["--clients-per-round", "11", "--num-clients", "10"], "--clients-per-round: 11 exceeds --num-clients 10"),
    (["--rounds", "0"], "--rounds: 0 must be a positive integer"),
    (["--rounds", "-3"], "--rounds: -3 must be a positive integer"),
    (["--out", "/proc/fedprune"], "--out: cannot write into /proc"),
    (["--resume"], "--resume: no checkpoint"),
    (["--aggregation", "median"], "--aggregation: 'median' is not one of"),
    (["--server-momentum", "1"], "--server-momentum: 1.0 must be in [0, 1)"),
    (["--moved-share", "0"], "--moved-share: 0.0 must be in (0, 1]"),
    (["--score-optimizer", "sgd"], "--score-optimizer: 'sgd' is not one of: adam, layer-sgd"),
    (["--local-loss", "focal"], "--local-loss: 'focal' is not one of"),
    (["--strategy", "hidenseek", "--density", "0.1", "--aggregation", "tally"], "--score-optimizer: aggregation"),
])
def test_bad_option_exits_2_with_one_line(args, needle, tmp_path, capsys):
    out = ["--out", str(tmp_path / "o")] if "--out" not in args else []
    assert main(["simulate", *args, *out]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert not (tmp_path / "o").exists()


def test_missing_dataset_names_the_install_command(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("FEDPRUNE_FASHION_MNIST_DIR", str(tmp_path / "none"))
    from fedprune.data import load_dataset

    load_dataset.cache_clear()
    try:
        assert main(["simulate", "--out", str(tmp_path / "o")]) == 2
    finally:
        load_dataset.cache_clear()
    assert "apt-get install -y dataset-fashion-mnist" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # starts the command in a new Python process
def test_console_script_exit_code():
    result = subprocess.run([sys.executable, "-m", "fedprune.cli", "simulate", "--density", "2"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "--density" in result.stderr


def test_flower_app_config_declares_every_run_setting_with_its_default():
    """Flower refuses a run config key the app's pyproject does not declare ("Invalid run configuration")."""
    import tomllib
    from pathlib import Path

    from fedprune.server.run_config import RunSettings

    declared = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    declared = declared["tool"]["flwr"]["app"]["config"]
    defaults = RunSettings().to_run_config()
    assert set(declared) == set(defaults)
    for key, value in defaults.items():
        assert declared[key] == value, key
