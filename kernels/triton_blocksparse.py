"""Triton block-sparse matmul for masked Linear layers on GPUs: y = x (W ⊙ M)ᵀ, skipping empty tiles.

The masked weight is cut into BLOCK_N x BLOCK_K tiles; only tiles holding at
least one kept weight are listed (a CSR over tiles), and each program
multiplies its output tile by just those. Dense cuBLAS does all tiles, so the
kernel wins when whole tiles are empty (structured or very sparse masks).
On CPU the same kernel runs under ``TRITON_INTERPRET=1`` for correctness
tests only (hundreds of times slower); timings come from a GPU host.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - triton is a Linux dependency
    triton = None


def tile_index(weight: torch.Tensor, block_n: int, block_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """CSR over tiles: (row pointer per N-tile, K-tile indices) of tiles with any nonzero weight."""
    n, k = weight.shape
    tiles_n, tiles_k = triton.cdiv(n, block_n), triton.cdiv(k, block_k)
    padded = weight.new_zeros(tiles_n * block_n, tiles_k * block_k)
    padded[:n, :k] = weight
    occupied = padded.reshape(tiles_n, block_n, tiles_k, block_k).ne(0).any(dim=3).any(dim=1)
    counts = occupied.sum(dim=1)
    row_ptr = torch.zeros(tiles_n + 1, dtype=torch.int32, device=weight.device)
    row_ptr[1:] = torch.cumsum(counts, 0).to(torch.int32)
    cols = torch.nonzero(occupied)[:, 1].to(torch.int32).contiguous()
    return row_ptr, cols


if triton is not None:

    @triton.jit
    def _blocksparse_kernel(x_ptr, w_ptr, y_ptr, row_ptr, cols, M, N, K,
                            stride_xm, stride_xk, stride_wn, stride_wk, stride_ym, stride_yn,
                            BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        start = tl.load(row_ptr + pid_n)
        stop = tl.load(row_ptr + pid_n + 1)
        for i in range(start, stop):
            kb = tl.load(cols + i)
            offs_k = kb * BLOCK_K + tl.arange(0, BLOCK_K)
            x = tl.load(x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk,
                        mask=(offs_m[:, None] < M) & (offs_k[None, :] < K), other=0.0)
            w = tl.load(w_ptr + offs_n[:, None] * stride_wn + offs_k[None, :] * stride_wk,
                        mask=(offs_n[:, None] < N) & (offs_k[None, :] < K), other=0.0)
            acc += tl.dot(x, tl.trans(w))
        tl.store(y_ptr + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn, acc,
                 mask=(offs_m[:, None] < M) & (offs_n[None, :] < N))


def blocksparse_linear(x: torch.Tensor, weight: torch.Tensor, row_ptr: torch.Tensor, cols: torch.Tensor,
                       block_m: int = 32, block_n: int = 32, block_k: int = 32) -> torch.Tensor:
    """x (M, K) @ weightᵀ (N, K) -> (M, N), visiting only the tiles listed in (row_ptr, cols)."""
    if triton is None:
        raise RuntimeError("triton is not installed")
    m, k = x.shape
    n = weight.shape[0]
    y = torch.empty((m, n), dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(m, block_m), triton.cdiv(n, block_n))
    _blocksparse_kernel[grid](x, weight, y, row_ptr, cols, m, n, k, x.stride(0), x.stride(1),
                              weight.stride(0), weight.stride(1), y.stride(0), y.stride(1),
                              BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    return y
