"""``fedprune bench kernels``: each backend against dense-masked, timed in the same process.

Per layer (Linear 1024² and 4096²; Conv 64→64 and 128→128 at 32² and 16²) and per
model (FL CNN, FL CNN-BN, ResNet-18) at several densities, batch sizes, forward
and forward+backward: median seconds of each backend and of dense-masked, their
ratio, and the training-state bytes (parameters + gradients + Adam state, summed
over the real tensors after one optimizer step). Writes JSON and a Markdown table.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from fedprune.kernels.compact import CompactConv2d, CompactLinear
from fedprune.kernels.convert import sparsify
from fedprune.kernels.csr import CSRLinear
from fedprune.kernels.dispatch import Backend, choose_backend
from fedprune.kernels.masked import MaskedConv2d, MaskedLinear
from fedprune.models import build_model
from fedprune.pruning.schedules import data_free_mask
from torch import nn

LAYER_BACKENDS = {"linear": (Backend.COMPACT, Backend.CSR), "conv": (Backend.COMPACT,)}


def _paired_times(reference, candidate, repeats: int, min_seconds: float = 0.3) -> tuple[float, float]:
    """Median times of two callables run alternately, so machine noise hits both alike."""
    reference()
    candidate()
    ref_times, cand_times, start = [], [], time.perf_counter()
    while len(ref_times) < repeats or (time.perf_counter() - start < min_seconds and len(ref_times) < 50):
        for fn, times in ((reference, ref_times), (candidate, cand_times)):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(ref_times), statistics.median(cand_times)


def _random_mask(shape: tuple[int, ...], density: float, rng: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=rng) < density


def _layer(kind: str, backend: Backend, weight: torch.Tensor, mask: torch.Tensor) -> nn.Module:
    if kind == "linear":
        cls = {Backend.MASKED: MaskedLinear, Backend.COMPACT: CompactLinear, Backend.CSR: CSRLinear}[backend]
        return cls(weight, mask, torch.zeros(weight.shape[0]))
    cls = {Backend.MASKED: MaskedConv2d, Backend.COMPACT: CompactConv2d}[backend]
    return cls(weight, mask, torch.zeros(weight.shape[0]), padding=1)


def _step_fn(module: nn.Module, x: torch.Tensor, backward: bool):
    if not backward:
        def forward():
            with torch.no_grad():
                module(x)
        return forward

    def train_step():
        module.zero_grad(set_to_none=True)
        module(x).sum().backward()
    return train_step


def training_state_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Bytes of parameters, their gradients and Adam state after one real optimizer step."""
    module = copy.deepcopy(module)
    optimizer = torch.optim.Adam([p for p in module.parameters() if p.requires_grad], lr=1e-3)
    optimizer.zero_grad()
    module(x).sum().backward()
    optimizer.step()
    total = 0
    for p in module.parameters():
        total += p.numel() * p.element_size()
        if p.grad is not None:
            total += p.grad.numel() * p.grad.element_size()
    for state in optimizer.state.values():
        total += sum(v.numel() * v.element_size() for v in state.values() if torch.is_tensor(v) and v.dim() > 0)
    for b in module.buffers():  # masks and index structures are part of what a client holds
        total += b.numel() * b.element_size()
    return total


def layer_rows(densities, batches, repeats: int, quick: bool) -> list[dict[str, Any]]:
    rng = torch.Generator().manual_seed(0)
    specs = [("linear", (1024, 1024), None), ("linear", (4096, 4096), None),
             ("conv", (64, 64, 3, 3), 32), ("conv", (64, 64, 3, 3), 16),
             ("conv", (128, 128, 3, 3), 32), ("conv", (128, 128, 3, 3), 16)]
    if quick:
        specs = [s for s in specs if s[0] == "linear"]
    rows = []
    for kind, shape, side in specs:
        weight = torch.randn(shape) * 0.02
        for density in densities:
            mask = _random_mask(shape, density, rng)
            for batch in batches:
                if kind == "conv" and batch > 32:
                    continue  # 256 images of 128x32x32 conv training exceed this machine's patience
                x = torch.randn(batch, shape[1]) if kind == "linear" else torch.randn(batch, shape[1], side, side)
                for backward in (False, True):
                    reference = _layer(kind, Backend.MASKED, weight, mask)
                    for backend in LAYER_BACKENDS[kind]:
                        module = _layer(kind, backend, weight, mask)
                        t_ref, t = _paired_times(_step_fn(reference, x, backward), _step_fn(module, x, backward),
                                                 repeats)
                        rows.append({
                            "layer": f"{kind} {'x'.join(map(str, shape[:2]))}" + (f" @{side}²" if side else ""),
                            "density": density, "batch": batch, "mode": "fwd+bwd" if backward else "fwd",
                            "backend": backend.value, "seconds": t, "masked_seconds": t_ref,
                            "speedup": t_ref / t,
                            "dispatcher": choose_backend(mask, batch=batch, training=backward).value,
                        })
    return rows


