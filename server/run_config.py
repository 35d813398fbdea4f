"""Run settings: every option of a run, validated once before anything starts.

The same validation serves the ``fedprune`` CLI (exit code 2 on a bad value)
and the ServerApp (which refuses to start a run with a bad value).
"""

from __future__ import annotations

import dataclasses
import functools
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """An option has a value fedprune cannot run with; ``option`` names it."""

    def __init__(self, option: str, message: str) -> None:
        super().__init__(f"--{option}: {message}")
        self.option = option


@dataclass(frozen=True)
class RunSettings:
    """All options of one run; field names are the run-config keys with ``-`` for ``_``."""

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
    clients_per_round: int = 10
    min_train_nodes: int = 1
    rounds: int = 30
    local_epochs: int = 1
    lr: float = 0.05
    momentum: float = 0.9
    batch_size: int = 32
    seed: int = 0
    density: float = 1.0
    score: str = "synflow"
    aggregation: str = "ternary-delta"
    dense_params: str = "averaged"
    mask_transfer: str = "send"
    score_lr: float = 0.03
    score_optimizer: str = "layer-sgd"
    score_momentum: float = 0.9
    local_loss: str = "auto"
    server_lr: float = 1.0
    server_momentum: float = 0.0
    moved_share: float = 0.15
    personal_eval_every: int = 5
    candidates: int = 5
    candidate_spread: float = 0.5
    candidate_ranking: str = "magnitude"
    adjust_every: int = 3
    adjust_until: int = 24
    adjust_alpha: float = 0.05
    adjust_layers: str = "output-first"
    gradient_tap: str = "auto"
    budget_tiers: str = ""
    out: str = "runs/latest"
    resume: bool = False
    eval_batch_size: int = 1000
    round_timeout: float = 3600.0
    extra: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any], check_out_dir: bool = True) -> RunSettings:
        """Build from a Flower run config (``dataset-path`` style keys), then validate."""
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known, extra = {}, {}
        for key, value in run_config.items():
            name = key.replace("-", "_")
            (known if name in names else extra)[name] = value
        typed = {}
        for f in dataclasses.fields(cls):
            if f.name in known:
                typed[f.name] = _coerce(f.name, f.type, known[f.name])
        settings = cls(**typed, extra=tuple(sorted(extra.items())))
        settings.validate(check_out_dir=check_out_dir)
        return settings

    def to_run_config(self) -> dict[str, Any]:
        """The Flower run-config form (hyphenated keys), ``extra`` included."""
        out = {f.name.replace("_", "-"): getattr(self, f.name)
               for f in dataclasses.fields(self) if f.name != "extra"}
        out.update({k.replace("_", "-"): v for k, v in self.extra})
        return out

    def option(self, name: str, default: Any = None) -> Any:
        """A strategy-specific run-config value not declared as a field (``extra``)."""
        return dict(self.extra).get(name.replace("-", "_"), default)

    def resolved_local_loss(self) -> str:
        """The local loss clients train with: ``auto`` is logit-adjusted for HideNseek (its sign scores
        swing with the sampled clients' label skew otherwise) and plain cross-entropy for the rest."""
        if self.local_loss != "auto":
            return self.local_loss
        return "logit-adjusted" if self.strategy == "hidenseek" else "cross-entropy"

    def validate(self, check_out_dir: bool = True) -> None:
        """Raise ``ConfigError`` naming the first option with a bad value."""
        from data import DATASETS, PARTITIONERS
        from models import MODELS
        from strategies import STRATEGIES

        def allowed(option: str, value: str, choices) -> None:
            if value not in choices:
                raise ConfigError(option, f"'{value}' is not one of: {', '.join(sorted(choices))}")

        allowed("strategy", self.strategy, STRATEGIES)
        allowed("dataset", self.dataset, DATASETS)
        allowed("model", self.model, MODELS)
        allowed("partition", self.partition, PARTITIONERS)
        if not 0.0 < self.density <= 1.0:
            raise ConfigError("density", f"{self.density} is outside (0, 1]")
        if self.alpha <= 0:
            raise ConfigError("alpha", f"{self.alpha} must be > 0")
        for option, value in (("num-clients", self.num_clients), ("clients-per-round", self.clients_per_round),
                              ("rounds", self.rounds), ("local-epochs", self.local_epochs),
                              ("batch-size", self.batch_size), ("eval-batch-size", self.eval_batch_size),
                              ("classes-per-client", self.classes_per_client)):
            if value < 1:
                raise ConfigError(option, f"{value} must be a positive integer")
        if self.clients_per_round > self.num_clients:
            raise ConfigError("clients-per-round",
                              f"{self.clients_per_round} exceeds --num-clients {self.num_clients}")
        if not 1 <= self.min_train_nodes <= self.clients_per_round:
            raise ConfigError("min-train-nodes", f"{self.min_train_nodes} must be in [1, clients-per-round]")
        if self.lr <= 0:
            raise ConfigError("lr", f"{self.lr} must be > 0")
        if not 0 <= self.momentum < 1:
            raise ConfigError("momentum", f"{self.momentum} must be in [0, 1)")
        if not 0 <= self.local_test_fraction < 1:
            raise ConfigError("local-test-fraction", f"{self.local_test_fraction} must be in [0, 1)")
        if self.min_partition_size < 0:
            raise ConfigError("min-partition-size", "must be >= 0")
        if self.round_timeout <= 0:
            raise ConfigError("round-timeout", "must be > 0")
        from strategies.hidenseek import AGGREGATIONS, DENSE_PARAMS, MASK_TRANSFER
        from strategies.scores import SCORES

        allowed("score", self.score, SCORES)
        allowed("aggregation", self.aggregation, AGGREGATIONS)
        allowed("dense-params", self.dense_params, DENSE_PARAMS)
        allowed("mask-transfer", self.mask_transfer, MASK_TRANSFER)
        if self.score_lr <= 0:
            raise ConfigError("score-lr", f"{self.score_lr} must be > 0")
        from client.local_loss import LOCAL_LOSSES
        from client.score_optimizer import SCORE_OPTIMIZERS

        allowed("score-optimizer", self.score_optimizer, SCORE_OPTIMIZERS)
        allowed("local-loss", self.local_loss, ("auto", *LOCAL_LOSSES))
        if not 0 <= self.score_momentum < 1:
            raise ConfigError("score-momentum", f"{self.score_momentum} must be in [0, 1)")
        if self.aggregation == "tally" and self.score_optimizer != "adam":
            raise ConfigError("score-optimizer", "aggregation 'tally' bounds a round's score movement by Adam's "
                                                 "(~lr per step); use --score-optimizer adam with it")
        if self.server_lr <= 0:
            raise ConfigError("server-lr", f"{self.server_lr} must be > 0")
        if not 0 <= self.server_momentum < 1:
            raise ConfigError("server-momentum", f"{self.server_momentum} must be in [0, 1)")
        if not 0 < self.moved_share <= 1:
            raise ConfigError("moved-share", f"{self.moved_share} must be in (0, 1]")
        if self.personal_eval_every < 0:
            raise ConfigError("personal-eval-every", "must be >= 0 (0 = never)")
        self._validate_fedtiny()
        if self.strategy in ("fedavg", "flwr-fedavg") and self.density != 1.0:
            raise ConfigError("density", f"strategy '{self.strategy}' is dense; density must be 1.0")
        if check_out_dir:
            check_writable_dir(self.out)


    def _validate_fedtiny(self) -> None:
        from models import BATCHNORM_MODELS
        from strategies.budgets import parse_budget_tiers
        from strategies.candidates import RANKINGS
        from strategies.progressive import GRADIENT_TAPS, LAYER_ORDERS

        if self.candidates < 1:
            raise ConfigError("candidates", f"{self.candidates} must be >= 1 (1 = no BN selection)")
        if self.candidate_spread < 0:
            raise ConfigError("candidate-spread", f"{self.candidate_spread} must be >= 0")
        if self.candidate_ranking not in RANKINGS:
            raise ConfigError("candidate-ranking", f"'{self.candidate_ranking}' is not one of: {', '.join(RANKINGS)}")
        if self.adjust_every < 0:
            raise ConfigError("adjust-every", f"{self.adjust_every} must be >= 0 (0 = no progressive pruning)")
        if self.adjust_until < 0:
            raise ConfigError("adjust-until", f"{self.adjust_until} must be >= 0")
        if not 0 < self.adjust_alpha <= 1:
            raise ConfigError("adjust-alpha", f"{self.adjust_alpha} is outside (0, 1]")
        if self.adjust_layers not in LAYER_ORDERS:
            raise ConfigError("adjust-layers", f"'{self.adjust_layers}' is not one of: {', '.join(LAYER_ORDERS)}")
        if self.gradient_tap not in GRADIENT_TAPS:
            raise ConfigError("gradient-tap", f"'{self.gradient_tap}' is not one of: {', '.join(GRADIENT_TAPS)}")
        try:
            parse_budget_tiers(self.budget_tiers)
        except ValueError as exc:
            raise ConfigError("budget-tiers", str(exc)) from None
        if self.strategy == "fedtiny" and self.candidates > 1 and self.model not in BATCHNORM_MODELS:
            raise ConfigError("model", f"FedTiny's BN selection needs BatchNorm; '{self.model}' has none (use one of "
                                       f"{', '.join(sorted(BATCHNORM_MODELS))}, or --candidates 1)")


