"""The protocol between server and client, in one place both sides import.

A fedprune message is a Flower ``RecordDict``: a ``config`` record (server → client: the round, the task,
training options), a ``metrics`` record (client → server: example count, loss, ...), and, except for dense
FedAvg, one coded payload (``protos.flower_records``, ``protos.codec``) whose tensors are named by the
prefixes and suffixes below. What travels is fixed here, and only here:

* the task a message asks for (``Task``) and the records it holds (``Record``);
* the keys of the config a server sends (``ConfigKey``) and the values some of them take
  (``Aggregation``, ``DenseParams``), and the metrics a client answers with (``MetricKey``);
* tensor names inside payloads (``SIGMA``, ``SCORES``, ..., ``KEPT_SUFFIX``, ``candidate_key``) and what a
  payload's manifest says it is (``Kind``);
* how kept values of masked tensors travel (``split_kept`` / ``join_kept``);
* θ0, the seeded initial model neither side ever sends: both rebuild it from (architecture, seed) with
  ``initial_state`` and compare one digest (``theta0_digest``, sent as ``THETA0_DIGEST``).

``client/`` takes its protocol names from here and never imports ``server/`` or ``strategies/``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import numpy as np
from fedprune.models import build_model
from fedprune.protos.codec import reference_digest

# -- strategies a run config may name (``fedprune.strategies.registry.STRATEGIES`` builds each) ------------

STRATEGY_NAMES = ("fedavg", "flwr-fedavg", "static-magnitude", "static-random", "static-synflow", "hidenseek",
                  "fedtiny")
HIDENSEEK_STRATEGY = "hidenseek"  # clients train it logit-adjusted when the run's local loss is "auto"


class Task:
    """Values of ``ConfigKey.TASK``: what a message asks a client to do (none: dense FedAvg / evaluation)."""

    MASKED_SGD = "masked-sgd"  # static-mask FedAvg and FedTiny: train the kept weights of a coded mask
    HIDENSEEK = "hidenseek"  # train sign scores over a data-free mask, answer with coded bits
    BN_STATISTICS = "fedtiny-bn-statistics"  # re-estimate BatchNorm statistics of every candidate mask
    BN_EVALUATE = "fedtiny-bn-evaluate"  # evaluate every candidate with the pooled statistics


class Record:
    """Names of the records in a message's content."""

    CONFIG = "config"  # ConfigRecord, server → client
    METRICS = "metrics"  # MetricRecord, client → server
    ARRAYS = "arrays"  # ArrayRecord of a dense model (FedAvg, both ways)
    NODE = "node"  # MetricRecord of a discovery (query) reply: what a node says about itself
    PAYLOAD = "fedprune"  # ConfigRecord holding the coded payload (and the setup on first contact)
    PAYLOAD_KEY = "payload"
    SETUP_KEY = "setup"


class ConfigKey:
    """Keys of the ``config`` record a server sends."""

    SERVER_ROUND = "server-round"
    TASK = "task"
    LOCAL_EPOCHS = "local-epochs"
    LR = "lr"
    MOMENTUM = "momentum"
    BATCH_SIZE = "batch-size"
    EVAL_BATCH_SIZE = "eval-batch-size"
    # HideNseek
    AGGREGATION = "aggregation"  # an ``Aggregation`` value
    DENSE_PARAMS = "dense-params"  # a ``DenseParams`` value
    SCORE_LR = "score-lr"
    MOVED_SHARE = "moved-share"
    SCORE_LEVELS = "score-levels"  # HideNseek: the grid step (× RMS|θ0|) of the levels the global scores travel
    # as (``pruning.score_levels``); 0 or absent: float32 scores
    SCORE_GRID = "score-grid"  # HideNseek: the grid of those levels (``pruning.score_levels.GRIDS``)
    TALLY_SLOT = "tally-slot"  # this client's offset in the round's shared rounding draw
    TALLY_SLOTS = "tally-slots"
    # FedTiny progressive pruning: layers whose pruned-position gradients to report, their K, buffer sizes
    ADJUST_LAYERS = "adjust-layers"
    ADJUST_K = "adjust-k"
    ADJUST_BUFFER = "adjust-buffer"


class MetricKey:
    """Keys of the metrics a client answers with (``metrics`` record, or ``node`` for discovery)."""

    NUM_EXAMPLES = "num-examples"  # the aggregation weight
    TRAIN_LOSS = "train-loss"
    LOSS = "loss"
    ACCURACY = "accuracy"
    PARTITION_ID = "partition-id"  # also the node-config key that names the node's partition
    NUM_PARTITIONS = "num-partitions"
    MEMORY_BUDGET_MB = "memory-budget-mb"  # declared at discovery (node config or simulated tier)
    FLOPS_BUDGET = "flops-budget"
    TALLY_REACH = "tally-reach"  # HideNseek tally: how far one round can move a score
    LOCAL_FLIP_RATE = "local-flip-rate"
    TRAIN_STATE_BYTES = "train-state-bytes"  # what local training held: parameters, gradients, optimizer state, buffers
    PERSONAL_ACCURACY = "personal-accuracy"
    GLOBAL_ACCURACY = "global-accuracy"


