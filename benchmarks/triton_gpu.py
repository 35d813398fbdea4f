"""Triton block-sparse matmul vs dense cuBLAS on a GPU host (needs CUDA; prints the device name).

Usage: python benchmarks/triton_gpu.py [--json PATH]
For each Linear shape, density and mask structure (random unstructured, 32x32-tile structured) it prints
the median time of the Triton kernel and of torch.matmul on the same masked weight, and their ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from kernels.triton_blocksparse import blocksparse_linear, tile_index  # noqa: E402


def _time(fn, repeats: int = 50) -> float:
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
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this benchmark needs a GPU host")
        return 2
    device = torch.device("cuda")
    print("device:", torch.cuda.get_device_name(0))
    rows = []
    for n in (1024, 4096):
        for batch in (32, 256):
            x = torch.randn(batch, n, device=device)
            for density in (0.5, 0.2, 0.1, 0.05, 0.01):
                for structure in ("random", "tiles"):
                    if structure == "random":
                        mask = torch.rand(n, n, device=device) < density
                    else:
                        tiles = torch.rand(n // 32, n // 32, device=device) < density
                        mask = tiles.repeat_interleave(32, 0).repeat_interleave(32, 1)
                    weight = torch.randn(n, n, device=device) * mask
                    row_ptr, cols = tile_index(weight, 32, 32)
                    t_dense = _time(lambda w=weight, a=x: a @ w.t())
                    t_triton = _time(lambda w=weight, r=row_ptr, c=cols, a=x: blocksparse_linear(a, w, r, c))
                    row = {"n": n, "batch": batch, "density": density, "structure": structure,
                           "dense_s": t_dense, "triton_s": t_triton, "speedup": t_dense / t_triton}
                    rows.append(row)
                    print(f"{n}² b{batch} d={density} {structure:6s} dense {t_dense * 1e6:8.1f} us "
                          f"triton {t_triton * 1e6:8.1f} us  x{t_dense / t_triton:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": torch.cuda.get_device_name(0), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
