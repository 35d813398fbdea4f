"""HideNseek's aggregation rules as objects both sides share: one class per ``--aggregation`` value.

A rule fixes, in one place, everything that differs between rules, so the server (``strategies.hidenseek``)
and the client (``client.hidenseek``) cannot drift apart:

* what the server sends down besides σ (``downlink``: the global scores, for rules whose clients start
  from them);
* where a client's local training starts (``start``) and the upload it builds from its trained scores
  (``upload``);
* what the server expects of that upload before decoding it (``expected_upload``, a ``protos.codec``
  ``Expected``) and its check of the decoded tensors (``check_upload``);
* how the uploads of a round become the new global state σ / tally / velocity (``aggregate``).

The arithmetic itself is in ``pruning.aggregation``; tensor names come from ``protos.contract``.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import numpy as np
from fedprune.protos.codec import Expected, TensorSpec
from fedprune.protos.contract import (
    AGGREGATIONS,
    MOVED,
    SCORES,
    SIGMA,
    STEP_SCALE,
    STEP_SIGNS,
    Aggregation,
    MetricKey,
)
from fedprune.pruning.aggregation import (
    server_step,
    sign_vote,
    signs_of,
    stochastic_ternary,
    tally_update,
    ternary_value,
)

Arrays = dict[str, np.ndarray]


@dataclass(frozen=True)
class ClientRound:
    """What a client's start point and upload depend on besides its trained scores (per layer: kept weights)."""

    sigma: Arrays  # the global signs this round
    magnitude: Arrays  # |θ0| over kept weights
    received: Mapping[str, np.ndarray]  # the decoded round payload (holds the global scores for some rules)
    reach: float  # how far one round of local training can move a score (tally)
    seed: int  # the run seed: with the round and partition, seeds the client's stochastic rounding
    server_round: int
    partition_id: int
    moved_share: float = 1.0  # ternary-delta: at most this share of scores moves
    slot: int = 0  # tally: this client's offset in the round's shared rounding draw, of ``slots``
    slots: int = 1


@dataclass(frozen=True)
class SignState:
    """The server's global model of a HideNseek run: σ, the real-valued global scores (the tally), the
    server momentum buffer, and the fixed |θ0| over kept weights."""

    sigma: Arrays
    tally: Arrays
    velocity: Arrays
    magnitude: Arrays


class Upload(NamedTuple):
    """One screened client reply: its decoded tensors, its aggregation weight and its metrics."""

    tensors: Mapping[str, np.ndarray]
    weight: float
    metrics: Mapping[str, Any]


@dataclass(frozen=True)
class ServerStep:
    """Server step size and heavy-ball momentum on the clients' mean score change."""

    lr: float = 1.0
    momentum: float = 0.0


class SignRule(ABC):
    """One aggregation rule: the client upload's shape, the server's check of it and the aggregation."""

    name: ClassVar[str]
    score_downlink: ClassVar[bool] = False  # clients start from the global scores, which travel downlink
    score_optimizer: ClassVar[str | None] = None  # the only client score optimizer the rule works with
    optimizer_reason: ClassVar[str] = ""  # why (the sentence after "aggregation '<name>'")

    def downlink(self, tally: Arrays) -> Arrays:
        """What a round payload carries besides σ (and the dense parameters) under this rule."""
        return {SCORES + k: v for k, v in tally.items()} if self.score_downlink else {}

    def check_client(self, score_optimizer: str) -> None:
        """``ValueError`` if a client training with ``score_optimizer`` cannot follow this rule."""
        if self.score_optimizer is not None and score_optimizer != self.score_optimizer:
            raise ValueError(f"aggregation '{self.name}' {self.optimizer_reason}; "
                             f"this run's score optimizer is '{score_optimizer}'")

    @abstractmethod
    def start(self, round_: ClientRound) -> Arrays:
        """The latent scores z a client's local training starts from."""

    @abstractmethod
    def upload(self, scores: Arrays, start: Arrays, round_: ClientRound) -> Arrays:
        """The tensors a client sends back for its trained ``scores`` (coded against σ by the caller)."""

    @abstractmethod
    def layer_specs(self, name: str, kept: np.ndarray) -> dict[str, TensorSpec]:
        """The upload's tensors for layer ``name`` (``kept``: its |θ0| over kept weights)."""

    @abstractmethod
    def check_layer(self, decoded: Mapping[str, np.ndarray], name: str, kept: np.ndarray) -> None:
        """``ValueError`` unless the decoded upload holds layer ``name``'s tensors as this rule needs them."""

    @abstractmethod
    def aggregate(self, state: SignState, uploads: Sequence[Upload], step: ServerStep) -> SignState:
        """The new global state from a round's screened uploads (in their fixed partition order)."""

    def expected_upload(self, magnitude: Arrays, extra: Mapping[str, TensorSpec] | None = None) -> Expected:
        """What an upload must hold (names, dtypes, shapes; ``extra``: e.g. the dense parameters), checked
        before anything is decoded: a reply can never make the server allocate more than it asked for."""
        specs: dict[str, TensorSpec] = {}
        for name, kept in magnitude.items():
            specs.update(self.layer_specs(name, kept))
        return Expected({**specs, **(extra or {})})

    def check_upload(self, decoded: Mapping[str, np.ndarray], magnitude: Arrays,
                     metrics: Mapping[str, Any]) -> None:
        """``ValueError`` unless a decoded upload (and its reply's ``metrics``) is what this rule aggregates."""
        for name, kept in magnitude.items():
            self.check_layer(decoded, name, kept)


