"""Atomic per-round checkpoints: global arrays, strategy state, round number, results so far."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from flwr.app import ArrayRecord

CHECKPOINT_NAME = "checkpoint.pt"


class CheckpointError(RuntimeError):
    """A checkpoint is missing or does not belong to this run."""


def save_checkpoint(out_dir: Path, *, server_round: int, arrays: ArrayRecord, strategy_state: dict[str, Any],
                    rounds: list[dict[str, Any]], fingerprint: dict[str, Any]) -> Path:
    """Write the checkpoint to a temp file and rename it over the old one (never half-written)."""
    path = out_dir / CHECKPOINT_NAME
    payload = {
        "round": server_round,
        "arrays": arrays.to_torch_state_dict(),
        "strategy_state": strategy_state,
        "rounds": rounds,
        "fingerprint": fingerprint,
    }
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".checkpoint-", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(out_dir: Path, fingerprint: dict[str, Any]) -> dict[str, Any]:
    """Read the checkpoint in ``out_dir``; refuse one written by a run with other settings."""
    path = out_dir / CHECKPOINT_NAME
    if not path.is_file():
        raise CheckpointError(f"--resume: no checkpoint at {path}")
    payload = torch.load(path, weights_only=False)
    if payload.get("fingerprint") != fingerprint:
        theirs = payload.get("fingerprint", {})
        diff = sorted(k for k in set(theirs) | set(fingerprint) if theirs.get(k) != fingerprint.get(k))
        raise CheckpointError(f"--resume: checkpoint at {path} was written with different settings: {diff}")
    payload["arrays"] = ArrayRecord(payload["arrays"])
    return payload
