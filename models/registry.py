"""Build a model by name for a dataset's input shape, and name the tensors pruning may cut."""

from __future__ import annotations

from collections.abc import Callable

import torch
from fedprune.models.cnn import FLCNN, DigitsCNN
from fedprune.models.resnet import ResNet18
from fedprune.models.vgg import VGG11BN
from torch import nn

MODELS: dict[str, Callable[[tuple[int, int, int], int], nn.Module]] = {
    "fl-cnn": lambda shape, k: FLCNN(shape[0], k, batch_norm=False, image_size=shape[1]),
    "fl-cnn-bn": lambda shape, k: FLCNN(shape[0], k, batch_norm=True, image_size=shape[1]),
    "digits-cnn": lambda shape, k: DigitsCNN(shape[0], k),
    "digits-cnn-bn": lambda shape, k: DigitsCNN(shape[0], k, batch_norm=True),
    "resnet18": lambda shape, k: ResNet18(shape[0], k),
    "vgg11-bn": lambda shape, k: VGG11BN(shape[0], k),
}

# Architectures with BatchNorm layers (FedTiny's adaptive BN selection needs them).
BATCHNORM_MODELS = frozenset({"fl-cnn-bn", "digits-cnn-bn", "resnet18", "vgg11-bn"})

_DEFAULTS = {"fashion-mnist": "fl-cnn", "digits": "digits-cnn", "cifar10": "resnet18"}


def default_model_for(dataset: str) -> str:
    """The architecture fedprune uses for ``dataset`` when none is named."""
    return _DEFAULTS[dataset]


def build_model(name: str, input_shape: tuple[int, int, int], num_classes: int = 10,
                seed: int | None = None) -> nn.Module:
    """Instantiate ``name``; with ``seed`` the initial weights are reproducible anywhere."""
    if name not in MODELS:
        raise ValueError(f"unknown model '{name}'; choose one of {sorted(MODELS)}")
    if name in ("fl-cnn", "fl-cnn-bn") and input_shape[1] % 4:
        raise ValueError(f"model '{name}' needs an input side divisible by 4, got {input_shape}")
    if seed is None:
        model = MODELS[name](input_shape, num_classes)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = MODELS[name](input_shape, num_classes)
    model.synflow_input_shape = tuple(input_shape)  # data-free scores feed an all-ones input of this shape
    return model


def prunable_names(model: nn.Module) -> list[str]:
    """Parameter names pruning may cut: conv and linear weights (never biases or BatchNorm)."""
    names = []
    for module_name, module in model.named_modules():
        if isinstance(module, nn.Conv2d | nn.Linear):
            names.append(f"{module_name}.weight" if module_name else "weight")
    return names
