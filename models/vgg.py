"""VGG-11 with BatchNorm, CIFAR variant (one 512-wide classifier layer)."""

from __future__ import annotations

import torch
from torch import nn

_VGG11 = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


class VGG11BN(nn.Module):
    """VGG-11-BN for 32x32 inputs: 9.23M parameters with 10 classes."""

    def __init__(self, in_channels: int = 3, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_channels
        for item in _VGG11:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(cin, int(item), 3, padding=1), nn.BatchNorm2d(int(item)), nn.ReLU(inplace=True)]
                cin = int(item)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.features(x)
        out = torch.flatten(nn.functional.adaptive_avg_pool2d(out, 1), 1)
        return self.classifier(out)