class _SignUpload(SignRule, ABC):
    """Rules whose clients send one sign per kept weight (coded against σ)."""

    def layer_specs(self, name: str, kept: np.ndarray) -> dict[str, TensorSpec]:
        return {SIGMA + name: TensorSpec("sign", kept.shape)}

    def check_layer(self, decoded: Mapping[str, np.ndarray], name: str, kept: np.ndarray) -> None:
        value = decoded.get(SIGMA + name)
        if value is None or value.shape != kept.shape:
            raise ValueError(f"'{SIGMA + name}' missing or not {kept.shape}")
        if value.dtype != np.int8:
            raise ValueError(f"'{SIGMA + name}' is not a sign vector")


class Vote(_SignUpload):
    """Hard signs of the trained scores; σ is their sample-weighted majority (a tie keeps σ)."""

    name = Aggregation.VOTE

    def start(self, round_: ClientRound) -> Arrays:
        return {k: round_.sigma[k] * m for k, m in round_.magnitude.items()}

    def upload(self, scores: Arrays, start: Arrays, round_: ClientRound) -> Arrays:
        return {SIGMA + k: np.where(z >= 0, 1, -1).astype(np.int8) for k, z in scores.items()}

    def aggregate(self, state: SignState, uploads: Sequence[Upload], step: ServerStep) -> SignState:
        weights = [u.weight for u in uploads]
        sigma = {k: sign_vote([u.tensors[SIGMA + k] for u in uploads], weights, state.sigma[k])
                 for k in state.magnitude}
        return dataclasses.replace(state, sigma=sigma)


class Tally(_SignUpload):
    """Stochastic bits whose mean is an unbiased estimate of the clients' score change, accumulated in a
    real-valued server tally: score averaging at one bit per weight (``pruning.aggregation.tally_update``).

    A client starts at σ·(|θ0| + reach), where reach bounds one round of Adam (~lr per step), so no sign
    flips locally; its bits round z stochastically between ±(|θ0| + 2·reach), which z cannot leave."""

    name = Aggregation.TALLY
    score_optimizer = "adam"
    optimizer_reason = "bounds a round's score movement by Adam's (~lr per step)"

    def start(self, round_: ClientRound) -> Arrays:
        return {k: round_.sigma[k] * (m + round_.reach) for k, m in round_.magnitude.items()}

    def upload(self, scores: Arrays, start: Arrays, round_: ClientRound) -> Arrays:
        upload = {}
        for index, (k, z) in enumerate(sorted(scores.items())):
            p_plus = (1.0 + np.clip(z / (round_.magnitude[k] + 2.0 * round_.reach), -1.0, 1.0)) / 2.0
            # Shared draw (same for every client this round) shifted by the client's slot: each client's
            # threshold is uniform (unbiased bits), and the round's clients cover [0, 1) evenly.
            shared = np.random.default_rng([round_.seed, round_.server_round, index]).random(z.shape)
            threshold = np.mod(shared + round_.slot / round_.slots, 1.0)
            upload[SIGMA + k] = np.where(threshold < p_plus, 1, -1).astype(np.int8)
        return upload

    def check_upload(self, decoded: Mapping[str, np.ndarray], magnitude: Arrays,
                     metrics: Mapping[str, Any]) -> None:
        """Also needs the client's reach (its bits' scale) among the reply's metrics."""
        reach = metrics.get(MetricKey.TALLY_REACH)
        if not isinstance(reach, float) or not 0 <= reach < 1e3:
            raise ValueError(f"tally reply lacks a valid '{MetricKey.TALLY_REACH}'")
        super().check_upload(decoded, magnitude, metrics)

    def aggregate(self, state: SignState, uploads: Sequence[Upload], step: ServerStep) -> SignState:
        weights = [u.weight for u in uploads]
        reaches = [float(u.metrics[MetricKey.TALLY_REACH]) for u in uploads]
        tally = {k: tally_update(state.tally[k], [u.tensors[SIGMA + k] for u in uploads], weights, state.sigma[k],
                                 state.magnitude[k], reaches, step.lr) for k in state.magnitude}
        sigma = {k: signs_of(tally[k], state.sigma[k]) for k in state.magnitude}
        return dataclasses.replace(state, sigma=sigma, tally=tally)