def model_rows(densities, batches, repeats: int, quick: bool) -> list[dict[str, Any]]:
    specs = [("fl-cnn", (1, 28, 28)), ("fl-cnn-bn", (1, 28, 28))] + ([] if quick else [("resnet18", (3, 32, 32))])
    rows = []
    for name, shape in specs:
        # ResNet-18: SynFlow takes ~1 min per mask on 2 cores, so only the two densities the issue targets.
        for density in (d for d in densities if name != "resnet18" or d in (0.1, 0.01)):
            base = build_model(name, shape, 10, seed=0)
            mask = data_free_mask(base, "synflow", density, 0)
            for batch in batches:
                if name == "resnet18" and batch > 32:
                    continue
                x = torch.randn(batch, *shape)
                for backward in (False, True):
                    reference = copy.deepcopy(base)
                    sparsify(reference, mask, batch=batch, training=backward,
                             backends={k: Backend.MASKED for k in mask})
                    model = copy.deepcopy(base)
                    chosen = sparsify(model, mask, batch=batch, training=backward)
                    reference.train(backward)
                    model.train(backward)
                    t_ref, t = _paired_times(_step_fn(reference, x, backward), _step_fn(model, x, backward),
                                             2 * repeats + 1)
                    row = {"model": name, "density": density, "batch": batch,
                           "mode": "fwd+bwd" if backward else "fwd", "seconds": t, "masked_seconds": t_ref,
                           "speedup": t_ref / t, "backends": {k: v.value for k, v in chosen.items()},
                           "layer_share": _layer_share(model, x)}
                    if backward:
                        row["state_bytes"] = training_state_bytes(model, x)
                        row["masked_state_bytes"] = training_state_bytes(reference, x)
                    rows.append(row)
    return rows


def _layer_share(model: nn.Module, x: torch.Tensor) -> dict[str, float]:
    """Share of forward time spent in each sparse layer (forward hooks, median of 5)."""
    layers = {n: m for n, m in model.named_modules()
              if isinstance(m, MaskedLinear | MaskedConv2d | CompactLinear | CompactConv2d | CSRLinear)}
    spent = {n: [] for n in layers}
    starts = {}
    handles = []
    for name, module in layers.items():
        handles.append(module.register_forward_pre_hook(
            lambda m, i, n=name: starts.__setitem__(n, time.perf_counter())))
        handles.append(module.register_forward_hook(
            lambda m, i, o, n=name: spent[n].append(time.perf_counter() - starts[n])))
    total = []
    with torch.no_grad():
        for _ in range(5):
            t0 = time.perf_counter()
            model(x)
            total.append(time.perf_counter() - t0)
    for handle in handles:
        handle.remove()
    whole = statistics.median(total)
    return {n: round(statistics.median(v) / whole, 3) for n, v in spent.items()}


def markdown(results: dict[str, Any]) -> str:
    lines = ["### Layers (speedup = dense-masked time / backend time, same process)", "",
             "| layer | density | batch | mode | backend | ms | masked ms | speedup | dispatcher picks |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results["layers"]:
        lines.append(f"| {r['layer']} | {r['density']} | {r['batch']} | {r['mode']} | {r['backend']} | "
                     f"{r['seconds'] * 1e3:.2f} | {r['masked_seconds'] * 1e3:.2f} | {r['speedup']:.2f} | "
                     f"{r['dispatcher']} |")
    lines += ["", "### Whole models (SynFlow mask, dispatcher-chosen backends vs all dense-masked)", "",
              "| model | density | batch | mode | ms | masked ms | speedup | train-state B | masked B | ratio |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results["models"]:
        state = (f"{r['state_bytes']:,} | {r['masked_state_bytes']:,} | "
                 f"{r['state_bytes'] / r['masked_state_bytes']:.3f}") if "state_bytes" in r else "- | - | -"
        lines.append(f"| {r['model']} | {r['density']} | {r['batch']} | {r['mode']} | {r['seconds'] * 1e3:.2f} | "
                     f"{r['masked_seconds'] * 1e3:.2f} | {r['speedup']:.2f} | {state} |")
    return "\n".join(lines)


def run(json_path: Path | None = None, markdown_path: Path | None = None, quick: bool = False,
        threads: int | None = None) -> dict[str, Any]:
    """Run the grid (``quick``: Linear layers and the FL CNNs only) and print/save the tables."""
    if threads:
        torch.set_num_threads(threads)
    densities = (0.5, 0.2, 0.1, 0.05, 0.01)
    batches = (1, 32, 256)
    repeats = 5
    results = {"threads": torch.get_num_threads(), "torch": torch.__version__,
               "layers": layer_rows(densities, batches, repeats, quick),
               "models": model_rows((0.1, 0.01) if quick else densities, batches, repeats, quick)}
    text = markdown(results)
    print(text)
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=1))
    if markdown_path:
        markdown_path.parent.mkdir(parents=True, exist_ok=True)
        markdown_path.write_text(text + "\n")
    return results
