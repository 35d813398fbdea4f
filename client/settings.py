"""The run-config options a client uses, read from ``Context.run_config`` and checked on the node.

The server validates every option of a run (``server.run_config.RunSettings``) before it starts; a client
reads only the options it trains and evaluates with, with the same defaults and the same rules, so a value
the node could not use (a negative learning rate, an unknown dataset) is refused here too, whoever sent it.
Keeping this apart from the server's settings lets ``client/`` import nothing from ``server/``.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass
from typing import Any

from fedprune.client.local_loss import LOCAL_LOSSES
from fedprune.client.score_optimizer import SCORE_OPTIMIZERS
from fedprune.data import DATASETS, PARTITIONERS
from fedprune.data.sources import DATASET_FACTS
from fedprune.models import MODELS
from fedprune.models.device import DEVICES
from fedprune.protos.contract import HIDENSEEK_STRATEGY, STRATEGY_NAMES
from fedprune.protos.option_rules import FLOAT_RANGES, SEED_MAX, OptionError, check_choice, check_numbers, coerce_option
from fedprune.pruning.budgets import parse_budget_tiers

__all__ = ["FLOAT_RANGES", "ClientConfigError", "ClientSettings", "client_settings"]

POSITIVE_INTS = ("num_clients", "local_epochs", "batch_size", "eval_batch_size", "classes_per_client")


class ClientConfigError(OptionError):
    """A run-config option has a value this client cannot train with; ``option`` names it."""


@dataclass(frozen=True)
class ClientSettings:
    """The options a client reads from the run config; field names are the run-config keys with ``-`` for
    ``_``, defaults those of the server's ``RunSettings``."""

    strategy: str = "fedavg"
    dataset: str = "fashion-mnist"
    dataset_path: str = ""
    model: str = "fl-cnn"
    partition: str = "dirichlet"
    alpha: float = 0.5
    classes_per_client: int = 2
    min_partition_size: int = 10
    local_test_fraction: float = 0.2
    num_clients: int = 100
    local_epochs: int = 1
    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 32
    seed: int = 0
    score_lr: float = 0.03
    score_optimizer: str = "layer-sgd"
    score_momentum: float = 0.9
    local_loss: str = "auto"
    moved_share: float = 0.15
    budget_tiers: str = ""
    eval_batch_size: int = 1000
    device: str = "auto"

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> ClientSettings:
        """The client's options from a Flower run config (``dataset-path`` style keys; others ignored),
        type-checked and validated."""
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        typed = {}
        for key, value in run_config.items():
            name = key.replace("-", "_")
            if name in fields:
                typed[name] = coerce_option(key.replace("_", "-"), fields[name], value, ClientConfigError)
        settings = cls(**typed)
        settings.validate()
        return settings

    def resolved_local_loss(self) -> str:
        """The local loss this client trains with: ``auto`` is logit-adjusted for HideNseek (its sign scores
        swing with the sampled clients' label skew otherwise) and plain cross-entropy for the rest."""
        if self.local_loss != "auto":
            return self.local_loss
        return "logit-adjusted" if self.strategy == HIDENSEEK_STRATEGY else "cross-entropy"

    def validate(self) -> None:
        """Raise ``ClientConfigError`` naming the first option with a value the server would refuse too."""
        for option, value, choices in (("strategy", self.strategy, STRATEGY_NAMES),
                                       ("dataset", self.dataset, DATASETS), ("model", self.model, MODELS),
                                       ("partition", self.partition, PARTITIONERS),
                                       ("score-optimizer", self.score_optimizer, SCORE_OPTIMIZERS),
                                       ("local-loss", self.local_loss, ("auto", *LOCAL_LOSSES)),
                                       ("device", self.device, DEVICES)):
            check_choice(option, value, choices, ClientConfigError)
        self._validate_numbers()
        facts = DATASET_FACTS[self.dataset]
        if self.classes_per_client > facts.num_classes:
            raise ClientConfigError("classes-per-client", f"{self.classes_per_client} exceeds the "
                                                          f"{facts.num_classes} classes of {self.dataset}")
        if self.dataset_path and not facts.reads_files:
            raise ClientConfigError("dataset-path", f"{self.dataset} reads no files")
        try:
            parse_budget_tiers(self.budget_tiers)
        except ValueError as exc:
            raise ClientConfigError("budget-tiers", str(exc)) from None

    def _validate_numbers(self) -> None:
        """Floats finite and in range (NaN passes any ``x <= 0`` test, so finiteness first), integers within
        64 bits, counts positive, the seed within numpy's range."""
        check_numbers(self, ClientConfigError, name_non_finite=False)
        for name in POSITIVE_INTS:
            if getattr(self, name) < 1:
                raise ClientConfigError(name.replace("_", "-"), f"{getattr(self, name)} must be a positive integer")
        if self.min_partition_size < 0:
            raise ClientConfigError("min-partition-size", f"{self.min_partition_size} must be >= 0")
        if not 0 <= self.seed <= SEED_MAX:
            raise ClientConfigError("seed", f"{self.seed} is outside [0, {SEED_MAX}]")


@functools.lru_cache(maxsize=8)
def _cached(items: tuple) -> ClientSettings:
    return ClientSettings.from_run_config(dict(items))


def client_settings(run_config: dict[str, Any]) -> ClientSettings:
    """``ClientSettings.from_run_config`` cached per process (once per run, not per message)."""
    return _cached(tuple(sorted(run_config.items())))
