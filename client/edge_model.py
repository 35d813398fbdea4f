"""The model an edge node keeps for local inference: its latest trained model, folded and compact.

After every training round the ClientApp of a node whose node config names a ``model-dir``
writes ``edge-model.pt`` there (atomically: temp file + rename, so the inference server never
reads half a file). It holds the *folded* weights in compact form: for every masked layer
only the kept values (HideNseek: |θ0| ⊙ sign(z) with the node's own scores, i.e. its
personalized model; static-mask: the trained kept values) and the mask as packed bits; every
other tensor (dense FedAvg: all of them) whole; plus metadata (strategy, round, density,
architecture, input shape). ``load_edge_model`` rebuilds the architecture and swaps masked
layers for the dispatcher's inference kernels (``kernels.convert.export_for_inference``).
Only tensors and plain values are stored, so it loads with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fedprune.client.hidenseek import STATE_SETUP, Setup, _stored, personal_model
from fedprune.client.masked_training import stored_mask
from fedprune.client.settings import ClientSettings
from fedprune.kernels.convert import export_for_inference
from fedprune.models import build_model
from fedprune.protos.codec import decode
from fedprune.protos.contract import MASK_SUFFIX, ConfigKey, NodeKey, Record, Task, join_kept
from fedprune.protos.flower_records import config_of, payload_of
from flwr.app import Context, Message
from torch import nn

from fedprune.atomic_file import write_atomically

EDGE_MODEL_NAME = "edge-model.pt"
FORMAT_VERSION = 1


@dataclass
class EdgeModel:
    """A loaded edge model: the compact inference module and what describes it."""

    module: nn.Module
    strategy: str
    round: int
    density: float
    size_bytes: int
    memory_bytes: int
    architecture: str
    input_shape: tuple[int, int, int]
    num_classes: int
    personalized: bool

    @torch.no_grad()
    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits for a float32 batch shaped (N, *input_shape)."""
        return self.module(torch.from_numpy(np.array(x, dtype=np.float32))).numpy()  # a writable copy


def _density(mask: dict[str, np.ndarray]) -> float:
    total = sum(m.size for m in mask.values())
    return float(sum(int(m.sum()) for m in mask.values()) / total) if total else 1.0


def save_edge_model(model_dir: str | Path, *, state: dict[str, torch.Tensor], mask: dict[str, np.ndarray],
                    strategy: str, server_round: int, architecture: str, input_shape: tuple[int, ...],
                    num_classes: int, personalized: bool) -> Path:
    """Write ``model_dir/edge-model.pt`` atomically; return its path."""
    directory = Path(model_dir).expanduser()
    directory.mkdir(parents=True, exist_ok=True)
    kept, whole, bits = {}, {}, {}
    for name, value in state.items():
        value = value.detach().cpu().float().contiguous() if value.is_floating_point() else value.detach().cpu()
        if name in mask:
            flat = torch.from_numpy(np.asarray(mask[name], dtype=bool).reshape(-1))
            kept[name] = value.reshape(-1)[flat].clone()
            bits[name] = {"shape": [int(v) for v in np.shape(mask[name])],
                          "bits": torch.from_numpy(np.packbits(flat.numpy()))}
        else:
            whole[name] = value.clone()
    payload = {
        "format": FORMAT_VERSION, "strategy": strategy, "round": int(server_round), "density": _density(mask),
        "architecture": architecture, "input_shape": [int(v) for v in input_shape],
        "num_classes": int(num_classes), "personalized": bool(personalized),
        "kept": kept, "mask": bits, "state": whole,
    }
    return write_atomically(directory / EDGE_MODEL_NAME, lambda tmp: torch.save(payload, tmp))


def load_edge_model(path: str | Path) -> EdgeModel:
    """Rebuild the stored model with compact inference layers (masked weights sliced / CSR)."""
    path = Path(path)
    payload: dict[str, Any] = torch.load(path, weights_only=True)
    if payload.get("format") != FORMAT_VERSION:
        raise ValueError(f"{path}: edge model format {payload.get('format')!r}, expected {FORMAT_VERSION}")
    shape = tuple(int(v) for v in payload["input_shape"])
    model = build_model(payload["architecture"], shape, int(payload["num_classes"]))
    state = dict(payload["state"])
    mask = {}
    for name, packed in payload["mask"].items():
        size = int(np.prod(packed["shape"]))
        flat = np.unpackbits(packed["bits"].numpy(), count=size).astype(bool)
        mask[name] = flat.reshape(packed["shape"])
        values = payload["kept"][name]
        if values.numel() != int(flat.sum()):
            raise ValueError(f"{path}: {values.numel()} kept values for {int(flat.sum())} kept positions of {name}")
        full = torch.zeros(size, dtype=values.dtype)
        full[torch.from_numpy(flat)] = values
        state[name] = full.reshape(packed["shape"])
    model.load_state_dict(state)
    module = export_for_inference(model, mask)
    memory = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    return EdgeModel(module, str(payload["strategy"]), int(payload["round"]), float(payload["density"]),
                     path.stat().st_size, int(memory), str(payload["architecture"]), shape,
                     int(payload["num_classes"]), bool(payload["personalized"]))


def _hidenseek_personal(context: Context, settings: ClientSettings, input_shape: tuple,
                        num_classes: int) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """The node's own model after training: own scores z, dense params and label prior, folded."""
    setup = Setup(_stored(context, STATE_SETUP), input_shape, num_classes, context)
    dense = {k: v for k, v in setup.theta0.items() if k not in setup.mask}
    return personal_model(context, settings, setup, dense, input_shape, num_classes).state_dict(), setup.mask


def _masked_trained(reply: Message, context: Context, template: dict[str, np.ndarray]
                    ) -> tuple[dict[str, torch.Tensor], dict[str, np.ndarray]]:
    """The trained kept values this node just sent, joined back onto its mask."""
    mask = stored_mask(context)
    tensors = decode(payload_of(reply), reference=mask).tensors
    tensors = {k: v for k, v in tensors.items() if not k.endswith(MASK_SUFFIX)}
    state = join_kept(tensors, mask, template)
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}, mask


def export_after_training(reply: Message, msg: Message, context: Context, settings: ClientSettings,
                          input_shape: tuple, num_classes: int) -> Path | None:
    """Keep the model this node just trained in node config's ``model-dir`` (no-op without one)."""
    model_dir = context.node_config.get(NodeKey.MODEL_DIR)
    if not model_dir or reply.has_error():
        return None
    config = config_of(msg)
    task = config.get(ConfigKey.TASK)
    server_round = int(config.get(ConfigKey.SERVER_ROUND, 0))
    if task == Task.HIDENSEEK:
        state, mask = _hidenseek_personal(context, settings, input_shape, num_classes)
        personalized = True
    elif task == Task.MASKED_SGD:
        template = {k: v.numpy() for k, v in build_model(settings.model, input_shape, num_classes)
                    .state_dict().items()}
        state, mask = _masked_trained(reply, context, template)
        personalized = False
    else:
        state, mask, personalized = reply.content.array_records[Record.ARRAYS].to_torch_state_dict(), {}, False
    return save_edge_model(model_dir, state=state, mask=mask, strategy=settings.strategy, server_round=server_round,
                           architecture=settings.model, input_shape=input_shape, num_classes=num_classes,
                           personalized=personalized)
