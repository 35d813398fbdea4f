"""Small CNNs: the FL CNN for 28x28 inputs (with and without BatchNorm) and a CNN for 8x8 digits."""

from __future__ import annotations

import torch
from torch import nn


class FLCNN(nn.Module):
    """The FedAvg paper's CNN: conv5x5(32)-pool-conv5x5(64)-pool-FC512-FC10 (1,663,370 params).

    ``batch_norm=True`` adds BatchNorm after each conv, which FedTiny's adaptive
    BN selection needs.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, batch_norm: bool = False,
                 image_size: int = 28) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> list[nn.Module]:
            layers: list[nn.Module] = [nn.Conv2d(cin, cout, 5, padding=2)]
            if batch_norm:
                layers.append(nn.BatchNorm2d(cout))
            layers += [nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            return layers

        self.features = nn.Sequential(*block(in_channels, 32), *block(32, 64))
        side = image_size // 4
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * side * side, 512), nn.ReLU(inplace=True), nn.Linear(512, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 digits: fast enough for end-to-end tests on two cores.

    ``batch_norm=True`` (``digits-cnn-bn``) adds BatchNorm after each conv, for FedTiny tests.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, batch_norm: bool = False) -> None:
        super().__init__()

        def conv(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), *([nn.BatchNorm2d(cout)] if batch_norm else []),
                    nn.ReLU(inplace=True)]

        self.features = nn.Sequential(*conv(in_channels, 16), *conv(16, 32), nn.MaxPool2d(2))
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(inplace=True), nn.Linear(64, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
