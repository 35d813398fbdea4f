"""Where a model trains and evaluates: the ``device`` option (``auto`` | ``cpu`` | ``cuda``) resolved on this host.

Everything a round exchanges (arrays, masks, scores) stays on the CPU as numpy; only the work moves. A
model goes to the device for one training or evaluation call and comes back (``on_device``), and the
loops move each batch to wherever the model is (``device_of``), so code that reads weights afterwards
never sees a GPU tensor. On a host without CUDA ``auto`` is the CPU and nothing changes: same code path,
same bits (the determinism test guards it).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

DEVICES = ("auto", "cpu", "cuda")


class DeviceError(ValueError):
    """A device option this host cannot honour (CUDA asked for where there is none)."""


def cuda_available() -> bool:
    """Whether torch sees a CUDA GPU here (False with a CPU-only torch build)."""
    return torch.cuda.is_available()


def resolve_device(option: str) -> torch.device:
    """``auto``: CUDA when this host has it, else the CPU; ``cuda`` without a GPU raises ``DeviceError``."""
    if option not in DEVICES:
        raise DeviceError(f"device '{option}' is not one of {', '.join(DEVICES)}")
    if option == "cuda" and not cuda_available():
        raise DeviceError("device 'cuda' asked for, but torch sees no CUDA GPU on this host "
                          f"(torch {torch.__version__}); use auto or cpu")
    if option == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    return torch.device(option)


def device_of(model: nn.Module) -> torch.device:
    """The device ``model``'s parameters are on (the CPU for a model without parameters)."""
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


@contextmanager
def on_device(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """``model`` moved to ``device`` for the block and back to the CPU after it (a no-op on the CPU)."""
    if device.type == "cpu":
        yield model
        return
    model.to(device)
    try:
        yield model
    finally:
        model.to("cpu")
