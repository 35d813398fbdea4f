"""What option checks need to know of a model built for a dataset's inputs, without building it for real.

Models are built on torch's meta device (shapes only, no memory, milliseconds), so the run settings can
refuse a density that empties a layer, or a model that cannot take the dataset's inputs, before any process
starts. A model that cannot be built for the inputs at all raises ``ValueError`` with the reason.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import torch
from fedprune.data.sources import DATASET_FACTS
from fedprune.models import build_model, prunable_names
from flwr.app import ArrayRecord, RecordDict
from flwr.common.serde import recorddict_to_proto
from torch import nn


class ModelFacts(NamedTuple):
    """What option checks need to know of a model built for a dataset's inputs."""

    prunable_layers: int
    prunable_weights: int


def smallest_density(facts: ModelFacts) -> str:
    """The least density, printed short, that keeps one weight per prunable layer (kept = round(d x weights))."""
    exact = facts.prunable_layers / facts.prunable_weights
    for digits in range(3, 18):
        text = f"{exact:.{digits}g}"
        if round(float(text) * facts.prunable_weights) >= facts.prunable_layers:
            return text
    return repr(exact)


def meta_model(model: str, dataset: str) -> nn.Module:
    """``model`` built for ``dataset``'s inputs on torch's meta device; ``ValueError`` (its reason on one line)
    if the architecture cannot be built for them (e.g. an input side it cannot halve)."""
    facts = DATASET_FACTS[dataset]
    with torch.device("meta"):
        try:
            return build_model(model, facts.input_shape, facts.num_classes)
        except ValueError as exc:
            raise ValueError(" ".join(str(exc).split())) from None


@functools.lru_cache(maxsize=32)
def model_facts(model: str, dataset: str) -> ModelFacts:
    """Prunable layers and weights of ``model`` for ``dataset``, counted as the strategies count them
    (``models.prunable_names``)."""
    net = meta_model(model, dataset)
    params = dict(net.named_parameters())
    names = prunable_names(net)
    return ModelFacts(len(names), sum(params[n].numel() for n in names))


@functools.lru_cache(maxsize=32)
def input_error(model: str, dataset: str) -> str:
    """Why ``model`` cannot take ``dataset``'s inputs, or '' if it can."""
    try:
        net = meta_model(model, dataset)
    except ValueError as exc:
        return str(exc)
    try:
        with torch.device("meta"), torch.no_grad():
            net(torch.empty((2, *DATASET_FACTS[dataset].input_shape)))
    except NotImplementedError:
        return ""  # an op without a meta kernel says nothing about the shapes
    except RuntimeError as exc:
        return " ".join(str(exc).split())
    return ""


def dense_model_bytes(model: nn.Module) -> int:
    """What dense FedAvg moves each way per client-round, to compare against: the model's state as one
    serialized ArrayRecord (Flower's own encoding of the float32 arrays)."""
    return recorddict_to_proto(RecordDict({"arrays": ArrayRecord(model.state_dict())})).ByteSize()
