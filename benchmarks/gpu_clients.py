"""GPU clients on a GPU host, against the CPU in the same session (issue 23's prepared device check).

Usage: python benchmarks/gpu_clients.py OUT [--rounds 5] [--dataset-path DIR] [--skip-simulation]

Part 1, the Triton block-sparse layer inside a real training step (needs torch with CUDA and triton only):
one SGD step (forward, backward, optimizer) of a Linear layer on a 32×32-tile mask (``pruning.tile_masks``)
at densities 0.1, 0.05, 0.01, for ``BlockSparseLinear`` (Triton forward, dense masked backward), the dense
masked layer and a plain dense ``nn.Linear`` — median of 20 CUDA-event-timed steps each, the block-sparse
gradients checked against the masked layer's, and what the dispatcher would pick for that layer.

Part 2, a 100-client Fashion-MNIST simulation (needs flwr[simulation] and the dataset): HideNseek and
static-synflow at density 0.1, ``--rounds`` rounds, each once with ``--device cuda --gpus-per-client 0.25``
and once with ``--device cpu``; the median round time of each and the CPU/GPU ratio, from the same session.

Prints one line per measurement and writes ``OUT/gpu_clients.json``. Sized for under 10 minutes on one
H200 with 16 cores (part 1 about a minute, part 2 four runs of ``--rounds`` rounds plus Ray's start each).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from fedprune.kernels.blocksparse_layer import BlockSparseLinear  # noqa: E402
from fedprune.kernels.dispatch import choose_backend, tile_occupancy  # noqa: E402
from fedprune.kernels.masked import MaskedLinear  # noqa: E402
from fedprune.pruning.tile_masks import tile_topk_mask  # noqa: E402

SHAPES = ((4096, 256), (4096, 2048), (8192, 2048))  # (layer side, batch)
DENSITIES = (0.1, 0.05, 0.01)


def _median_step_seconds(layer: torch.nn.Module, x: torch.Tensor, repeats: int = 20) -> float:
    optimizer = torch.optim.SGD(layer.parameters(), lr=1e-3, momentum=0.9)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        (layer(x) ** 2).mean().backward()
        optimizer.step()

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    start, end, times = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True), []
    for _ in range(repeats):
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return sorted(times)[len(times) // 2]


def training_steps(device: torch.device) -> list[dict]:
    """Part 1: one training step of each layer kind per shape and density, ratios from the same run."""
    torch.backends.cuda.matmul.allow_tf32 = True  # tl.dot's fp32 precision, so dense runs at the same precision
    rows = []
    generator = torch.Generator().manual_seed(0)
    for side, batch in SHAPES:
        weight = torch.randn(side, side, generator=generator) / side ** 0.5
        x = torch.randn(batch, side, generator=generator).to(device)
        for density in DENSITIES:
            mask = torch.from_numpy(tile_topk_mask({"w": torch.rand(side, side, generator=generator,
                                                                     dtype=torch.float64)}, density)["w"])
            sparse = BlockSparseLinear(weight, mask).to(device)
            masked = MaskedLinear(weight, mask).to(device)
            dense = torch.nn.Linear(side, side, bias=False).to(device)
            probe = x[:64].clone().requires_grad_(True)
            (sparse(probe) ** 2).sum().backward()
            reference = probe.clone().detach().requires_grad_(True)
            (masked(reference) ** 2).sum().backward()
            agrees = bool(torch.allclose(sparse.weight.grad, masked.weight.grad * masked.mask, rtol=1e-2, atol=1e-2))
            seconds = {name: _median_step_seconds(layer, x) for name, layer in
                       (("blocksparse", sparse), ("masked", masked), ("dense", dense))}
            row = {"side": side, "batch": batch, "density_tiles": density, "tile_occupancy": tile_occupancy(mask),
                   "gradients_agree": agrees, "seconds": seconds,
                   "dense_over_blocksparse": seconds["dense"] / seconds["blocksparse"],
                   "masked_over_blocksparse": seconds["masked"] / seconds["blocksparse"],
                   "dispatcher_picks": str(choose_backend(mask, batch=batch, training=True, device="cuda"))}
            print(f"train step {side}x{side} batch {batch} tiles {density:g}: blocksparse "
                  f"{seconds['blocksparse'] * 1e3:.2f} ms, masked {seconds['masked'] * 1e3:.2f} ms, dense "
                  f"{seconds['dense'] * 1e3:.2f} ms -> dense/blocksparse {row['dense_over_blocksparse']:.2f}x "
                  f"(grads agree: {agrees}; dispatcher: {row['dispatcher_picks']})", flush=True)
            rows.append(row)
    return rows


def simulations(out: Path, rounds: int, dataset_path: str) -> list[dict]:
    """Part 2: the same simulation on the GPU (0.25 per client) and on the CPU, back to back."""
    rows = []
    for strategy in ("hidenseek", "static-synflow"):
        for label, extra in (("gpu", ["--device", "cuda", "--gpus-per-client", "0.25"]), ("cpu", ["--device", "cpu"])):
            run_out = out / f"{strategy}-{label}"
            command = [sys.executable, "-m", "fedprune.cli", "simulate", "--strategy", strategy, "--density", "0.1",
                       "--num-clients", "100", "--clients-per-round", "10", "--rounds", str(rounds),
                       "--personal-eval-every", "0", "--out", str(run_out), *extra]
            command += ["--dataset-path", dataset_path] if dataset_path else []
            started = time.monotonic()
            done = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                                  capture_output=True, text=True)
            elapsed = time.monotonic() - started
            if done.returncode != 0:
                print(f"{strategy} {label}: exit {done.returncode}: {done.stderr.strip()[-500:]}", flush=True)
                rows.append({"strategy": strategy, "device": label, "exit": done.returncode})
                continue
            document = json.loads((run_out / "results.json").read_text())
            median = document["summary"]["median_round_seconds"]
            rows.append({"strategy": strategy, "device": label, "median_round_seconds": median,
                         "wall_seconds": elapsed, "accuracy": [r["accuracy"] for r in document["rounds"]]})
            print(f"{strategy} {label}: median round {median:.2f} s, whole command {elapsed:.0f} s, final "
                  f"accuracy {document['rounds'][-1]['accuracy']:.4f}", flush=True)
    for strategy in ("hidenseek", "static-synflow"):
        by = {r["device"]: r for r in rows if r["strategy"] == strategy and "median_round_seconds" in r}
        if len(by) == 2:
            ratio = by["cpu"]["median_round_seconds"] / by["gpu"]["median_round_seconds"]
            print(f"{strategy}: CPU/GPU median round {ratio:.2f}x")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dataset-path", default="", help="Fashion-MNIST folder (default: the standard place)")
    parser.add_argument("--skip-simulation", action="store_true", help="part 1 only (no flwr/Ray on the host)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU here: this check needs a GPU host (on a CPU host the options are refused; see the tests)")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__,
              "training_steps": training_steps(torch.device("cuda"))}
    if not args.skip_simulation:
        result["simulations"] = simulations(out, args.rounds, args.dataset_path)
    (out / "gpu_clients.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {out / 'gpu_clients.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
