"""Masks at tile granularity: whole 32×32 tiles of each weight's GEMM view kept or pruned.

The Triton block-sparse kernel (``kernels.triton_blocksparse``) skips whole 32×32 tiles; on a GPU it beats
cuBLAS only when a mask's kept weights come in whole tiles (BENCHMARKS.md, "Triton block-sparse"). A keep
rule here turns any score (``pruning.scores``) into such a mask: each weight's scores are viewed as its
GEMM matrix (a Conv2d weight ``(out, in, kh, kw)`` as ``(out, in·kh·kw)``, what im2col multiplies), cut
into 32×32 tiles (edge tiles smaller), a tile scores the sum of its weights' scores, and the global top-k
rule (``global_topk_mask``: exact count, ties to the lowest position, at least one per layer) keeps
``round(density × tiles)`` tiles over all layers. Density is exact in tiles; in weights it differs by the
edge tiles' smaller size.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as functional
from fedprune.kernels.dispatch import tile_occupancy
from fedprune.pruning.scores import Scores, global_topk_mask

TILE = 32
KeepRule = Callable[[Scores, float], dict[str, np.ndarray]]


def gemm_view(tensor: torch.Tensor) -> torch.Tensor:
    """A weight as the matrix its layer multiplies: rows are outputs, columns everything else."""
    return tensor.reshape(tensor.shape[0], -1) if tensor.dim() > 1 else tensor.reshape(1, -1)


def tile_grid(shape: torch.Size | tuple[int, ...], tile: int = TILE) -> tuple[int, int]:
    """Tiles along the rows and the columns of a weight of ``shape``'s GEMM view."""
    rows, cols = shape[0] if len(shape) > 1 else 1, math.prod(shape[1:]) if len(shape) > 1 else shape[0]
    return math.ceil(rows / tile), math.ceil(cols / tile)


def tile_scores(scores: Scores, tile: int = TILE) -> Scores:
    """Each layer's scores summed per tile (float64): a ``tile_grid``-shaped tensor per layer."""
    summed = {}
    for name, score in scores.items():
        matrix = gemm_view(score.double())
        rows, cols = tile_grid(score.shape, tile)
        padded = functional.pad(matrix, (0, cols * tile - matrix.shape[1], 0, rows * tile - matrix.shape[0]))
        summed[name] = padded.reshape(rows, tile, cols, tile).sum(dim=(1, 3))
    return summed


def expand_tiles(kept_tiles: np.ndarray, shape: tuple[int, ...], tile: int = TILE) -> np.ndarray:
    """The weight mask of ``shape`` that keeps exactly the weights inside ``kept_tiles``."""
    full = np.repeat(np.repeat(kept_tiles, tile, axis=0), tile, axis=1)
    view_shape = (shape[0], math.prod(shape[1:])) if len(shape) > 1 else (1, shape[0])
    return np.ascontiguousarray(full[:view_shape[0], :view_shape[1]]).reshape(shape)


def tile_topk_mask(scores: Scores, density: float, tile: int = TILE) -> dict[str, np.ndarray]:
    """Keep the ``round(density × tiles)`` highest-scoring tiles over all layers (at least one per layer)."""
    kept_tiles = global_topk_mask(tile_scores(scores, tile), density)
    return {name: expand_tiles(kept_tiles[name], tuple(scores[name].shape), tile) for name in scores}


def kept_tile_fraction(mask: dict[str, np.ndarray], tile: int = TILE) -> float:
    """Share of all tiles with any kept weight over the layers (what the block-sparse kernel computes)."""
    kept = total = 0
    for weights in mask.values():
        tiles = math.prod(tile_grid(weights.shape, tile))
        kept += round(tile_occupancy(gemm_view(torch.from_numpy(weights)), tile) * tiles)
        total += tiles
    return kept / total


MASK_GRANULARITIES: dict[str, KeepRule] = {"weight": global_topk_mask, "tile32": tile_topk_mask}


def keep_rule(granularity: str) -> KeepRule:
    """The keep rule for ``--mask-granularity``: single weights or whole 32×32 tiles."""
    if granularity not in MASK_GRANULARITIES:
        raise ValueError(f"unknown mask granularity '{granularity}'; choose one of {sorted(MASK_GRANULARITIES)}")
    return MASK_GRANULARITIES[granularity]
