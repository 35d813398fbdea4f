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
from fedprune.kernels import triton_blocksparse

log = logging.getLogger(__name__)


class Backend(StrEnum):
    MASKED = "masked"
    COMPACT = "compact"
    CSR = "csr"
    BLOCKSPARSE = "blocksparse"  # GPU only: the Triton kernel over the mask's non-empty 32×32 tiles


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

# The GPU table. Forward speed-up of the Triton block-sparse kernel over cuBLAS on 32×32-tile masks, per (layer
# size in weights at least, batch at least), measured on one H200 (BENCHMARKS.md, "Triton block-sparse"): the
# smallest of that row's ratios at tile densities 0.1, 0.05 and 0.01. Layers under 4096² (launch-bound: 0.54-0.98x)
# and batches under 256 (not measured) are never candidates, nor masks with more than 10% of tiles occupied
# (an unstructured mask occupies every tile: 0.26-0.44x).
BLOCKSPARSE_SPEEDUP: tuple[tuple[int, int, float], ...] = (
    (8192 * 8192, 2048, 2.10), (8192 * 8192, 256, 1.58), (4096 * 4096, 2048, 1.89), (4096 * 4096, 256, 1.06))
BLOCKSPARSE_MAX_TILE_DENSITY = 0.1
BLOCKSPARSE_TILE = 32
# A training step does the forward matmul and two backward ones of the same size; only the forward is
# block-sparse (``kernels.blocksparse_layer``), so a step gains a third of the forward speed-up at most.
FORWARD_SHARE = 1 / 3
GPU_ONLY = frozenset({Backend.BLOCKSPARSE})

_warned: set[tuple[str, str]] = set()


def _bucket(batch: int) -> int:
    return 1 if batch < 8 else 32 if batch < 128 else 256


def block_fraction(mask: torch.Tensor) -> float:
    """Share of the dense layer a compact layer computes: kept rows x kept columns (or channels)."""
    flat = mask.reshape(mask.shape[0], mask.shape[1], -1).any(-1) if mask.dim() == 4 else mask
    rows = float(flat.any(1).float().mean())
    cols = float(flat.any(0).float().mean())
    return rows * cols


def tile_occupancy(mask: torch.Tensor, tile: int = BLOCKSPARSE_TILE) -> float:
    """Share of a 2-D mask's ``tile``×``tile`` tiles (edge tiles smaller) that keep any weight."""
    rows, cols = -(-mask.shape[0] // tile), -(-mask.shape[1] // tile)
    padded = mask.new_zeros((rows * tile, cols * tile), dtype=torch.bool)
    padded[:mask.shape[0], :mask.shape[1]] = mask.bool()
    return float(padded.reshape(rows, tile, cols, tile).any(3).any(1).float().mean())


def blocksparse_fraction(mask: torch.Tensor, batch: int, training: bool) -> float:
    """The GPU table's estimate for the Triton layer (``inf`` where it was never measured faster)."""
    if mask.dim() != 2 or tile_occupancy(mask) > BLOCKSPARSE_MAX_TILE_DENSITY:
        return float("inf")
    speedup = next((s for size, least, s in BLOCKSPARSE_SPEEDUP if mask.numel() >= size and batch >= least), None)
    if speedup is None:
        return float("inf")
    return FORWARD_SHARE / speedup + (1 - FORWARD_SHARE) if training else 1 / speedup


def estimated_fraction(backend: Backend, mask: torch.Tensor, batch: int, training: bool) -> float:
    """Estimated time of ``backend`` as a fraction of dense-masked on this layer (from the table)."""
    if backend == Backend.MASKED:
        return 1.0
    if backend == Backend.BLOCKSPARSE:
        return blocksparse_fraction(mask, batch, training)
    if backend == Backend.COMPACT:
        return block_fraction(mask) + COMPACT_GATHER * (1 / mask.shape[0] + 1 / mask.shape[1])
    if mask.dim() != 2:
        return float("inf")
    density = float(mask.float().mean())
    return density / CSR_BREAKEVEN[(training, _bucket(batch))]


def _supported(backend: Backend, device: torch.device, dtype: torch.dtype) -> bool:
    if backend == Backend.CSR:
        return device.type == "cpu" and dtype == torch.float32
    if backend == Backend.BLOCKSPARSE:
        return device.type == "cuda" and dtype == torch.float32 and triton_available()
    return True


def triton_available() -> bool:
    """Whether the Triton kernel can run here (triton importable)."""
    return triton_blocksparse.triton is not None


def choose_backend(mask: torch.Tensor, *, batch: int, training: bool, device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> Backend:
    """The cheapest backend for a layer with ``mask`` (2-D Linear or 4-D Conv2d) by the tables (the GPU table's
    backend only considered on a CUDA device)."""
    device = torch.device(device)
    candidates = [Backend.MASKED, Backend.COMPACT] + ([Backend.CSR, Backend.BLOCKSPARSE] if mask.dim() == 2 else [])
    if device.type != "cuda":
        candidates = [backend for backend in candidates if backend not in GPU_ONLY]
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
