"""Pick a backend per layer from a small table of measured break-even points.

The table below was measured on the 2-core development VM (torch 2.13 CPU,
fp32) with ``fedprune bench kernels --quick`` (see BENCHMARKS.md). The rule:
estimate each backend's time as a fraction of dense-masked from the table and
take the cheapest; a backend is only a candidate when the table says it beats
dense-masked (estimated fraction < 1). On a device or dtype a backend does not
support, fall back to dense-masked with one logged warning.
"""

from __future__ import annotations

import logging
from enum import StrEnum

import torch

log = logging.getLogger(__name__)


class Backend(StrEnum):
    MASKED = "masked"
    COMPACT = "compact"
    CSR = "csr"


# Density below which CSR (int32, ``(W @ x.T).T`` + sampled weight gradient) beats dense-masked,
# per (training?, batch bucket). Measured: `fedprune bench kernels --quick` (BENCHMARKS.md, "Dispatcher table").
# Each entry is conservative over the measured shapes: Linear 1024² and 4096² (random masks) and the FL CNN's
# 512x3136 fc1 (SynFlow mask), whose CSR training step at density ~0.2 measured 0.89-1.02x at batch 1 and
# 0.91x at batch 256 on the first full run — so training and batch-256 entries sit below that.
CSR_BREAKEVEN: dict[tuple[bool, int], float] = {
    (False, 1): 0.30,
    (False, 32): 0.30,
    (False, 256): 0.15,
    (True, 1): 0.15,
    (True, 32): 0.25,
    (True, 256): 0.15,
}
# A compact (sliced) layer costs about its kept block's share of the dense layer, plus gathering the kept
# inputs and scattering the outputs, which is ~1/width of a dense layer's work per side.
COMPACT_GATHER = 2.0

_warned: set[tuple[str, str]] = set()


def _bucket(batch: int) -> int:
    return 1 if batch < 8 else 32 if batch < 128 else 256


def block_fraction(mask: torch.Tensor) -> float:
    """Share of the dense layer a compact layer computes: kept rows x kept columns (or channels)."""
    flat = mask.reshape(mask.shape[0], mask.shape[1], -1).any(-1) if mask.dim() == 4 else mask
    rows = float(flat.any(1).float().mean())
    cols = float(flat.any(0).float().mean())
    return rows * cols


def estimated_fraction(backend: Backend, mask: torch.Tensor, batch: int, training: bool) -> float:
    """Estimated time of ``backend`` as a fraction of dense-masked on this layer (from the table)."""
    if backend == Backend.MASKED:
        return 1.0
    if backend == Backend.COMPACT:
        return block_fraction(mask) + COMPACT_GATHER * (1 / mask.shape[0] + 1 / mask.shape[1])
    if mask.dim() != 2:
        return float("inf")
    density = float(mask.float().mean())
    return density / CSR_BREAKEVEN[(training, _bucket(batch))]


def _supported(backend: Backend, device: torch.device, dtype: torch.dtype) -> bool:
    if backend == Backend.CSR:
        return device.type == "cpu" and dtype == torch.float32
    return True


def choose_backend(mask: torch.Tensor, *, batch: int, training: bool, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> Backend:
    """The cheapest backend for a layer with ``mask`` (2-D Linear or 4-D Conv2d) by the table."""
    device = torch.device(device)
    candidates = [Backend.MASKED, Backend.COMPACT] + ([Backend.CSR] if mask.dim() == 2 else [])
    best, best_cost = Backend.MASKED, 1.0
    for backend in candidates:
        cost = estimated_fraction(backend, mask, batch, training)
        if cost >= best_cost:
            continue
        if not _supported(backend, device, dtype):
            key = (backend.value, f"{device.type}/{dtype}")
            if key not in _warned:
                _warned.add(key)
                log.warning("backend %s does not support %s %s; using dense-masked", backend.value,
                            device.type, dtype)
            continue
        best, best_cost = backend, cost
    return best
