"""What the weights progressive pruning grows become: their size, what they carry, what each step removes.

Usage: python benchmarks/fedtiny_grown_weights.py DENSITY [SEED] [ROUNDS]   (defaults: seed 0, 30 rounds)
Fashion-MNIST, fl-cnn-bn, Dirichlet 0.5, 100 clients, 10 per round, 1 local epoch (the FedTiny acceptance
setting and its defaults), run twice on the in-process grid (no Ray; same client code, same bytes, same
results as the Ray runs of ``benchmarks/fedtiny_table.sh``): FedTiny, and FedTiny without progressive
pruning. Both share everything up to the first adjustment (same seed, same selected candidate, same clients
per round). Each round's global model of both runs is kept, then per round it prints:

* test accuracy of FedTiny, of the run without progressive pruning, and of FedTiny's model with every weight
  grown so far set back to 0 (what the grown weights carry);
* per layer that has grown weights: how many, and mean |w| of the grown weights vs the layer's other active
  weights;
* at each adjustment, on the run without progressive pruning at that round: the test-accuracy change from
  zeroing the step's K smallest active weights of the layer (the step's immediate damage; growing changes no
  output, grown weights start at 0), and what those K weights become when they are left to train: their mean
  |w| then and in the last round (vs the layer's other active weights there) and the share whose sign changed
  (weights on their way through zero).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedprune.client.app import app as client_app  # noqa: E402
from fedprune.data.sources import load_fashion_mnist  # noqa: E402
from fedprune.models.evaluation import evaluate  # noqa: E402
from fedprune.models.registry import build_model  # noqa: E402
from fedprune.pruning.progressive import smallest_active  # noqa: E402
from fedprune.server.checkpoint import read_checkpoint
from fedprune.server.run_config import ConfigError, RunSettings  # noqa: E402
from fedprune.server.runner import run_federation  # noqa: E402

from tests.inprocess_grid import InProcessGrid  # noqa: E402


def run_keeping_rounds(settings: RunSettings, keep: Path) -> dict:
    """Run ``settings`` in process; copy the checkpoint of every round to ``keep/r<N>.pt``."""
    keep.mkdir(parents=True, exist_ok=True)
    grid = InProcessGrid(client_app, settings.num_clients, settings.to_run_config())

    done = iter(range(1, settings.rounds + 1))  # progress is reported once per round, after its checkpoint

    def progress(line: str) -> None:
        print(line, flush=True)
        shutil.copy(Path(settings.out) / "checkpoint.pt", keep / f"r{next(done)}.pt")

    return run_federation(grid, settings, progress=progress)


def main() -> int:
    density = float(sys.argv[1])
    seed = int(sys.argv[2]) if len(sys.argv) > 2 else 0
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 30
    test = load_fashion_mnist().test
    model = build_model("fl-cnn-bn", (1, 28, 28), 10)

    def accuracy(arrays: dict[str, torch.Tensor]) -> float:
        model.load_state_dict(arrays)
        return float(evaluate(model, test.x, test.y)[1])

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runs = {}
        for label, every in (("pp", 3), ("no-pp", 0)):
            settings = RunSettings(strategy="fedtiny", model="fl-cnn-bn", density=density, seed=seed,
                                   rounds=rounds, adjust_every=every, personal_eval_every=0,
                                   candidate_ranking="magnitude", bn_selection_z=0.0,  # as BENCHMARKS ran it
                                   out=str(root / label / "run"))
            try:
                settings.validate()
            except ConfigError as exc:
                print(f"error: {exc}", file=sys.stderr)
                return 2
            runs[label] = run_keeping_rounds(settings, root / label / "rounds")
        adjustments = {a["after_round"]: a for a in runs["pp"]["strategy_report"]["adjustments"]}

        def load(label: str, server_round: int) -> dict:
            return read_checkpoint(Path(root / label / "rounds" / f"r{server_round}.pt"))

        first_mask = {k: np.asarray(v, bool) for k, v in load("no-pp", 1)["strategy_state"]["mask"].items()}
        last = load("no-pp", rounds)
        print(f"density {density} seed {seed}: accuracy with progressive pruning (pp), without (no-pp), pp with "
              "its grown weights zeroed; grown weights' mean |w| vs the layer's other active weights")
        per_round: list[tuple[float, float, float]] = []
        for server_round in range(1, rounds + 1):
            pp, no_pp = load("pp", server_round), load("no-pp", server_round)
            state = {k: v.clone() for k, v in pp["arrays"].items()}
            cells = []
            for name, mask in pp["strategy_state"]["mask"].items():
                mask = np.asarray(mask, bool)
                grown = torch.from_numpy(mask & ~first_mask[name])
                if not bool(grown.any()):
                    continue
                other = torch.from_numpy(mask & first_mask[name])
                weight = state[name]
                cells.append(f"{name} {int(grown.sum())} grown |w| {float(weight[grown].abs().mean()):.4f} "
                             f"vs {float(weight[other].abs().mean()):.4f}")
                weight[grown] = 0.0
            measured = (accuracy(pp["arrays"]), accuracy(no_pp["arrays"]), accuracy(state))
            per_round.append(measured)
            line = f"r{server_round:<3d} pp {measured[0]:.4f} no-pp {measured[1]:.4f} pp-grown-zeroed {measured[2]:.4f}"
            if server_round in adjustments:
                for name, layer in adjustments[server_round]["layers"].items():
                    arrays = {k: v.clone() for k, v in no_pp["arrays"].items()}
                    flat = arrays[name].reshape(-1)
                    order = torch.from_numpy(
                        smallest_active(arrays[name].numpy(), np.asarray(no_pp["strategy_state"]["mask"][name])))
                    k = min(int(layer["k"]), order.numel() - 1)
                    pruned, kept = order[:k], order[k:]
                    then = flat[pruned].clone()
                    flat[pruned] = 0.0
                    later = last["arrays"][name].reshape(-1)
                    line += (f" | step {name} K={k}: {100 * (accuracy(arrays) - measured[1]):+.2f} pts; left to train, "
                             f"|w| {float(then.abs().mean()):.4f} -> r{rounds} {float(later[pruned].abs().mean()):.4f}"
                             f" vs {float(later[kept].abs().mean()):.4f}, sign changed "
                             f"{float((torch.sign(later[pruned]) != torch.sign(then)).float().mean()):.2f}")
            print(line + (" | " + "; ".join(cells) if cells else ""), flush=True)
        late = per_round[-10:]
        print(f"final: pp {runs['pp']['summary']['final_accuracy']:.4f} "
              f"no-pp {runs['no-pp']['summary']['final_accuracy']:.4f}; last {len(late)} rounds, mean points: "
              f"pp - no-pp {100 * np.mean([a - b for a, b, _ in late]):+.2f}, "
              f"grown zeroed - pp {100 * np.mean([c - a for a, _, c in late]):+.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
