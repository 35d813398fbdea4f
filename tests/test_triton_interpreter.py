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


LAYER_SCRIPT = r"""
import torch
from fedprune.kernels.blocksparse_layer import BlockSparseLinear
from fedprune.kernels.masked import MaskedLinear

g = torch.Generator().manual_seed(1)
for batch, n, k in [(7, 64, 96), (3, 70, 72)]:
    weight, bias = torch.randn(n, k, generator=g), torch.randn(n, generator=g)
    mask = torch.zeros(n, k, dtype=torch.bool)
    mask[:32, 32:64] = torch.rand(32, 32, generator=g) < 0.5  # one occupied tile, the rest empty
    mask[-6:, :8] = True  # a partial edge tile
    x = torch.randn(batch, 2, k, generator=g)  # a leading batch shape, as nn.Linear takes
    layers = BlockSparseLinear(weight, mask, bias), MaskedLinear(weight, mask, bias)
    inputs = [x.clone().requires_grad_(True) for _ in layers]
    outputs = [layer(inp) for layer, inp in zip(layers, inputs)]
    assert torch.allclose(outputs[0], outputs[1], atol=1e-4), (outputs[0] - outputs[1]).abs().max()
    for out in outputs:
        (out ** 2).sum().backward()
    sparse, masked = layers
    assert torch.allclose(inputs[0].grad, inputs[1].grad, atol=1e-3)
    assert torch.allclose(sparse.weight.grad, masked.weight.grad * masked.mask, atol=1e-3)
    assert not sparse.weight.grad[~mask].any()  # pruned weights get no gradient
    assert torch.allclose(sparse.bias.grad, masked.bias.grad, atol=1e-3)
    assert torch.equal(sparse.dense_weight(), masked.dense_weight())
print("ok")
"""


def test_blocksparse_layer_trains_like_the_dense_masked_layer_under_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", LAYER_SCRIPT], env=env, capture_output=True, text=True,
                            timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"