class _ScoreChange(SignRule, ABC):
    """Rules whose clients start from the global scores and send their change: the server applies the
    weighted mean change with its step size and momentum (``pruning.aggregation.server_step``)."""

    score_downlink = True

    def start(self, round_: ClientRound) -> Arrays:
        return {k: round_.received[SCORES + k] for k in round_.magnitude}

    @abstractmethod
    def change(self, tensors: Mapping[str, np.ndarray], name: str, scores: np.ndarray) -> np.ndarray:
        """One client's score change of layer ``name`` (float64) from its upload; ``scores``: the global ones."""

    def aggregate(self, state: SignState, uploads: Sequence[Upload], step: ServerStep) -> SignState:
        total = float(sum(u.weight for u in uploads))
        tally, velocity = dict(state.tally), dict(state.velocity)
        for k in state.magnitude:
            change = np.zeros(tally[k].shape, dtype=np.float64)
            for upload in uploads:
                change += (upload.weight / total) * self.change(upload.tensors, k, tally[k])
            tally[k], velocity[k] = server_step(tally[k], change, velocity[k], step.lr, step.momentum)
        sigma = {k: signs_of(tally[k], state.sigma[k]) for k in state.magnitude}
        return dataclasses.replace(state, sigma=sigma, tally=tally, velocity=velocity)


class ScoreAverage(_ScoreChange):
    """float32 scores both ways: the 32-bit reference the one-bit rules are measured against."""

    name = Aggregation.SCORE_AVERAGE

    def upload(self, scores: Arrays, start: Arrays, round_: ClientRound) -> Arrays:
        return {SCORES + k: v.astype(np.float32) for k, v in scores.items()}

    def layer_specs(self, name: str, kept: np.ndarray) -> dict[str, TensorSpec]:
        return {SCORES + name: TensorSpec("float32", kept.shape)}

    def check_layer(self, decoded: Mapping[str, np.ndarray], name: str, kept: np.ndarray) -> None:
        value = decoded.get(SCORES + name)
        if value is None or value.shape != kept.shape:
            raise ValueError(f"'{SCORES + name}' missing or not {kept.shape}")

    def change(self, tensors: Mapping[str, np.ndarray], name: str, scores: np.ndarray) -> np.ndarray:
        return tensors[SCORES + name].astype(np.float64) - scores


class TernaryDelta(_ScoreChange):
    """The score change as unbiased stochastic ternary values {-r, 0, +r} (``stochastic_ternary``): score
    averaging at well under one bit per weight uplink; ``moved_share`` trades bits for variance."""

    name = Aggregation.TERNARY_DELTA

    def upload(self, scores: Arrays, start: Arrays, round_: ClientRound) -> Arrays:
        upload = {}
        for index, (k, z) in enumerate(sorted(scores.items())):
            rng = np.random.default_rng([round_.seed, round_.server_round, round_.partition_id, index])
            moved, step_signs, scale = stochastic_ternary(z.astype(np.float64) - start[k], rng, round_.moved_share)
            upload[MOVED + k], upload[STEP_SIGNS + k] = moved, step_signs
            upload[STEP_SCALE + k] = np.array([scale], dtype=np.float32)
        return upload

    def layer_specs(self, name: str, kept: np.ndarray) -> dict[str, TensorSpec]:
        return {MOVED + name: TensorSpec("bool", kept.shape),
                STEP_SIGNS + name: TensorSpec("sign", kept.shape, at_most=True),
                STEP_SCALE + name: TensorSpec("float32", (1,))}

    def check_layer(self, decoded: Mapping[str, np.ndarray], name: str, kept: np.ndarray) -> None:
        moved, signs, scale = decoded.get(MOVED + name), decoded.get(STEP_SIGNS + name), decoded.get(STEP_SCALE + name)
        if moved is None or moved.dtype != np.bool_ or moved.shape != kept.shape:
            raise ValueError(f"'{MOVED + name}' missing or not a {kept.shape} mask")
        if signs is None or signs.dtype != np.int8 or signs.shape != (int(moved.sum()),):
            raise ValueError(f"'{STEP_SIGNS + name}' missing or not one sign per moved entry")
        if scale is None or scale.shape != (1,) or not (np.isfinite(scale).all() and 0 <= scale[0] < 1e3):
            raise ValueError(f"'{STEP_SCALE + name}' missing or not a finite scale")

    def change(self, tensors: Mapping[str, np.ndarray], name: str, scores: np.ndarray) -> np.ndarray:
        return ternary_value(tensors[MOVED + name], tensors[STEP_SIGNS + name], float(tensors[STEP_SCALE + name][0]))


SIGN_RULES: dict[str, SignRule] = {rule.name: rule for rule in (Vote(), Tally(), ScoreAverage(), TernaryDelta())}


def sign_rule(name: str) -> SignRule:
    """The rule named ``name`` (an ``Aggregation`` value); ``ValueError`` for any other name."""
    rule = SIGN_RULES.get(name)
    if rule is None:
        raise ValueError(f"aggregation '{name}' is not one of {AGGREGATIONS}")
    return rule
