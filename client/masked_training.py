"""Client side of static-mask FedAvg: decode kept values, train on the mask, return kept values.

The mask arrives coded on first contact and is kept in ``Context.state``; later
payloads are relative to its digest. A node that lost its mask cannot decode
them and says so (an error reply), and the server sends the mask again.
"""

from __future__ import annotations

import numpy as np
import torch
from fedprune.client.local_data import LocalData
from fedprune.client.local_training import TrainStats, train_as_configured
from fedprune.client.settings import ClientSettings
from fedprune.client.topk_gradients import PrunedGradientTap, pairs_payload, requested_adjustment, requested_capacities
from fedprune.kernels.convert import export_dense_state, sparsify
from fedprune.models.device import on_device, resolve_device
from fedprune.protos.codec import Expected, Manifest, TensorSpec, decode, encode
from fedprune.protos.contract import KEPT_SUFFIX, MASK_SUFFIX, ConfigKey, Kind, MetricKey, join_kept, split_kept
from fedprune.protos.flower_records import config_of, content_with_payload, payload_of
from flwr.app import ConfigRecord, Context, Message, MetricRecord

STATE_KEY = "fedprune-mask"


def stored_mask(context: Context) -> dict[str, np.ndarray] | None:
    """The mask this node holds (kept in ``Context.state`` since it last arrived), or None."""
    record = context.state.config_records.get(STATE_KEY)
    if record is None:
        return None
    return decode(record["payload"]).tensors


def expected_model_payload(template: dict[str, np.ndarray]) -> Expected:
    """What a static-mask payload for this node's model may hold: per weight tensor its kept values (at most
    the tensor's size) and, on first contact, its mask; every other tensor of the model whole."""
    specs: dict[str, TensorSpec] = {}
    optional = set()
    for name, like in template.items():
        specs[name] = TensorSpec.of(like)
        specs[name + KEPT_SUFFIX] = TensorSpec("float32", (like.size,), at_most=True)
        specs[name + MASK_SUFFIX] = TensorSpec("bool", like.shape)
        optional |= {name, name + KEPT_SUFFIX, name + MASK_SUFFIX}
    return Expected(specs, optional=optional)


def receive_masked_model(msg: Message, context: Context, template: dict[str, np.ndarray]
                         ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], Manifest]:
    """(decoded tensors, mask, manifest) from a server payload, checked against this node's model
    (``template``: its state dict) before anything is decoded; ``join_kept`` checks the rest."""
    blob = payload_of(msg)
    mask = stored_mask(context)
    decoded = decode(blob, reference=mask, expect=expected_model_payload(template))
    carried = {k[: -len(MASK_SUFFIX)]: v for k, v in decoded.tensors.items() if k.endswith(MASK_SUFFIX)}
    if carried:
        mask = carried
        context.state[STATE_KEY] = ConfigRecord({"payload": encode(mask)})
    if mask is None:
        raise ValueError("payload is relative to a mask this node does not hold")
    return decoded.tensors, mask, decoded.manifest


def train_masked(msg: Message, context: Context, settings: ClientSettings, local: LocalData,
                 model: torch.nn.Module, num_classes: int) -> Message:
    """One round of masked SGD through compact sparse layers (``kernels``): only kept weights exist,
    train and carry optimizer state; the dispatcher picks each layer's backend. When the request names
    layers to adjust (FedTiny), the reply also carries their top-K pruned-position gradient pairs."""
    template = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    tensors, mask, manifest = receive_masked_model(msg, context, template)
    state = join_kept(tensors, mask, template)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v, order="C")) for k, v in state.items()})
    config = config_of(msg)
    batch_size = int(config.get(ConfigKey.BATCH_SIZE, settings.batch_size))
    adjust = requested_adjustment(config, mask)  # FedTiny: layers whose pruned-position gradients to report
    tap = PrunedGradientTap(model, list(adjust), requested_capacities(config, adjust), mask) if adjust else None
    # the tap's running sums live on the CPU, so an adjusting round trains there; otherwise on the node's device,
    # where the dispatcher picks that device's backends
    device = torch.device("cpu") if tap is not None else resolve_device(settings.device)
    with on_device(model, device):
        sparsify(model, mask, batch=batch_size, training=True)
        if tap is not None:
            tap.attach(model)
        stats: TrainStats = train_as_configured(model, local, config, settings, num_classes, device)
    trained = {k: v.detach().numpy() for k, v in export_dense_state(model).items()}
    update = split_kept(trained, mask)
    pairs = {} if tap is None else pairs_payload(tap, mask, adjust)
    blob = encode(update, reference=mask, pairs=pairs,
                  manifest=Manifest(manifest.architecture, manifest.model_seed, manifest.density, manifest.round,
                                    Kind.STATIC_MASK_UPDATE))
    metrics = MetricRecord({MetricKey.NUM_EXAMPLES: stats.num_examples, MetricKey.TRAIN_LOSS: stats.mean_loss,
                            MetricKey.PARTITION_ID: local.partition_id, MetricKey.TRAIN_STATE_BYTES: stats.state_bytes})
    return Message(content_with_payload(blob, metrics=metrics), reply_to=msg)
