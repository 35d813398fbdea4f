"""HideNseek: a server-pruned random network whose clients learn only a sign supermask.

Round by round (DESIGN §4):

* once, on the server: θ0 from the run seed, mask m = score(θ0, density) without data;
* ``configure_train``: each sampled node gets the global signs σ over kept weights, coded
  against the copy that node last received (per-node copies are kept here); a node that
  never took part also gets the setup (seed, architecture, coded mask or only its digest,
  and a digest of θ0 to check its rebuild against). The frozen weights never travel;
* clients train latent scores z from z = σ·|θ0| (``client.hidenseek``) and send back one
  bit per kept weight, coded against σ;
* ``aggregate_train``: the bits become the new σ by the configured rule —
  ``vote`` (sample-weighted majority of hard signs, ties keep σ), ``tally`` (stochastic
  bits whose mean is an unbiased estimate of the clients' score change, accumulated in
  a server-side real-valued tally: score averaging at one bit per weight), or
  ``score-average`` (clients send float32 scores and get the global scores back; the
  reference point, 32 bits per weight, recorded honestly), or ``ternary-delta`` (clients
  start from the global scores and send their score change as unbiased stochastic
  ternary values {-r, 0, +r}: score averaging at well under one bit per weight uplink;
  the global scores travel downlink). Each rule is one object (``pruning.sign_aggregation``) that the
  client uses too: what travels down, the client's upload, its check here and the aggregation.

Biases and BatchNorm parameters are trained locally and averaged (``dense-params =
averaged``) or stay on the client (``personal``).
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import INFO, WARNING
from typing import Any

import numpy as np
from fedprune.kernels.sign_supermask import folded_weights
from fedprune.protos.codec import Expected, Manifest, TensorSpec, decode, encode, on_float16_grid, reference_digest
from fedprune.protos.contract import (
    AGGREGATIONS,
    DENSE_PARAMS,
    LEVEL_STEP,
    LEVELS,
    LEVELS_DIGEST,
    MASK,
    MASK_DIGEST,
    MASK_MISMATCH,
    MASK_TRANSFER,
    ROUND_MODEL_DIGEST,
    SIGMA,
    THETA0_DIGEST,
    ConfigKey,
    DenseParams,
    Kind,
    MetricKey,
    Task,
    hidenseek_setup_kind,
    round_model_digest,
    theta0_digest,
)
from fedprune.protos.flower_records import error_reason, payload_of, setup_record
from fedprune.pruning.aggregation import weighted_mean
from fedprune.pruning.score_levels import GRIDS, initial_levels, level_steps, signs_of_levels, to_levels
from fedprune.pruning.sign_aggregation import ServerStep, SignState, Upload, sign_rule
from fedprune.strategies.base import FederatedStrategy, ReplyRejected, checked_state_arrays, reply_metrics
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord
from flwr.common import log
from flwr.serverapp import Grid


class HideNseek(FederatedStrategy):
    """Sign-supermask federated training over a data-free mask (see module docstring)."""

    def __init__(self, *, theta0: dict[str, np.ndarray], mask: dict[str, np.ndarray], architecture: str,
                 model_seed: int, score: str, density: float, clients_per_round: int, min_train_nodes: int = 1,
                 seed: int = 0, aggregation: str = "ternary-delta", dense_params: str = "averaged",
                 mask_transfer: str = "send", personal_eval_every: int = 5, server_lr: float = 1.0,
                 server_momentum: float = 0.0, score_step: float = 0.0, score_grid: str = "uniform",
                 mask_granularity: str = "weight") -> None:
        super().__init__(clients_per_round=clients_per_round, min_train_nodes=min_train_nodes, seed=seed)
        for option, value, allowed in (("aggregation", aggregation, AGGREGATIONS),
                                       ("dense-params", dense_params, DENSE_PARAMS),
                                       ("mask-transfer", mask_transfer, MASK_TRANSFER),
                                       ("score-grid", score_grid, GRIDS)):
            if value not in allowed:
                raise ValueError(f"hidenseek {option} '{value}' is not one of {allowed}")
        self.mask = {k: np.asarray(v, dtype=bool) for k, v in mask.items()}
        self.magnitude = {k: np.abs(theta0[k][self.mask[k]]).astype(np.float32) for k in self.mask}
        initial_signs = {k: np.where(theta0[k][self.mask[k]] >= 0, 1, -1).astype(np.int8) for k in self.mask}
        self.initial_signs = initial_signs
        self.sigma = dict(initial_signs)
        self.tally = {k: (self.magnitude[k] * initial_signs[k]).astype(np.float32) for k in self.mask}
        self.theta0_digest = theta0_digest(theta0)
        self.mask_digest = reference_digest(self.mask)
        self.architecture, self.model_seed, self.score, self.density = architecture, model_seed, score, density
        self.mask_granularity = mask_granularity
        self.aggregation, self.dense_params, self.mask_transfer = aggregation, dense_params, mask_transfer
        self.rule = sign_rule(aggregation)  # the upload's shape, its check and the aggregation
        if not (np.isfinite(score_step) and score_step >= 0) or (score_step and not self.rule.score_downlink):
            raise ValueError(f"hidenseek score-step {score_step} must be >= 0, and 0 unless the aggregation sends "
                             "the global scores down (score-average, ternary-delta)")
        self.score_step, self.score_grid = score_step, score_grid
        self.steps = level_steps(self.magnitude, score_step) if score_step else None  # None: float32 scores
        # what a node holds before its first levels (it computes them from θ0): first payloads are coded against it
        self.initial_levels = (initial_levels(self.magnitude, initial_signs, self.steps, score_grid) if self.steps
                               else None)
        self.sent_levels: dict[int, dict[str, np.ndarray]] = {}  # per node: the levels it last received
        self.personal_eval_every, self.server_lr = personal_eval_every, server_lr
        self.server_momentum = server_momentum
        self.velocity = {k: np.zeros(v.shape, dtype=np.float32) for k, v in self.magnitude.items()}
        self.sent: dict[int, dict[str, np.ndarray]] = {}  # per node: the σ it last received
        self.mask_sent_to: set[int] = set()  # recompute mode: nodes whose rebuilt mask differed get the coded mask
        self.flip_rates: dict[int, float] = {}
        self._dense: dict[str, np.ndarray] = {}
        self._round_dense: dict[str, np.ndarray] = {}  # the dense parameters sent with this round's σ
        self._sampled: list[int] = []
        self._order: list[str] = []
        self.payload_bytes: dict[int, dict[int, int]] = {}  # round -> node -> codec payload bytes received

    def summary(self) -> None:
        """Log the mask and aggregation settings."""
        log(INFO, "HideNseek: %s mask, density %.4f, aggregation %s, dense params %s, mask %s",
            self.score, self.density, self.aggregation, self.dense_params, self.mask_transfer)

    # -- the global model --------------------------------------------------------

    def folded_arrays(self, dense: dict[str, np.ndarray]) -> ArrayRecord:
        """m ⊙ |θ0| ⊙ σ for masked weights plus the global dense parameters: what the server evaluates."""
        weights = {**dense, **folded_weights(self.mask, self.magnitude, self.sigma)}
        return ArrayRecord({k: Array(np.ascontiguousarray(weights[k])) for k in self._order})

    def initialize_arrays(self, arrays: ArrayRecord) -> ArrayRecord:
        """The initial global model is θ0 restricted to the mask (σ = sign(θ0))."""
        self._order = list(arrays.keys())
        self._dense = {k: arrays[k].numpy() for k in arrays.keys() if k not in self.mask}
        return self.folded_arrays(self._dense)

    # -- train -------------------------------------------------------------------

    def _round_tensors(self) -> dict[str, np.ndarray]:
        """σ, the rule's downlink (the global scores for score rules) and the averaged dense parameters."""
        tensors = {SIGMA + k: v for k, v in self.sigma.items()}
        tensors.update(self.rule.downlink(self.tally))
        if self.dense_params == DenseParams.AVERAGED:
            tensors.update(self._dense)
        return tensors

    def _level_tensors(self, levels: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The coded-downlink round payload: levels, their grid steps and digest (σ follows from the levels),
        and the averaged dense parameters."""
        tensors: dict[str, np.ndarray] = {LEVELS + k: v for k, v in levels.items()}
        tensors.update({LEVEL_STEP + k: v for k, v in self.steps.items()})
        tensors[LEVELS_DIGEST] = np.frombuffer(reference_digest({LEVELS + k: v for k, v in levels.items()}),
                                               dtype=np.uint8)
        if self.dense_params == DenseParams.AVERAGED:
            tensors.update(self._dense)
        return tensors

    def _train_payload(self, node: int, tensors: dict[str, np.ndarray], levels: dict[str, np.ndarray] | None,
                       manifest: Manifest) -> bytes:
        """One node's round payload, coded against what it holds (its σ, or its levels in level mode, where the
        dense parameters travel as float16: they are kept on that grid here), and the record of what it now
        holds."""
        if levels is None:
            reference = self.sent.get(node, self.initial_signs)
            blob = encode(tensors, reference={SIGMA + k: v for k, v in reference.items()}, manifest=manifest)
            self.sent[node] = dict(self.sigma)
            return blob
        held = self.sent_levels.get(node, self.initial_levels)
        blob = encode(tensors, reference={LEVELS + k: v for k, v in held.items()}, manifest=manifest,
                      force={k: "DENSE_F16" for k in self._dense if k in tensors})
        self.sent_levels[node], self.sent[node] = levels, signs_of_levels(levels)
        return blob

    def _setup_blob(self, node: int) -> bytes:
        tensors: dict[str, np.ndarray] = {THETA0_DIGEST: np.frombuffer(self.theta0_digest, dtype=np.uint8)}
        if self.mask_transfer == "send" or node in self.mask_sent_to:
            tensors.update({MASK + k: v for k, v in self.mask.items()})
        else:
            tensors[MASK_DIGEST] = np.frombuffer(self.mask_digest, dtype=np.uint8)
        return encode(tensors, manifest=Manifest(self.architecture, self.model_seed, self.density, 0,
                                                 hidenseek_setup_kind(self.score, self.mask_granularity)))

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """Send σ (coded against each node's last copy) and, to new nodes, the setup."""
        self._dense = {k: arrays[k].numpy() for k in arrays.keys() if k not in self.mask}
        config = ConfigRecord({**dict(config), ConfigKey.SERVER_ROUND: server_round, ConfigKey.TASK: Task.HIDENSEEK,
                               ConfigKey.AGGREGATION: self.aggregation, ConfigKey.DENSE_PARAMS: self.dense_params,
                               ConfigKey.SCORE_LEVELS: float(self.score_step), ConfigKey.SCORE_GRID: self.score_grid})
        levels = to_levels(self.tally, self.steps, self.score_grid) if self.steps is not None else None
        if levels is not None:  # the coded exchange: dense parameters on the float16 grid both ways
            self._dense = on_float16_grid(self._dense)
        tensors = self._round_tensors() if levels is None else self._level_tensors(levels)
        self._round_dense = dict(self._dense) if self.dense_params == DenseParams.AVERAGED else {}
        manifest = Manifest(self.architecture, self.model_seed, self.density, server_round, Kind.HIDENSEEK_ROUND)
        messages = []
        self._sampled = self.sample_nodes(server_round, grid)
        for slot, node in enumerate(self._sampled):
            # first contact: the setup too; σ is coded against sign(θ0), which the client rebuilds itself
            setup = None if node in self.sent else self._setup_blob(node)
            blob = self._train_payload(node, tensors, levels, manifest)
            # Tally bits are rounded with one shared random draw offset by each client's slot
            # (stratified): still unbiased per client; the round's mean is less noisy where clients agree.
            node_config = ConfigRecord({**dict(config), ConfigKey.TALLY_SLOT: slot,
                                        ConfigKey.TALLY_SLOTS: len(self._sampled)})
            messages.append(Message(content=setup_record(blob, setup, config=node_config), dst_node_id=node,
                                    message_type=MessageType.TRAIN))
        return messages

    def check_reply(self, server_round: int, reply: Message) -> dict[str, np.ndarray]:
        """The client's bits (or scores), decoded against the σ this node was sent; every tensor checked."""
        self.check_metrics(reply)
        node = reply.metadata.src_node_id
        sent = self.sent.get(node)
        try:
            if sent is None:
                raise ValueError("reply from a node that was not sent σ this run")
            blob = payload_of(reply)
            decoded = decode(blob, reference={SIGMA + k: v for k, v in sent.items()},
                             expect=self.expected_reply()).tensors
            self._check_tensors(decoded, reply_metrics(reply))
        except ValueError as exc:  # includes WireFormatError
            self.forget_node(node)  # never a silent desync: the node gets everything again next time
            raise ReplyRejected(f"payload rejected: {exc}") from None
        self.payload_bytes.setdefault(server_round, {})[node] = len(blob)
        return decoded

    def expected_reply(self) -> Expected:
        """What a training reply must hold under this aggregation rule (names, dtypes, shapes), checked
        before anything is decoded: a reply can never make the server allocate more than it asked for."""
        dense: dict[str, TensorSpec] = {}
        if self.dense_params == DenseParams.AVERAGED:
            dense = {name: TensorSpec.of(value) for name, value in self._dense.items()}
        return self.rule.expected_upload(self.magnitude, dense)

    def _check_tensors(self, decoded: dict[str, np.ndarray], metrics: MetricRecord) -> None:
        self.rule.check_upload(decoded, self.magnitude, metrics)
        if self.dense_params == DenseParams.AVERAGED:
            for name, value in self._dense.items():
                if name not in decoded or decoded[name].shape != value.shape:
                    raise ValueError(f"dense parameter '{name}' missing or misshapen")

    def forget_node(self, node_id: int) -> None:
        """A node that failed may have lost its σ: it gets the full vector (and setup) next time."""
        self.sent.pop(node_id, None)
        self.sent_levels.pop(node_id, None)

    def aggregate_train(self, server_round: int,
                        replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Update σ by the configured rule, average dense parameters, report the flip rate."""
        replies = list(replies)
        for reply in replies:  # recompute mode: a node that rebuilt another mask is sent the coded mask
            if reply.has_error() and MASK_MISMATCH in error_reason(reply, limit=1000):
                node = reply.metadata.src_node_id
                if node not in self.mask_sent_to:
                    log(WARNING, "round %d: node %d rebuilt a different mask; it is sent the coded mask from now "
                        "on", server_round, node)
                self.mask_sent_to.add(node)
        screened = self.screen_replies(server_round, replies)
        valid = [s.reply for s in screened]
        if not self.enough_replies(server_round, valid):
            return None, None
        weights = [self.weight_of(m) for m in valid]
        decoded = [s.decoded for s in screened]
        previous = self.sigma
        uploads = [Upload(d, w, reply_metrics(m)) for d, w, m in zip(decoded, weights, valid, strict=True)]
        state = self.rule.aggregate(SignState(self.sigma, self.tally, self.velocity, self.magnitude), uploads,
                                    ServerStep(self.server_lr, self.server_momentum))
        self.sigma, self.tally, self.velocity = state.sigma, state.tally, state.velocity
        if self.dense_params == DenseParams.AVERAGED:
            mean = weighted_mean([ArrayRecord({k: Array(d[k]) for k in self._dense}) for d in decoded], weights)
            self._dense = {k: mean[k].numpy() for k in self._dense}
            if self.steps is not None:  # the global model is what the next round sends
                self._dense = on_float16_grid(self._dense)
        flipped = sum(int((self.sigma[k] != previous[k]).sum()) for k in self.mask)
        self.flip_rates[server_round] = flipped / sum(v.size for v in self.sigma.values())
        return self.folded_arrays(self._dense), self.train_metrics(valid, weights)

    # -- personalized evaluation ---------------------------------------------------

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """Every few rounds, this round's clients evaluate their personal model and the global model this round
        started from, on their local test splits. Both are already on the node (its trained scores, and the σ and
        dense parameters it was sent this round), so the message carries only the digest of the latter: the
        node checks it holds exactly that model, and no model bytes travel for evaluation."""
        if not self.personal_eval_every or server_round % self.personal_eval_every:
            return []
        config = ConfigRecord({**dict(config), ConfigKey.SERVER_ROUND: server_round, ConfigKey.TASK: Task.HIDENSEEK})
        messages = []
        manifest = Manifest(self.architecture, self.model_seed, self.density, server_round, Kind.HIDENSEEK_EVAL)
        for node in self._sampled:
            if node not in self.sent:
                continue
            digest = round_model_digest(self.sent[node], self._round_dense)
            blob = encode({ROUND_MODEL_DIGEST: np.frombuffer(digest, dtype=np.uint8)}, manifest=manifest)
            messages.append(Message(content=setup_record(blob, None, config=config), dst_node_id=node,
                                    message_type=MessageType.EVALUATE))
        return messages

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Example-weighted mean of personal and global accuracy on the clients' local test splits."""
        replies = list(replies)
        for reply in replies:
            if reply.has_error():
                self.forget_node(reply.metadata.src_node_id)
        valid = [m for m in replies if not m.has_error() and m.content.metric_records]
        rows = [next(iter(m.content.metric_records.values())) for m in valid]
        rows = [r for r in rows if r.get(MetricKey.NUM_EXAMPLES, 0) > 0]
        if not rows:
            return None
        total = sum(float(r[MetricKey.NUM_EXAMPLES]) for r in rows)
        return MetricRecord({key: sum(float(r[key]) * float(r[MetricKey.NUM_EXAMPLES]) for r in rows) / total
                             for key in (MetricKey.PERSONAL_ACCURACY, MetricKey.GLOBAL_ACCURACY)}
                            | {"clients": len(rows)})

    # -- state ---------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """σ and the tally (what a resumed run continues from); per-node copies are not kept."""
        return {**super().state_dict(), "sigma": self.sigma, "tally": self.tally, "velocity": self.velocity,
                "flip_rates": self.flip_rates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore σ and the tally; every node gets the full state again after a restart."""
        super().load_state_dict(state)
        sigma = checked_state_arrays("sigma", state.get("sigma"), self.magnitude, np.int8)
        if any(not np.isin(v, (-1, 1)).all() for v in sigma.values()):
            raise ValueError("strategy state 'sigma' holds values other than -1/+1")
        self.sigma = sigma
        self.tally = checked_state_arrays("tally", state.get("tally"), self.magnitude, np.float32)
        self.velocity = checked_state_arrays("velocity", state.get("velocity", self.velocity), self.magnitude,
                                             np.float32)
        self.flip_rates = {int(k): float(v) for k, v in state.get("flip_rates", {}).items()}
        self.sent, self.sent_levels = {}, {}

    def round_report(self, server_round: int) -> dict[str, Any]:
        """Adds density, score, aggregation rule and the measured flip rate of σ this round."""
        return {**super().round_report(server_round), "density": self.density, "score": self.score,
                "aggregation": self.aggregation, "flip_rate": self.flip_rates.get(server_round),
                "uplink_payload_bytes": {str(node): size for node, size in
                                         self.payload_bytes.pop(server_round, {}).items()}}
