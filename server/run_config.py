"""Run settings: every option of a run, validated once before anything starts.

The same validation serves the ``fedprune`` CLI (exit code 2 on a bad value)
and the ServerApp (which refuses to start a run with a bad value). The value rules it shares with the
clients live in ``protos.option_rules``; what it needs to know of a model, in ``server.model_facts``.
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedprune.client.local_loss import LOCAL_LOSSES
from fedprune.client.score_optimizer import SCORE_OPTIMIZERS
from fedprune.data import DATASETS, PARTITIONERS
from fedprune.data.sources import DATASET_FACTS
from fedprune.models import BATCHNORM_MODELS, MODELS
from fedprune.models.device import DeviceError, resolve_device
from fedprune.protos.contract import AGGREGATIONS, DENSE_PARAMS, MASK_TRANSFER, SCORE_DOWNLINK, STRATEGY_NAMES
from fedprune.protos.option_rules import FLOAT_RANGES, SEED_MAX, OptionError, check_choice, check_numbers, coerce_option
from fedprune.pruning.budgets import parse_budget_tiers
from fedprune.pruning.candidates import RANKINGS
from fedprune.pruning.progressive import GRADIENT_TAPS, LAYER_ORDERS
from fedprune.pruning.score_levels import GRIDS
from fedprune.pruning.scores import SCORES
from fedprune.pruning.tile_masks import MASK_GRANULARITIES
from fedprune.server.model_facts import input_error, model_facts, smallest_density

__all__ = ["FLOAT_RANGES", "ConfigError", "RunSettings", "check_model_takes_inputs", "check_writable_dir",
           "model_facts", "option"]


class ConfigError(OptionError):
    """An option has a value fedprune cannot run with; ``option`` names it."""


def option(default: Any, help: str) -> Any:  # noqa: A002 - argparse's word for it
    """A run option: its default and its help text, declared once (the CLI and the app config derive from it)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class RunSettings:
    """All options of one run; field names are the run-config keys with ``-`` for ``_``."""

    strategy: str = option("fedavg",
                           "fedavg | flwr-fedavg | hidenseek | fedtiny | static-synflow | static-magnitude | "
                           "static-random")
    dataset: str = option("fashion-mnist", "fashion-mnist | digits | cifar10")
    dataset_path: str = option("", "dataset directory (default: the dataset's standard place)")
    model: str = option("fl-cnn", "architecture (default: the dataset's usual model)")
    partition: str = option("dirichlet", "iid | dirichlet | pathological")
    alpha: float = option(0.5, "Dirichlet concentration")
    classes_per_client: int = option(2, "classes per client for the pathological partition")
    min_partition_size: int = option(10, "smallest partition the Dirichlet partitioner may produce")
    local_test_fraction: float = option(0.2, "share of each client's data held out for personalized evaluation")
    num_clients: int = option(100, "simulated clients (SuperNodes), one data partition each")
    clients_per_round: int = option(10, "clients sampled for training each round (seeded)")
    min_train_nodes: int = option(1, "valid replies a round needs to update the model")
    rounds: int = option(30, "federated rounds")
    local_epochs: int = option(1, "local epochs per training round on each client")
    lr: float = option(0.05, "client SGD learning rate")
    momentum: float = option(0.9, "client SGD momentum")
    batch_size: int = option(32, "client batch size")
    seed: int = option(0, "seeds the model, the masks, the partition and the sampling (0..2^32-1)")
    density: float = option(1.0, "kept fraction of prunable weights")
    score: str = option("synflow", "hidenseek mask score: synflow | magnitude | random")
    mask_granularity: str = option("weight",
                                   "static-* and hidenseek masks: weight (single weights) | tile32 (whole 32×32 tiles "
                                   "of each layer's GEMM view, what the GPU block-sparse kernel skips; density exact "
                                   "in tiles)")
    device: str = option("auto",
                         "where clients train and the server evaluates and scores: auto (CUDA when this host has "
                         "it) | cpu | cuda (a node's own device node config wins)")
    aggregation: str = option("ternary-delta",
                              "hidenseek: ternary-delta (score change as stochastic ternary values, global scores "
                              "downlink) | tally (1 bit/weight, confidence kept on the server) | vote | score-average")
    dense_params: str = option("averaged", "hidenseek biases/BatchNorm: averaged | personal")
    mask_transfer: str = option("recompute",
                                "hidenseek: recompute (clients rebuild the mask from θ0, digest checked; a node whose "
                                "rebuild differs is sent it) | send (coded mask to every new node)")
    score_lr: float = option(0.03,
                             "hidenseek client step size on scores (relative to each layer's |θ0| for layer-sgd; "
                             "absolute for adam, e.g. 0.001)")
    score_optimizer: str = option("layer-sgd",
                                  "hidenseek client optimizer on scores: layer-sgd (RMS-normalized per layer) | adam")
    score_momentum: float = option(0.9, "hidenseek layer-sgd momentum")
    local_loss: str = option("auto",
                             "client loss: cross-entropy | logit-adjusted (by the client's label prior) | auto "
                             "(logit-adjusted for hidenseek, cross-entropy otherwise)")
    server_lr: float = option(1.0, "hidenseek: server step size on the clients' mean score change")
    server_momentum: float = option(0.0,
                                    "hidenseek score-average/ternary-delta: server heavy-ball momentum on score "
                                    "changes")
    moved_share: float = option(0.15,
                                "hidenseek ternary-delta: at most this share of scores moves per client-round (fewer "
                                "bits, more variance)")
    score_step: float = option(0.25,
                               "hidenseek ternary-delta/score-average: global scores travel down as integer levels "
                               "on a grid of this many RMS|θ0| per layer (--score-grid), entropy-coded, biases as "
                               "float16 (0 = float32 scores and biases; ignored by vote and tally)")
    score_grid: str = option("sqrt",
                             "hidenseek --score-step: uniform (bins of the step) | sqrt (bins [k², (k+1)²) × step: "
                             "as fine at zero, coarser far from it)")
    personal_eval_every: int = option(5, "hidenseek: rounds between personalized evaluations (0 = never)")
    candidates: int = option(5, "fedtiny: candidate masks for adaptive BN selection (1 = no BN selection)")
    bn_selection_z: float = option(2.0,
                                   "fedtiny: install a candidate other than 0 only if its validation loss beats "
                                   "candidate 0's by more than Z standard errors (paired over clients); 0 = the "
                                   "lowest loss wins")
    candidate_spread: float = option(0.5,
                                     "fedtiny: spread (std of a normal shift in logit space) of candidates' layer-wise "
                                     "densities")
    candidate_ranking: str = option("block-magnitude",
                                    "fedtiny: which weights a candidate keeps within a layer once --score set the "
                                    "layer's count: block-magnitude (largest |θ0| inside the channels the score "
                                    "keeps: costs clients no more FLOPs than the score's mask) | magnitude (largest "
                                    "|θ0| anywhere in the layer) | score (the score's own choice)")
    adjust_every: int = option(0,
                               "fedtiny: progressive pruning: every ΔT-th round also reports top-K pairs and adjusts "
                               "the mask after it (0 = off, the default: it cost accuracy at 30 and 100 rounds, "
                               "BENCHMARKS.md)")
    adjust_until: int = option(24, "fedtiny: last round whose training reports top-K pairs for an adjustment, T_end")
    adjust_alpha: float = option(0.05, "fedtiny: α in K_t = α/2·(1+cos(πt/T_end)) × the layer's active count")
    adjust_layers: str = option("output-first", "fedtiny: output-first (one layer per adjustment, output→input) | all")
    gradient_tap: str = option("auto",
                               "fedtiny: how an adjusting client forms pruned-position gradients: dense (exact, one "
                               "accumulator the size of the layer) | buffered (running sums at 8·K positions, a few "
                               "rows at a time) | auto (dense where the node's budget holds it, else buffered)")
    budget_tiers: str = option("",
                               "fedtiny simulation: client budgets 'MB:FLOPS,...' assigned round-robin by partition (a "
                               "node's memory-budget-mb / flops-budget node config wins)")
    out: str = option("runs/latest", "directory for results.json, report.png, checkpoint")
    resume: bool = option(False, "continue from the checkpoint in --out")
    eval_batch_size: int = option(1000, "batch size of the server's central evaluation")
    round_timeout: float = option(3600.0, "seconds a round waits for replies before going on with what arrived")
    max_failed_rounds: int = option(3,
                                    "stop the run as failed after this many rounds in a row without enough valid "
                                    "replies to update the model (0 = never stop)")
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
                typed[f.name] = coerce_option(f.name.replace("_", "-"), f.type, known[f.name], ConfigError)
        settings = cls(**typed, extra=tuple(sorted(extra.items())))
        settings.validate(check_out_dir=check_out_dir)
        return settings

    def to_run_config(self) -> dict[str, Any]:
        """The Flower run-config form (hyphenated keys), ``extra`` included."""
        out = {f.name.replace("_", "-"): getattr(self, f.name)
               for f in dataclasses.fields(self) if f.name != "extra"}
        out.update({k.replace("_", "-"): v for k, v in self.extra})
        return out

    def resolved_local_loss(self) -> str:
        """The local loss clients train with: ``auto`` is logit-adjusted for HideNseek (its sign scores
        swing with the sampled clients' label skew otherwise) and plain cross-entropy for the rest."""
        if self.local_loss != "auto":
            return self.local_loss
        return "logit-adjusted" if self.strategy == "hidenseek" else "cross-entropy"

    def resolved_score_step(self) -> float:
        """The grid step HideNseek's global scores travel on: ``score_step`` for aggregations that send them
        down (``SCORE_DOWNLINK``), 0 for the rest (vote and tally send σ only)."""
        return self.score_step if self.aggregation in SCORE_DOWNLINK else 0.0

    def validate(self, check_out_dir: bool = True) -> None:
        """Raise ``ConfigError`` naming the first option with a bad value."""

        def allowed(option: str, value: str, choices: Any) -> None:
            check_choice(option, value, choices, ConfigError)

        allowed("strategy", self.strategy, STRATEGY_NAMES)
        allowed("dataset", self.dataset, DATASETS)
        allowed("model", self.model, MODELS)
        allowed("partition", self.partition, PARTITIONERS)
        check_numbers(self, ConfigError)
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
        if self.min_partition_size < 0:
            raise ConfigError("min-partition-size", f"{self.min_partition_size} must be >= 0")
        if not 0 <= self.seed <= SEED_MAX:
            raise ConfigError("seed", f"{self.seed} is outside [0, {SEED_MAX}] (numpy seeds are 32-bit)")
        self._validate_dataset()

        allowed("score", self.score, SCORES)
        allowed("aggregation", self.aggregation, AGGREGATIONS)
        allowed("dense-params", self.dense_params, DENSE_PARAMS)
        allowed("mask-transfer", self.mask_transfer, MASK_TRANSFER)

        allowed("score-optimizer", self.score_optimizer, SCORE_OPTIMIZERS)
        allowed("local-loss", self.local_loss, ("auto", *LOCAL_LOSSES))
        allowed("score-grid", self.score_grid, GRIDS)
        if self.aggregation == "tally" and self.score_optimizer != "adam":
            raise ConfigError("score-optimizer", "aggregation 'tally' bounds a round's score movement by Adam's "
                                                 "(~lr per step); use --score-optimizer adam with it")
        if self.max_failed_rounds < 0:
            raise ConfigError("max-failed-rounds", f"{self.max_failed_rounds} must be >= 0 (0 = never stop)")
        if self.personal_eval_every < 0:
            raise ConfigError("personal-eval-every", "must be >= 0 (0 = never)")
        self._validate_fedtiny()
        self._validate_device_and_granularity()
        if self.strategy in ("fedavg", "flwr-fedavg") and self.density != 1.0:
            raise ConfigError("density", f"strategy '{self.strategy}' is dense; density must be 1.0")
        self._validate_model()
        if not self.out.strip():
            raise ConfigError("out", f"'{self.out}' names no directory; give one for the results ('.' for the "
                                     "current one)")
        if check_out_dir:
            check_writable_dir(self.out)

    def _validate_device_and_granularity(self) -> None:
        """A device this host has (``cuda`` only where torch sees a GPU), a known mask granularity, and tiles
        only for the strategies that build their mask once from a score (static-*, hidenseek)."""
        try:
            resolve_device(self.device)
        except DeviceError as exc:
            raise ConfigError("device", str(exc)) from None
        check_choice("mask-granularity", self.mask_granularity, tuple(MASK_GRANULARITIES), ConfigError)
        if self.mask_granularity != "weight" and not (self.strategy.startswith("static-")
                                                      or self.strategy == "hidenseek"):
            raise ConfigError("mask-granularity", f"'{self.mask_granularity}' is for static-* and hidenseek masks; "
                                                  f"{self.strategy} keeps single weights")

    def _validate_dataset(self) -> None:
        """What the dataset fixes without loading it: its class count, and whether it reads files at all."""

        facts = DATASET_FACTS[self.dataset]
        if self.classes_per_client > facts.num_classes:
            raise ConfigError("classes-per-client", f"{self.classes_per_client} exceeds the {facts.num_classes} "
                                                    f"classes of {self.dataset}; use 1 to {facts.num_classes}")
        if self.dataset_path and not facts.reads_files:
            raise ConfigError("dataset-path", f"{self.dataset} ships with scikit-learn and reads no files; drop "
                                              "--dataset-path (it is for fashion-mnist and cifar10)")

    def _validate_model(self) -> None:
        """The density must keep a weight in every prunable layer (``pruning.scores.global_topk_mask``
        otherwise keeps one per layer anyway, above the density asked for)."""
        try:
            facts = model_facts(self.model, self.dataset)
        except ValueError as exc:  # e.g. an input side the architecture cannot halve
            raise ConfigError("model", str(exc)) from None
        kept = round(self.density * facts.prunable_weights)
        if kept < facts.prunable_layers:
            raise ConfigError("density", f"{self.density:g} keeps {kept} of {self.model}'s "
                                         f"{facts.prunable_weights:,} prunable weights, fewer than its "
                                         f"{facts.prunable_layers} prunable layers; use at least "
                                         f"{smallest_density(facts)} (one weight per layer)")

    def _validate_fedtiny(self) -> None:

        if self.candidates < 1:
            raise ConfigError("candidates", f"{self.candidates} must be >= 1 (1 = no BN selection)")
        if self.candidate_ranking not in RANKINGS:
            raise ConfigError("candidate-ranking", f"'{self.candidate_ranking}' is not one of: {', '.join(RANKINGS)}")
        if self.adjust_every < 0:
            raise ConfigError("adjust-every", f"{self.adjust_every} must be >= 0 (0 = no progressive pruning)")
        if self.adjust_until < 0:
            raise ConfigError("adjust-until", f"{self.adjust_until} must be >= 0")
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


def check_model_takes_inputs(settings: RunSettings) -> None:
    """Raise ``ConfigError('model')`` unless the model's forward pass takes the dataset's inputs (otherwise the
    run fails at its first evaluation). A meta-device pass: shapes only, but its first call in a process imports
    torch's decompositions (~1 s), so the CLI runs it once rather than ``validate`` in every client process."""

    if input_error(settings.model, settings.dataset):
        shape = "x".join(map(str, DATASET_FACTS[settings.dataset].input_shape))
        fitting = [m for m in sorted(MODELS) if not input_error(m, settings.dataset)]
        raise ConfigError("model", f"'{settings.model}' cannot take the {shape} inputs of {settings.dataset}; "
                                   f"use one of: {', '.join(fitting)}")


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
