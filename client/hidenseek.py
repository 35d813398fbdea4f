"""Client side of HideNseek: rebuild θ0 from the seed, train sign scores, send one bit per kept weight.

What a node keeps in ``Context.state`` across rounds: the setup payload (mask
or its digest, θ0 digest), the last σ it received (the reference the next σ is
coded against) and the dense parameters sent with it (that round's global model, which
evaluation messages name by digest only), its own latent scores z and biases/BatchNorm
parameters (its personalized model).
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from fedprune.client.local_data import LocalData
from fedprune.client.local_loss import add_label_prior, logit_offset
from fedprune.client.local_training import local_seed, train_epochs
from fedprune.client.score_optimizer import score_optimizer
from fedprune.client.settings import ClientSettings
from fedprune.kernels.sign_supermask import apply_sign_supermask, apply_sign_supermask_sparse, fold
from fedprune.models import build_model
from fedprune.models.device import on_device, resolve_device
from fedprune.models.evaluation import evaluate
from fedprune.protos.codec import Expected, Manifest, TensorSpec, decode, encode, reference_digest
from fedprune.protos.contract import (
    DENSE_PARAMS,
    LEVEL_STEP,
    LEVELS,
    LEVELS_DIGEST,
    MASK,
    MASK_DIGEST,
    MASK_MISMATCH,
    ROUND_MODEL_DIGEST,
    SCORES,
    SIGMA,
    THETA0_DIGEST,
    ConfigKey,
    DenseParams,
    Kind,
    MetricKey,
    Record,
    granularity_of_setup_kind,
    rebuild_theta0,
    round_model_digest,
    score_of_setup_kind,
)
from fedprune.protos.flower_records import config_of, content_with_payload, payload_of, setup_of
from fedprune.pruning.schedules import data_free_mask
from fedprune.pruning.score_levels import GRIDS, check_steps, from_levels, initial_levels, level_steps, signs_of_levels
from fedprune.pruning.sign_aggregation import ClientRound, SignRule, sign_rule
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict

STATE_SETUP, STATE_SIGMA, STATE_SCORES, STATE_DENSE = "hns-setup", "hns-sigma", "hns-scores", "hns-dense"
STATE_LEVELS = "hns-levels"  # the grid levels of the global scores this node last received
STATE_ROUND_DENSE = "hns-round-dense"  # the averaged dense parameters this node last received (beside its σ)
STATE_REBUILT_MASK = "hns-rebuilt-mask"  # the mask this node rebuilt from θ0 (matched the server's digest)
STATE_PRIOR = "hns-label-prior"  # log label frequencies a logit-adjusted node trained with (its personal bias)


@functools.lru_cache(maxsize=4)
def _recomputed_mask(architecture: str, seed: int, input_shape: tuple, num_classes: int, score: str,
                     density: float, granularity: str = "weight") -> dict[str, np.ndarray]:
    model = build_model(architecture, input_shape, num_classes, seed=seed)
    return data_free_mask(model, score, density, seed, granularity=granularity)


def _stored(context: Context, key: str) -> bytes | None:
    record = context.state.config_records.get(key)
    return record["payload"] if record is not None else None


def _store(context: Context, key: str, blob: bytes) -> None:
    context.state[key] = ConfigRecord({"payload": blob})


def _rebuilt_mask(context: Context | None, manifest: Manifest, input_shape: tuple, num_classes: int,
                  expected: bytes) -> dict[str, np.ndarray]:
    """The mask this node rebuilds from θ0 (SynFlow: seconds), checked against the server's digest.

    Kept in ``Context.state`` for the run once it matched, so a deployed node, whose every message runs
    in a new process, rebuilds it once; a kept copy is used only if it still has that digest."""
    blob = _stored(context, STATE_REBUILT_MASK) if context is not None else None
    if blob is not None:
        kept = {k[len(MASK):]: v for k, v in decode(blob).tensors.items() if k.startswith(MASK)}
        if reference_digest(kept) == expected:
            return kept
    score = score_of_setup_kind(manifest.kind)
    masks = _recomputed_mask(manifest.architecture, manifest.model_seed, input_shape, num_classes, score,
                             manifest.density, granularity_of_setup_kind(manifest.kind))
    if reference_digest(masks) != expected:
        raise ValueError(MASK_MISMATCH)
    if context is not None:
        _store(context, STATE_REBUILT_MASK, encode({MASK + k: v for k, v in masks.items()}))
    return masks


class Setup:
    """What a node derives from the setup payload: mask, |θ0| and sign(θ0) over kept weights, θ0 itself.
    ``context``: where a mask rebuilt from θ0 is kept for the run (``None``: rebuild it)."""

    def __init__(self, blob: bytes, input_shape: tuple, num_classes: int, context: Context | None = None) -> None:
        decoded = decode(blob)
        m = decoded.manifest
        self.manifest = m
        self.theta0 = rebuild_theta0(m.architecture, m.model_seed, input_shape, num_classes,
                                     decoded.tensors[THETA0_DIGEST].tobytes())
        masks = {k[len(MASK):]: v for k, v in decoded.tensors.items() if k.startswith(MASK)}
        if not masks:
            masks = _rebuilt_mask(context, m, input_shape, num_classes, decoded.tensors[MASK_DIGEST].tobytes())
        self.mask = masks
        self.magnitude = {k: np.abs(self.theta0[k][v]).astype(np.float32) for k, v in masks.items()}
        self.initial_signs = {k: np.where(self.theta0[k][v] >= 0, 1, -1).astype(np.int8) for k, v in masks.items()}


def _setup(msg: Message, context: Context, input_shape: tuple, num_classes: int) -> tuple[Setup, bool]:
    blob = setup_of(msg)
    first_contact = blob is not None
    if blob is None:
        blob = _stored(context, STATE_SETUP)
        if blob is None:
            raise ValueError("message is relative to a setup this node does not hold")
    setup = Setup(blob, input_shape, num_classes, context)
    if first_contact:
        _store(context, STATE_SETUP, blob)
    return setup, first_contact


def expected_round_payload(setup: Setup, levels: bool = False) -> Expected:
    """A round payload for this node's model: σ over every layer's kept weights, optionally the global
    scores (``SCORE_DOWNLINK`` rules) and the dense parameters (``dense-params averaged``); with ``levels``,
    the global scores as grid levels, their steps and digest instead of σ (``pruning.score_levels``)."""
    signs = {SIGMA + k: TensorSpec("sign", v.shape) for k, v in setup.magnitude.items()}
    scores = {SCORES + k: TensorSpec("float32", v.shape) for k, v in setup.magnitude.items()}
    dense = {k: TensorSpec.of(v) for k, v in setup.theta0.items() if k not in setup.mask}
    if levels:
        grid = {LEVELS + k: TensorSpec("int32", v.shape) for k, v in setup.magnitude.items()}
        grid |= {LEVEL_STEP + k: TensorSpec("float32", (1,)) for k in setup.magnitude}
        grid[LEVELS_DIGEST] = TensorSpec("uint8", (16,))
        return Expected({**grid, **dense}, optional=set(dense))
    return Expected({**signs, **scores, **dense}, optional={*scores, *dense})


def _receive(msg: Message, context: Context, setup: Setup, first_contact: bool) -> dict[str, np.ndarray]:
    """Decode the round payload against the σ this node holds (or, for grid levels, the levels it holds);
    remember the new σ (and levels)."""
    step = float(config_of(msg).get(ConfigKey.SCORE_LEVELS, 0.0))
    if step:
        return _receive_levels(msg, context, setup, step, first_contact)
    if first_contact:
        reference = setup.initial_signs
    else:
        stored = _stored(context, STATE_SIGMA)
        if stored is None:
            raise ValueError("σ is coded against a copy this node does not hold")
        reference = {k[len(SIGMA):]: v for k, v in decode(stored).tensors.items()}
    tensors = decode(payload_of(msg), reference={SIGMA + k: v for k, v in reference.items()},
                     expect=expected_round_payload(setup)).tensors
    sigma = {k: tensors[SIGMA + k] for k in setup.mask}
    _store(context, STATE_SIGMA, encode({SIGMA + k: v for k, v in sigma.items()}))
    return tensors


def _receive_levels(msg: Message, context: Context, setup: Setup, step: float,
                    first_contact: bool) -> dict[str, np.ndarray]:
    """The global scores as grid levels (grid step ``step`` × RMS|θ0|), coded whole or as changes to the levels
    this node holds — or, when the message brings the setup (first contact, or the server forgot this node's
    copy), to the levels of its initial scores (``initial_levels``). The rebuilt levels must match the server's
    digest (else this round fails and the server starts over with this node next time). Returns the payload
    with σ and the scores it implies, as a σ payload would hold them."""
    if not (np.isfinite(step) and step > 0):
        raise ValueError(f"score step {step} is not a finite positive number")
    grid = str(config_of(msg).get(ConfigKey.SCORE_GRID, "uniform"))
    if grid not in GRIDS:
        raise ValueError(f"score grid '{grid}' is not one of {GRIDS}")
    stored = None if first_contact else _stored(context, STATE_LEVELS)
    if stored is not None:
        held = decode(stored).tensors
    else:
        start = initial_levels(setup.magnitude, setup.initial_signs, level_steps(setup.magnitude, step), grid)
        held = {LEVELS + k: v for k, v in start.items()}
    tensors = decode(payload_of(msg), reference=held, expect=expected_round_payload(setup, levels=True)).tensors
    levels = {k: tensors[LEVELS + k] for k in setup.mask}
    steps = {k: tensors[LEVEL_STEP + k] for k in setup.mask}
    check_steps(steps, setup.mask)
    received = {LEVELS + k: v for k, v in levels.items()}
    if reference_digest(received) != tensors[LEVELS_DIGEST].tobytes():
        raise ValueError("the levels rebuilt here differ from the server's (digest mismatch)")
    sigma = signs_of_levels(levels)
    _store(context, STATE_LEVELS, encode(received))
    _store(context, STATE_SIGMA, encode({SIGMA + k: v for k, v in sigma.items()}))
    scores = from_levels(levels, steps, grid)
    return {**tensors, **{SIGMA + k: v for k, v in sigma.items()}, **{SCORES + k: v for k, v in scores.items()}}


def _dense_params(tensors: dict[str, np.ndarray], context: Context, setup: Setup, mode: str) -> dict[str, np.ndarray]:
    dense = {k: v for k, v in setup.theta0.items() if k not in setup.mask}
    if mode == DenseParams.AVERAGED:
        dense.update({k: tensors[k] for k in dense if k in tensors})
    else:
        stored = _stored(context, STATE_DENSE)
        if stored is not None:
            dense.update(decode(stored).tensors)
    return dense


def _model(settings: ClientSettings, input_shape: tuple, num_classes: int, setup: Setup,
           dense: dict[str, np.ndarray], scores: dict[str, np.ndarray],
           train_batch: int | None = None, device: torch.device | None = None) -> tuple[torch.nn.Module, dict]:
    """The sign-supermask model; for training, Linear layers the dispatcher prices as CSR run compact (on
    ``device``, the dispatcher's choice for that device: the model is built there; move it back after)."""
    model = build_model(setup.manifest.architecture, input_shape, num_classes)
    state = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in dense.items()}
    model.load_state_dict({**model.state_dict(), **state})
    if device is not None:
        model.to(device)
    if train_batch is None:
        return model, apply_sign_supermask(model, setup.mask, setup.magnitude, scores)
    return model, apply_sign_supermask_sparse(model, setup.mask, setup.magnitude, scores, batch=train_batch)


