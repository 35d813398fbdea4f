"""What one progressive-pruning step costs the function it prunes, before any training recovers it.

Usage: python benchmarks/fedtiny_prune_damage.py RUNS_DIR [RUNS_DIR ...] [-- DENSITY ...]   (default 0.05 0.01)
For each seed directory (``benchmarks/fedtiny_table.sh`` output) and density: the final global model of
``fedtiny-no-pp-D`` (trained 30 rounds on FedTiny's selected mask, never adjusted), and, for each adjustment
``fedtiny-D`` made (its layer and K), the test-accuracy change when the K smallest-magnitude active weights of
that layer are zeroed, in the order ``pruning.progressive.grow_and_prune`` prunes them (``smallest_active``;
grown weights start at 0, so growing changes no output). Prints one line per run and adjustment, in points.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedprune.data.sources import load_fashion_mnist  # noqa: E402
from fedprune.models.evaluation import evaluate  # noqa: E402
from fedprune.models.registry import build_model  # noqa: E402
from fedprune.pruning.progressive import smallest_active  # noqa: E402
from fedprune.server.checkpoint import read_checkpoint  # noqa: E402


def main() -> int:
    args = sys.argv[1:]
    densities = args[args.index("--") + 1:] if "--" in args else ["0.05", "0.01"]
    dirs = [Path(a) for a in (args[:args.index("--")] if "--" in args else args)]
    test = load_fashion_mnist().test
    for seed_dir in dirs:
        for density in densities:
            run, no_pp = seed_dir / f"fedtiny-{density}", seed_dir / f"fedtiny-no-pp-{density}"
            if not (run / "results.json").is_file() or not (no_pp / "checkpoint.pt").is_file():
                print(f"{seed_dir.name} {density}: missing")
                continue
            adjustments = json.loads((run / "results.json").read_text())["strategy_report"]["adjustments"]
            checkpoint = read_checkpoint(Path(no_pp / "checkpoint.pt"))
            mask, arrays = checkpoint["strategy_state"]["mask"], checkpoint["arrays"]
            model = build_model("fl-cnn-bn", (1, 28, 28), 10)
            model.load_state_dict(arrays)
            base = evaluate(model, test.x, test.y)[1]
            cells = []
            for adjustment in adjustments:
                for name, layer in adjustment["layers"].items():
                    state = {k: v.clone() for k, v in arrays.items()}
                    order = torch.from_numpy(smallest_active(state[name].numpy(), np.asarray(mask[name])))
                    k = min(int(layer["k"]), order.numel() - 1)
                    state[name].reshape(-1)[order[:k]] = 0.0
                    model.load_state_dict(state)
                    delta = (evaluate(model, test.x, test.y)[1] - base) * 100
                    cells.append(f"r{adjustment['after_round']} {name} K={k}: {delta:+.2f}")
            print(f"{seed_dir.name} {density} (no-PP final {base:.4f}) | " + " | ".join(cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
