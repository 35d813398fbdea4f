"""What a coded HideNseek downlink would cost: the global scores each round, quantized on a per-layer grid,
entropy-measured three ways, for the nodes really sampled (issue 20, choosing the coding by measurement).

Usage: python benchmarks/hidenseek_downlink_sizes.py [ROUNDS] [DENSITY] [OUT.json]
Runs HideNseek (ternary-delta, the default) in process (tests/inprocess_grid.py: real ClientApp, Flower's
serialization, no Ray) on Fashion-MNIST, 100 clients, 10 per round, seed 0, and records the global scores z
sent each round and which nodes got them. For each grid step Δ (a multiple of the layer's RMS |θ0| over kept
weights) and each form, the order-0 entropy of the integer levels (what an adaptive ANS coder with a sent
histogram reaches, plus the histogram):

* ``levels``: q = floor(z/Δ) (the client rebuilds z as (q + ½)Δ: sign preserved, so σ = sign(z) is free);
* ``displacement``: q − q0 where q0 = floor(sign(θ0)|θ0|/Δ), which the client computes from its θ0;
* ``delta``: q − (the levels this node last received), for nodes sampled before.

Prints bytes per client-round (each node the smallest form it can use) and the rebuild error.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedprune.client.app import app as client_app  # noqa: E402
from fedprune.server.run_config import RunSettings  # noqa: E402
from fedprune.server.runner import run_federation  # noqa: E402
from fedprune.strategies.hidenseek import HideNseek  # noqa: E402

from tests.inprocess_grid import InProcessGrid  # noqa: E402

STEPS = (0.0625, 0.125, 0.25, 0.5, 1.0)
sent: list[tuple[int, dict[str, np.ndarray], list[int]]] = []  # (round, scores z, sampled nodes)
magnitudes: dict[str, np.ndarray] = {}
initial: dict[str, np.ndarray] = {}


def entropy_bytes(values: np.ndarray) -> float:
    """Order-0 entropy of integer symbols in bytes, plus 4 B per distinct symbol (the histogram)."""
    _, counts = np.unique(values, return_counts=True)
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum() / 8 + 4 * len(counts))


def record(original_configure):
    def configure(self, server_round, arrays, config, grid):
        messages = list(original_configure(self, server_round, arrays, config, grid))
        if not magnitudes:
            magnitudes.update(self.magnitude)
            initial.update({k: self.initial_signs[k] * self.magnitude[k] for k in self.magnitude})
        sent.append((server_round, {k: v.copy() for k, v in self.tally.items()}, list(self._sampled)))
        return messages
    return configure


def sizes(step: float) -> dict[str, float]:
    """Bytes per client-round of each policy at grid step ``step`` × RMS|θ0|, and the rebuild error."""
    rms = {k: float(np.sqrt(np.mean(m.astype(np.float64) ** 2))) for k, m in magnitudes.items()}
    last: dict[int, dict[str, np.ndarray]] = {}
    totals: dict[str, float] = defaultdict(float)
    client_rounds = 0
    errors = []
    for _, scores, nodes in sent:
        levels = {k: np.floor(z / (step * rms[k])).astype(np.int64) for k, z in scores.items()}
        q0 = {k: np.floor(initial[k] / (step * rms[k])).astype(np.int64) for k in scores}
        full = sum(entropy_bytes(levels[k]) for k in levels)
        displaced = sum(entropy_bytes(levels[k] - q0[k]) for k in levels)
        errors += [float(np.sqrt(np.mean((((levels[k] + 0.5) * step * rms[k]) - z) ** 2)) / rms[k])
                   for k, z in scores.items()]
        for node in nodes:
            options = {"levels": full, "displacement": displaced}
            if node in last:
                options["delta"] = sum(entropy_bytes(levels[k] - last[node][k]) for k in levels)
            totals["levels only"] += full
            totals["displacement only"] += displaced
            totals["smallest"] += min(options.values())
            client_rounds += 1
            last[node] = levels
    return {**{k: v / client_rounds for k, v in totals.items()}, "rms_error_over_rms": float(np.mean(errors))}


def main() -> int:
    rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    density = float(sys.argv[2]) if len(sys.argv) > 2 else 0.1
    out = Path(sys.argv[3]) if len(sys.argv) > 3 else Path(f"runs/hns-downlink-sizes-{density}.json")
    HideNseek.configure_train = record(HideNseek.configure_train)
    settings = RunSettings(strategy="hidenseek", density=density, rounds=rounds, personal_eval_every=0,
                           out=f"runs/hns-downlink-sizes-{density}")
    settings.validate()
    grid = InProcessGrid(client_app, settings.num_clients, settings.to_run_config())
    document = run_federation(grid, settings, progress=lambda line: print(line, flush=True))
    kept = sum(m.size for m in magnitudes.values())
    result = {"density": density, "rounds": rounds, "kept": kept,
              "last5": document["summary"]["final_accuracy_last5"],
              "float32_scores_bytes": 4 * kept, "by_step": {str(s): sizes(s) for s in STEPS}}
    for step, row in result["by_step"].items():
        print(f"step {step} x RMS|θ0|: " + ", ".join(f"{k} {v:,.1f}" for k, v in row.items()))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