def _checked_rule(aggregation: str, dense_mode: str, settings: ClientSettings) -> SignRule:
    """The aggregation rule the server asks for; ``ValueError`` for a rule or dense-params mode this client
    cannot follow."""
    rule = sign_rule(aggregation)
    if dense_mode not in DENSE_PARAMS:
        raise ValueError(f"dense-params '{dense_mode}' is not one of {DENSE_PARAMS}")
    rule.check_client(settings.score_optimizer)
    return rule


def train_hidenseek(msg: Message, context: Context, settings: ClientSettings, local: LocalData,
                    input_shape: tuple, num_classes: int) -> Message:
    """One local round: start z from σ·|θ0| (or the global scores), train, send bits coded against σ."""
    config = config_of(msg)
    dense_mode = str(config.get(ConfigKey.DENSE_PARAMS))
    rule = _checked_rule(str(config.get(ConfigKey.AGGREGATION)), dense_mode, settings)
    setup, first_contact = _setup(msg, context, input_shape, num_classes)
    tensors = _receive(msg, context, setup, first_contact)
    sigma = {k: tensors[SIGMA + k] for k in setup.mask}
    lr = float(config.get(ConfigKey.SCORE_LR, settings.score_lr))
    epochs = int(config.get(ConfigKey.LOCAL_EPOCHS, settings.local_epochs))
    batch_size = int(config.get(ConfigKey.BATCH_SIZE, settings.batch_size))
    server_round = int(config.get(ConfigKey.SERVER_ROUND, 0))
    # How far one round of local training can move a score (tally: the scale of a client's bits).
    reach = lr * epochs * -(-len(local.train) // batch_size)
    round_ = ClientRound(sigma=sigma, magnitude=setup.magnitude, received=tensors, reach=reach, seed=settings.seed,
                         server_round=server_round, partition_id=local.partition_id,
                         moved_share=float(config.get(ConfigKey.MOVED_SHARE, settings.moved_share)),
                         slot=int(config.get(ConfigKey.TALLY_SLOT, 0)),
                         slots=max(1, int(config.get(ConfigKey.TALLY_SLOTS, 1))))
    start = rule.start(round_)
    dense = _dense_params(tensors, context, setup, dense_mode)
    received_dense = {k: tensors[k] for k in setup.theta0 if k not in setup.mask and k in tensors}
    _store(context, STATE_ROUND_DENSE, encode(received_dense if dense_mode == DenseParams.AVERAGED else {}))
    device = resolve_device(settings.device)
    model, latent = _model(settings, input_shape, num_classes, setup, dense, start, train_batch=batch_size,
                           device=device)
    optimizer = score_optimizer(settings.score_optimizer, model, latent, setup.magnitude, setup.theta0, lr,
                                settings.score_momentum)
    seed = local_seed(settings.seed, server_round, local.partition_id)
    offset = logit_offset(settings.resolved_local_loss(), local.train.y, num_classes)
    with on_device(model, device):  # back on the CPU after training
        stats = train_epochs(model, local.train, optimizer, epochs=epochs, batch_size=batch_size, seed=seed,
                             logit_offset=offset)
    if offset is not None:
        _store(context, STATE_PRIOR, encode({"label-prior": offset.numpy()}))
    scores = {k: v.detach().numpy().copy() for k, v in latent.items()}
    state = model.state_dict()
    trained_dense = {k: state[k].detach().numpy().copy() for k in setup.theta0 if k not in setup.mask}
    _store(context, STATE_SCORES, encode(scores))
    _store(context, STATE_DENSE, encode(trained_dense))

    upload = rule.upload(scores, start, round_)
    if dense_mode == DenseParams.AVERAGED:
        upload.update(trained_dense)
    m = setup.manifest
    # in the coded exchange (score levels) the dense parameters travel as float16 both ways
    f16 = {k: "DENSE_F16" for k in trained_dense if k in upload} if config.get(ConfigKey.SCORE_LEVELS) else None
    blob = encode(upload, reference={SIGMA + k: v for k, v in sigma.items()}, force=f16,
                  manifest=Manifest(m.architecture, m.model_seed, m.density, server_round, Kind.HIDENSEEK_UPDATE))
    local_flips = sum(int(((scores[k] >= 0) != (sigma[k] > 0)).sum()) for k in scores)
    metrics = MetricRecord({MetricKey.NUM_EXAMPLES: stats.num_examples, MetricKey.TRAIN_LOSS: stats.mean_loss,
                            MetricKey.PARTITION_ID: local.partition_id, MetricKey.TALLY_REACH: reach,
                            MetricKey.TRAIN_STATE_BYTES: stats.state_bytes,
                            MetricKey.LOCAL_FLIP_RATE: local_flips / max(1, sum(v.size for v in scores.values()))})
    return Message(content_with_payload(blob, metrics=metrics), reply_to=msg)


def personal_model(context: Context, settings: ClientSettings, setup: Setup, dense: dict[str, np.ndarray],
                   input_shape: tuple, num_classes: int) -> torch.nn.Module | None:
    """The node's own folded model: its scores z and dense parameters over ``dense``, plus its label prior
    in the last bias when it trained logit-adjusted (None before it has trained)."""
    scores_blob, dense_blob = _stored(context, STATE_SCORES), _stored(context, STATE_DENSE)
    if scores_blob is None or dense_blob is None:
        return None
    own = {**dense, **decode(dense_blob).tensors}
    model = fold(_model(settings, input_shape, num_classes, setup, own, decode(scores_blob).tensors)[0])
    prior_blob = _stored(context, STATE_PRIOR)
    if prior_blob is not None:
        add_label_prior(model, decode(prior_blob).tensors["label-prior"])
    return model


def evaluate_hidenseek(msg: Message, context: Context, settings: ClientSettings, local: LocalData,
                       input_shape: tuple, num_classes: int) -> Message:
    """Accuracy on the local test split of the personal model (own z, own dense, own label prior) and of the
    global model this round started from (the σ and dense parameters this node was sent; the message holds
    their digest, and a node that holds another model refuses rather than report on it)."""
    setup, _ = _setup(msg, context, input_shape, num_classes)
    digest = decode(payload_of(msg), expect=Expected({ROUND_MODEL_DIGEST: TensorSpec("uint8", (16,))}))
    sigma_blob, dense_blob = _stored(context, STATE_SIGMA), _stored(context, STATE_ROUND_DENSE)
    if sigma_blob is None or dense_blob is None:
        raise ValueError("evaluation of a round model this node was never sent")
    sigma = {k[len(SIGMA):]: v for k, v in decode(sigma_blob).tensors.items()}
    round_dense = decode(dense_blob).tensors
    if round_model_digest(sigma, round_dense) != digest.tensors[ROUND_MODEL_DIGEST].tobytes():
        raise ValueError("the round model held here differs from the server's (round model digest mismatch)")
    global_dense = {**{k: v for k, v in setup.theta0.items() if k not in setup.mask}, **round_dense}
    global_model, _ = _model(settings, input_shape, num_classes, setup, global_dense,
                             {k: sigma[k] * setup.magnitude[k] for k in setup.mask})
    _, global_acc = evaluate(fold(global_model), local.test.x, local.test.y, settings.eval_batch_size)
    personal = personal_model(context, settings, setup, global_dense, input_shape, num_classes)
    personal_acc = global_acc
    if personal is not None:
        _, personal_acc = evaluate(personal, local.test.x, local.test.y, settings.eval_batch_size)
    return Message(RecordDict({Record.METRICS: MetricRecord({
        MetricKey.NUM_EXAMPLES: len(local.test), MetricKey.PERSONAL_ACCURACY: personal_acc,
        MetricKey.GLOBAL_ACCURACY: global_acc})}), reply_to=msg)
