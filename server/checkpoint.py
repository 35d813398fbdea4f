"""Atomic per-round checkpoints: global arrays, strategy state, round number, results so far.

A checkpoint is read back with ``torch.load(weights_only=True)``: tensors, numbers, strings, lists,
tuples and dicts only, so a planted or corrupted file cannot run code on ``--resume``. Numpy arrays in
the strategy state are stored as tensors and come back as numpy arrays. Everything read is checked
before the run continues from it (``load_checkpoint``): the settings fingerprint, the round against the
run's rounds and the stored round entries, every global array against the model's names, shapes, dtypes
and finiteness. Any failure is one ``CheckpointError`` line saying what is wrong and where.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedprune.atomic_file import write_atomically

CHECKPOINT_NAME = "checkpoint.pt"
_NUMPY_TAG = "__numpy__"  # marks a strategy-state tensor that was a numpy array


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, inconsistent, or does not belong to this run."""


def _storable(value: Any) -> Any:
    """``value`` with numpy arrays as tagged tensors and numpy scalars as Python numbers (weights_only types)."""
    if isinstance(value, np.ndarray):
        return {_NUMPY_TAG: torch.from_numpy(np.ascontiguousarray(value).copy())}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {k: _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_storable(v) for v in value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"checkpoint state cannot hold {type(value).__name__}")


def _restored(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {_NUMPY_TAG} and isinstance(value[_NUMPY_TAG], torch.Tensor):
            return value[_NUMPY_TAG].numpy()
        return {k: _restored(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_restored(v) for v in value)
    return value


def save_checkpoint(out_dir: Path, *, server_round: int, arrays: ArrayRecord, strategy_state: dict[str, Any],
                    rounds: list[dict[str, Any]], fingerprint: dict[str, Any]) -> Path:
    """Write the checkpoint to a temp file and rename it over the old one (never half-written)."""
    path = out_dir / CHECKPOINT_NAME
    payload = {
        "round": server_round,
        "arrays": arrays.to_torch_state_dict(),
        "strategy_state": _storable(strategy_state),
        "rounds": _storable(rounds),
        "fingerprint": _storable(fingerprint),
    }
    return write_atomically(path, lambda tmp: torch.save(payload, tmp))


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint's parts as written (arrays as tensors, strategy state with numpy arrays back), read
    without running code; ``CheckpointError`` if it is unreadable or lacks a part. Not checked against a
    run: that is ``load_checkpoint``. For analysis scripts and tests too."""
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, TypeError, AttributeError,
            KeyError, IndexError, zipfile.BadZipFile) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"--resume: {path} is not a readable fedprune checkpoint (truncated, corrupt, or "
                              f"holding objects other than tensors and plain data): {first}") from None
    if not isinstance(payload, dict) or not {"round", "arrays", "strategy_state", "rounds", "fingerprint"} <= set(
            payload):
        raise CheckpointError(f"--resume: {path} lacks the parts of a fedprune checkpoint")
    if not isinstance(payload["strategy_state"], dict):
        raise CheckpointError(f"--resume: {path}: strategy state is not a mapping")
    payload["strategy_state"] = _restored(payload["strategy_state"])
    return payload


def load_checkpoint(out_dir: Path, fingerprint: dict[str, Any], *, model_state: Mapping[str, torch.Tensor],
                    total_rounds: int) -> dict[str, Any]:
    """Read and check the checkpoint in ``out_dir`` against this run (settings ``fingerprint``, the model's
    ``model_state`` for names/shapes/dtypes, ``total_rounds``); raise ``CheckpointError`` on anything wrong."""
    path = out_dir / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"--resume: no checkpoint at {path}")
    payload = read_checkpoint(path)
    theirs = payload["fingerprint"]
    if theirs != fingerprint:
        theirs = theirs if isinstance(theirs, dict) else {}
        diff = sorted(k for k in set(theirs) | set(fingerprint) if theirs.get(k) != fingerprint.get(k))
        raise CheckpointError(f"--resume: checkpoint at {path} was written with different settings: {diff}")
    _check_rounds(path, payload["round"], payload["rounds"], total_rounds)
    _check_arrays(path, payload["arrays"], model_state)
    payload["arrays"] = ArrayRecord(payload["arrays"])
    return payload


def _check_rounds(path: Path, server_round: Any, rounds: Any, total_rounds: int) -> None:
    if not isinstance(server_round, int) or isinstance(server_round, bool) or server_round < 1:
        raise CheckpointError(f"--resume: {path}: round {server_round!r} is not a positive round number")
    if server_round > total_rounds:
        raise CheckpointError(f"--resume: {path} holds {server_round} rounds, more than --rounds {total_rounds}; "
                              f"resume with --rounds {server_round} or more")
    if not isinstance(rounds, list) or len(rounds) != server_round or any(
            not isinstance(entry, dict) or entry.get("round") != i for i, entry in enumerate(rounds, start=1)):
        raise CheckpointError(f"--resume: {path}: its round entries are not rounds 1..{server_round}")


def _check_arrays(path: Path, arrays: Any, model_state: Mapping[str, torch.Tensor]) -> None:
    if not isinstance(arrays, dict) or set(arrays) != set(model_state):
        names = set(arrays) if isinstance(arrays, dict) else set()
        missing, extra = sorted(set(model_state) - names)[:3], sorted(names - set(model_state))[:3]
        raise CheckpointError(f"--resume: {path}: global arrays do not match the model (missing {missing}, "
                              f"unexpected {extra})")
    for name, like in model_state.items():
        value = arrays[name]
        if not isinstance(value, torch.Tensor) or value.shape != like.shape or value.dtype != like.dtype:
            got = f"{value.dtype}{tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
            raise CheckpointError(f"--resume: {path}: '{name}' is {got}, the model has "
                                  f"{like.dtype}{tuple(like.shape)}")
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise CheckpointError(f"--resume: {path}: '{name}' holds NaN or Inf")
