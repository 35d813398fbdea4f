"""The Triton block-sparse kernel equals the dense-masked reference, run on CPU under TRITON_INTERPRET=1.

The interpreter must be switched on before triton is imported, so the check runs in a fresh process.
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import torch
from fedprune.kernels.masked import MaskedLinear
from fedprune.kernels.triton_blocksparse import blocksparse_linear, tile_index

g = torch.Generator().manual_seed(0)
cases = [(1, 8, 8, 0.0), (5, 40, 70, 0.1), (64, 96, 128, 0.02), (33, 64, 64, 1.0), (17, 130, 50, 0.3)]
for m, n, k, density in cases:
    weight = torch.randn(n, k, generator=g)
    mask = torch.rand(n, k, generator=g) < density
    if n > 64:
        mask[:32] = False  # whole empty tiles, the case the kernel skips
    x = torch.randn(m, k, generator=g)
    reference = MaskedLinear(weight, mask)
    row_ptr, cols = tile_index(weight * mask, 32, 32)
    got = blocksparse_linear(x, weight * mask, row_ptr, cols)
    want = reference(x).detach()
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (m, n, k, density, (got - want).abs().max())
    tiles = ((n + 31) // 32) * ((k + 31) // 32)
    assert len(cols) <= tiles
    if density == 0.0:
        assert len(cols) == 0 and not got.any()
print("ok", len(cases))
"""


def test_blocksparse_kernel_matches_reference_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600,
                            cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok 5"
