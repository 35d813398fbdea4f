"""Shared fixtures: small run settings and an in-process federation."""

from __future__ import annotations

import pytest
from fedprune.server.run_config import RunSettings


@pytest.fixture
def digits_settings(tmp_path) -> RunSettings:
    """A fast federation: 8x8 digits, 10 IID clients, 4 per round."""
    return RunSettings(dataset="digits", model="digits-cnn", partition="iid", num_clients=10,
                       clients_per_round=4, rounds=2, lr=0.05, momentum=0.9, out=str(tmp_path / "run"))
