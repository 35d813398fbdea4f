"""Client side of FedTiny's progressive pruning: top-K gradient magnitudes at pruned positions, coded.

The node decodes the current global model (kept values against the mask it
holds, or the coded mask when it changed), keeps every layer on its compact
sparse kernel except the layer(s) being adjusted, which run as plain dense
layers with zeros at pruned positions so autograd yields their gradient there;
everything else is frozen. One pass over the local training data accumulates
the mean gradient; only the K largest magnitudes at pruned positions (and only
nonzero ones) travel, as (index, value) pairs — never a dense gradient.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord
from torch import nn
from torch.nn import functional as F

from client.local_data import LocalData
from client.masked_training import receive_masked_model
from data import LabeledArrays
from kernels.convert import sparsify
from protos.codec import Manifest, encode
from protos.flower_records import content_with_payload
from strategies.fedtiny import GRAD
from strategies.static_mask import join_kept


def pruned_gradient_magnitudes(model: nn.Module, mask: dict[str, np.ndarray], layers: list[str],
                               data: LabeledArrays, batch_size: int) -> dict[str, np.ndarray]:
    """|mean gradient| of the loss over ``data`` w.r.t. each of ``layers``' weights, zero at active positions.

    ``model`` must hold the global weights (zeros at pruned positions) as plain layers; every layer not
    adjusted is swapped for its sparse kernel and frozen, so only the adjusted layers get gradients.
    """
    sparsify(model, {k: v for k, v in mask.items() if k not in layers}, batch=batch_size, training=True)
    params = dict(model.named_parameters())
    for name, param in params.items():
        param.requires_grad_(name in layers)
    model.train()  # BatchNorm as in training; no optimizer, no weight changes
    batches = max(1, -(-len(data) // batch_size))
    for start in range(0, len(data), batch_size):
        xb, yb = torch.from_numpy(data.x[start:start + batch_size]), torch.from_numpy(data.y[start:start + batch_size])
        (F.cross_entropy(model(xb), yb) / batches).backward()
    out = {}
    for name in layers:
        grad = params[name].grad
        magnitude = np.zeros(params[name].shape, np.float32) if grad is None else grad.abs().numpy()
        out[name] = np.where(mask[name], 0.0, magnitude).astype(np.float32)
    return out


def top_k_pairs(magnitude: np.ndarray, k: int) -> np.ndarray:
    """A tensor shaped like ``magnitude`` holding only its k largest (nonzero) entries; ties by position."""
    flat = magnitude.reshape(-1)
    order = np.argsort(-flat, kind="stable")[:k]
    order = order[flat[order] > 0]
    out = np.zeros(flat.size, dtype=np.float32)
    out[order] = flat[order]
    return out.reshape(magnitude.shape)


def topk_reply(msg: Message, context: Context, local: LocalData, model: nn.Module, batch_size: int) -> Message:
    """Answer an adjustment request: the coded top-K pairs of each requested layer."""
    tensors, mask, _ = receive_masked_model(msg, context)
    template = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    state = join_kept(tensors, mask, template)
    model.load_state_dict({k: torch.from_numpy(np.asarray(v, order="C")) for k, v in state.items()})
    config = msg.content.config_records.get("config", ConfigRecord())
    layers, ks = [str(x) for x in config["adjust-layers"]], [int(k) for k in config["adjust-k"]]
    if len(layers) != len(ks) or any(name not in mask for name in layers):
        raise ValueError(f"adjustment names unknown layers or mismatched K: {layers} / {ks}")
    magnitudes = pruned_gradient_magnitudes(model, mask, layers, local.train, batch_size)
    pairs = {GRAD + name: top_k_pairs(magnitudes[name], k) for name, k in zip(layers, ks, strict=True)}
    blob = encode(pairs, manifest=Manifest(kind="fedtiny-topk"), force={name: "INDEX_VALUES" for name in pairs})
    metrics = MetricRecord({"num-examples": len(local.train), "partition-id": local.partition_id})
    return Message(content_with_payload(blob, metrics=metrics), reply_to=msg)
