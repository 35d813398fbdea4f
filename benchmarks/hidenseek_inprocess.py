"""HideNseek on the in-process grid (no Ray): quick comparisons of aggregation rules and learning rates.

Usage: python benchmarks/hidenseek_inprocess.py AGGREGATION ROUNDS SCORE_LR [key=value ...]
   e.g. python benchmarks/hidenseek_inprocess.py ternary-delta 30 0.03
        python benchmarks/hidenseek_inprocess.py score-average 30 0.001 score_optimizer=adam local_loss=cross-entropy
Fashion-MNIST, FL CNN, Dirichlet 0.5, 100 clients, 10 per round, seed 0 (the acceptance setting); any other
RunSettings field as key=value (density, server_lr, server_momentum, moved_share, local_epochs, batch_size,
score_optimizer, score_momentum, local_loss, personal_eval_every (default 0 here), score, alpha, out;
strategy=fedavg for the dense baseline). Prints
one line per round, then the last-5 mean accuracy, uplink bytes per client-round and the per-round flip rate of σ.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedprune.client.app import app as client_app  # noqa: E402
from fedprune.server.run_config import ConfigError, RunSettings  # noqa: E402
from fedprune.server.runner import run_federation  # noqa: E402

from tests.inprocess_grid import InProcessGrid  # noqa: E402

_TYPES = {f.name: {"int": int, "float": float, "bool": lambda v: v.lower() in ("1", "true")}.get(str(f.type), str)
          for f in dataclasses.fields(RunSettings)}


def main() -> int:
    aggregation, rounds, score_lr = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    extra = {k: _TYPES.get(k, str)(v) for k, v in (a.split("=", 1) for a in sys.argv[4:])}
    strategy = extra.pop("strategy", "hidenseek")  # e.g. strategy=fedavg local_loss=logit-adjusted
    density = extra.pop("density", 0.1 if strategy == "hidenseek" else 1.0)
    extra.setdefault("personal_eval_every", 0)
    out = extra.pop("out", f"runs/hns-inprocess/{aggregation}-{score_lr}-{'-'.join(sys.argv[4:]) or 'default'}")
    settings = RunSettings(strategy=strategy, density=density, aggregation=aggregation, rounds=rounds,
                           score_lr=score_lr, out=out, **extra)
    try:  # a bad value fails here with the CLI's message, not as every client's error reply
        settings.validate()
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    grid = InProcessGrid(client_app, settings.num_clients, settings.to_run_config())
    start = time.time()
    doc = run_federation(grid, settings, progress=lambda line: print(line, flush=True))
    sampled = sum(r["clients_sampled"] for r in doc["rounds"])
    print(f"{aggregation} lr={score_lr} {sys.argv[4:]} last5 {doc['summary']['final_accuracy_last5']:.4f} "
          f"uplink/client-round {doc['summary']['total_uplink_bytes'] / sampled:,.0f} "
          f"downlink/client-round {doc['summary']['total_downlink_bytes'] / sampled:,.0f} "
          f"final {doc['summary']['final_accuracy']:.4f} "
          f"flip {[round(r.get('flip_rate') or 0.0, 4) for r in doc['rounds']]} {time.time() - start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