def candidate_loss_key(index: int) -> str:
    """Metric name of candidate ``index``'s validation loss (FedTiny BN evaluation)."""
    return f"loss-{index}"


def candidate_accuracy_key(index: int) -> str:
    """Metric name of candidate ``index``'s validation accuracy (FedTiny BN evaluation)."""
    return f"accuracy-{index}"


class NodeKey:
    """Keys of a SuperNode's node config that the ClientApp reads (``fedprune deploy supernode`` sets them)."""

    PARTITION_ID = "partition-id"  # the node's partition of the run's dataset; its id in results.json
    NUM_PARTITIONS = "num-partitions"  # must equal the run's num-clients
    DATA_PATH = "data-path"  # the node's own .npz instead of a partition
    MODEL_DIR = "model-dir"  # keep the latest trained model here for edge inference
    NUM_THREADS = "num-threads"  # torch intra-op threads for training and evaluation (absent: 1, simulation)
    CACHE_DIR = "cache-dir"  # node-local cache of per-node setup (the data partition), checked by digest
    DEVICE = "device"  # auto | cpu | cuda: where this node trains (absent: the run's --device)


class Aggregation:
    """Values of ``ConfigKey.AGGREGATION``: how HideNseek's server merges the clients' replies, which fixes
    what a client starts from and sends back."""

    VOTE = "vote"  # hard signs, majority vote
    TALLY = "tally"  # stochastic bits, a server-side real-valued tally
    SCORE_AVERAGE = "score-average"  # float32 scores both ways
    TERNARY_DELTA = "ternary-delta"  # score change as stochastic ternary values, global scores downlink


AGGREGATIONS = (Aggregation.VOTE, Aggregation.TALLY, Aggregation.SCORE_AVERAGE, Aggregation.TERNARY_DELTA)
SCORE_DOWNLINK = (Aggregation.SCORE_AVERAGE, Aggregation.TERNARY_DELTA)  # clients start from the global scores


class DenseParams:
    """Values of ``ConfigKey.DENSE_PARAMS``: whether biases/BatchNorm travel (averaged) or stay on the node."""

    AVERAGED = "averaged"
    PERSONAL = "personal"


DENSE_PARAMS = (DenseParams.AVERAGED, DenseParams.PERSONAL)
# HideNseek setup: the coded mask travels ("send"), or only its digest and clients rebuild it ("recompute"; a node
# whose rebuilt mask differs answers with an error holding MASK_MISMATCH and is sent the coded mask from then on).
MASK_TRANSFER = ("send", "recompute")
MASK_MISMATCH = "the mask recomputed here differs from the server's (mask digest mismatch)"


# -- tensor names inside payloads --------------------------------------------------------------------------

SIGMA = "sigma/"  # + layer: σ, the global signs over kept weights
SCORES = "scores/"  # + layer: float32 scores (global ones downlink, a client's own uplink)
LEVELS, LEVEL_STEP = "levels/", "level-step/"  # + layer: global scores as int32 grid levels, and the grid step
LEVELS_DIGEST = "levels-digest"  # uint8[16]: digest of the levels a node must rebuild (``reference_digest``)
ROUND_MODEL_DIGEST = "round-model-digest"  # uint8[16]: digest of σ and dense parameters a node got this round
MASK = "mask/"  # + layer: a HideNseek setup's mask
MOVED, STEP_SIGNS, STEP_SCALE = "moved/", "step-signs/", "step-scale/"  # + layer: a ternary score change
KEPT_SUFFIX = "/kept"  # layer +: kept values of a masked tensor, in flat index order
MASK_SUFFIX = "/mask"  # layer +: the coded mask, sent to a node that does not hold it
CANDIDATE = "candidate"  # candidate/<i>/<layer> (masks) and candidate/<i>/<bn buffer> (statistics)
THETA0_DIGEST = "theta0-digest"  # uint8[16]: ``theta0_digest`` of the server's θ0
MASK_DIGEST = "mask-digest"  # uint8[16]: digest of a mask the client recomputes instead of receiving


def candidate_key(index: int, name: str) -> str:
    """Payload name of candidate ``index``'s tensor ``name`` (a mask or a BN statistic)."""
    return f"{CANDIDATE}/{index}/{name}"