@functools.lru_cache(maxsize=8)
def _settings_cached(items: tuple) -> RunSettings:
    return RunSettings.from_run_config(dict(items), check_out_dir=False)


def settings_from_run_config(run_config: dict[str, Any]) -> RunSettings:
    """``RunSettings.from_run_config`` cached per process (client side: once, not per message).

    Clients never write ``out``, so its writability is not checked here.
    """
    return _settings_cached(tuple(sorted((k, v) for k, v in run_config.items() )))


def check_writable_dir(path: str) -> None:
    """Raise ``ConfigError('out', ...)`` unless ``path`` is (or can be made) a writable directory."""
    target = Path(path).expanduser().resolve()
    probe = target
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError("out", f"{probe} exists and is not a directory")
    try:  # os.access says yes to root everywhere; creating a file is the real test
        tempfile.NamedTemporaryFile(dir=probe, prefix=".fedprune-probe-").close()  # deleted on close
    except OSError as exc:
        raise ConfigError("out", f"cannot write into {probe}: {exc.strerror}") from None


def _coerce(name: str, annotation: Any, value: Any) -> Any:
    kind = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    try:
        if kind == "bool":
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(value)
                return value.lower() in ("true", "1")
            return bool(value)
        if kind == "int":
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "str":
            return str(value)
    except (TypeError, ValueError):
        raise ConfigError(name.replace("_", "-"), f"{value!r} is not a valid {kind}") from None
    return value
