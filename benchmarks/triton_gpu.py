"""Triton block-sparse matmul vs dense cuBLAS (and cuSPARSE CSR) on a GPU host; prints the device name.

Usage: python benchmarks/triton_gpu.py [--json PATH] [--quick]
For each Linear shape, batch, density and mask structure (random unstructured, 32x32-tile structured) it
checks the Triton result against dense, then prints the median time of the Triton kernel (best BLOCK_M of
32/64/128), of dense torch.matmul on the same masked weight (TF32, the precision ``tl.dot`` uses for fp32)
and of torch's CSR matmul (cuSPARSE), and the ratios dense/Triton and dense/CSR measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fedprune.kernels.triton_blocksparse import blocksparse_linear, tile_index  # noqa: E402


def _time(fn, repeats: int = 50) -> float:
    """Median seconds of ``fn`` over ``repeats`` CUDA-event-timed calls after warm-up."""
    for _ in range(5):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(repeats):
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2] / 1e3


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", default=None)
    parser.add_argument("--quick", action="store_true", help="fewer shapes (4096 only, batch 256)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU host")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = True  # same input precision as tl.dot on fp32
    device = torch.device("cuda")
    gen = torch.Generator(device=device).manual_seed(0)
    print("device:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
    rows = []
    sizes = (4096,) if args.quick else (1024, 4096, 8192)
    batches = (256,) if args.quick else (32, 256, 2048)
    for n in sizes:
        for batch in batches:
            x = torch.randn(batch, n, device=device, generator=gen)
            for density in (0.5, 0.2, 0.1, 0.05, 0.01):
                for structure in ("random", "tiles"):
                    if structure == "random":
                        mask = torch.rand(n, n, device=device, generator=gen) < density
                    else:
                        tiles = torch.rand(n // 32, n // 32, device=device, generator=gen) < density
                        mask = tiles.repeat_interleave(32, 0).repeat_interleave(32, 1)
                    weight = torch.randn(n, n, device=device, generator=gen) * mask
                    row_ptr, cols = tile_index(weight, 32, 32)
                    reference = x @ weight.t()
                    scale = reference.abs().max().item() + 1e-12
                    t_dense = _time(lambda w=weight, a=x: a @ w.t())
                    best = None
                    for block_m in (32, 64, 128):
                        out = blocksparse_linear(x, weight, row_ptr, cols, block_m=block_m)
                        err = (out - reference).abs().max().item() / scale
                        if err > 1e-2:
                            raise AssertionError(f"Triton result off by {err:.2e} (relative) at {n} {density}")
                        t = _time(partial(blocksparse_linear, x, weight, row_ptr, cols, block_m=block_m))
                        if best is None or t < best[0]:
                            best = (t, block_m, err)
                    t_triton, block_m, err = best
                    w_csr = weight.to_sparse_csr()
                    t_csr = _time(lambda w=w_csr, a=x: (w @ a.t()).t())
                    tile_share = (row_ptr[-1].item()) / ((n // 32) ** 2)
                    row = {"n": n, "batch": batch, "density": density, "structure": structure,
                           "tile_occupancy": tile_share, "dense_s": t_dense, "triton_s": t_triton,
                           "triton_block_m": block_m, "triton_rel_err": err, "csr_s": t_csr,
                           "speedup_triton": t_dense / t_triton, "speedup_csr": t_dense / t_csr}
                    rows.append(row)
                    print(f"{n:5d}² b{batch:<5d} d={density:<5} {structure:6s} tiles {tile_share:6.1%} | "
                          f"dense {t_dense * 1e6:8.1f} us | triton {t_triton * 1e6:8.1f} us (BM {block_m:3d}) "
                          f"x{t_dense / t_triton:5.2f} | csr {t_csr * 1e6:8.1f} us x{t_dense / t_csr:5.2f}",
                          flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(0),
                                               "torch": torch.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