class Kind:
    """What a payload's manifest says it carries (``Manifest.kind``)."""

    HIDENSEEK_ROUND = "hidenseek-round"
    HIDENSEEK_EVAL = "hidenseek-eval"
    HIDENSEEK_UPDATE = "hidenseek-update"
    STATIC_MASK = "static-mask"
    STATIC_MASK_UPDATE = "static-mask-update"
    FEDTINY_CANDIDATES = "fedtiny-candidates"
    FEDTINY_POOLED_BN = "fedtiny-candidates-pooled-bn"
    FEDTINY_BN_STATISTICS = "fedtiny-bn-statistics"


def hidenseek_setup_kind(score: str, granularity: str = "weight") -> str:
    """Manifest kind of a HideNseek setup: it names the score and, unless single weights, the mask granularity
    (``hidenseek-setup/synflow``, ``hidenseek-setup/synflow/tile32``), so a node can recompute the mask itself."""
    return f"hidenseek-setup/{score}" + ("" if granularity == "weight" else f"/{granularity}")


def score_of_setup_kind(kind: str) -> str:
    """The score a HideNseek setup's manifest kind names (inverse of ``hidenseek_setup_kind``)."""
    return kind.split("/")[1] if kind.count("/") else kind


def granularity_of_setup_kind(kind: str) -> str:
    """The mask granularity a HideNseek setup's manifest kind names: ``weight`` unless it says otherwise."""
    parts = kind.split("/")
    return parts[2] if len(parts) > 2 else "weight"


# -- kept values of masked tensors -------------------------------------------------------------------------

def split_kept(state: dict[str, np.ndarray], mask: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Kept values of masked tensors (1-D, in flat index order) and every other tensor whole."""
    out = {}
    for name, value in state.items():
        if name in mask:
            out[name + KEPT_SUFFIX] = np.ascontiguousarray(value.reshape(-1)[mask[name].reshape(-1)], np.float32)
        else:
            out[name] = value
    return out


def join_kept(tensors: dict[str, np.ndarray], mask: dict[str, np.ndarray],
              template: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of ``split_kept``: scatter kept values into zero tensors shaped like ``template``."""
    out = {}
    for name, like in template.items():
        if name in mask:
            kept = tensors[name + KEPT_SUFFIX]
            if kept.shape != (int(mask[name].sum()),):
                raise ValueError(f"'{name}': {kept.shape[0]} kept values for {int(mask[name].sum())} kept positions")
            full = np.zeros(like.size, dtype=np.float32)
            full[mask[name].reshape(-1)] = kept
            out[name] = full.reshape(like.shape)
        else:
            if tensors[name].shape != like.shape:
                raise ValueError(f"'{name}' has shape {tensors[name].shape}, expected {like.shape}")
            out[name] = tensors[name]
    return out


# -- θ0: rebuilt from (architecture, seed) on both sides, never sent ------------------------------------------

@functools.lru_cache(maxsize=4)
def _initial_state(architecture: str, seed: int, input_shape: tuple[int, ...],
                   num_classes: int) -> dict[str, np.ndarray]:
    model = build_model(architecture, input_shape, num_classes, seed=seed)
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def initial_state(architecture: str, seed: int, input_shape: tuple[int, ...],
                  num_classes: int) -> dict[str, np.ndarray]:
    """θ0: the state dict of ``architecture`` built with ``seed`` (cached per process; do not modify it)."""
    return _initial_state(architecture, int(seed), tuple(int(d) for d in input_shape), int(num_classes))


def theta0_digest(theta0: Mapping[str, np.ndarray]) -> bytes:
    """The digest a server sends of its θ0 (16 bytes: names, dtypes, shapes and values of every tensor), so
    a node proves it rebuilt exactly the same θ0."""
    return reference_digest(theta0)


def rebuild_theta0(architecture: str, seed: int, input_shape: tuple[int, ...], num_classes: int,
                   digest: bytes) -> dict[str, np.ndarray]:
    """θ0 rebuilt from (architecture, seed), checked against the server's ``digest``; ``ValueError`` if it
    differs (another torch version or model code would train a different network without noticing)."""
    theta0 = initial_state(architecture, seed, input_shape, num_classes)
    if theta0_digest(theta0) != bytes(digest):
        raise ValueError("θ0 rebuilt from the seed differs from the server's (torch version or model drift)")
    return theta0


def round_model_digest(sigma: Mapping[str, np.ndarray], dense: Mapping[str, np.ndarray]) -> bytes:
    """The digest of a round's global model as a node received it (σ by layer, and the averaged dense parameters,
    empty with ``dense-params personal``): a HideNseek evaluation message sends it instead of the model, and the
    node proves it evaluates exactly that model."""
    return reference_digest({**{SIGMA + k: v for k, v in sigma.items()}, **dense})
