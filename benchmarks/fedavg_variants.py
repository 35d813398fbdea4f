"""Dense FedAvg variants on the in-process grid: seed, local test split, input scaling.

Usage: python benchmarks/fedavg_variants.py {std|unit} SEED LOCAL_TEST_FRACTION
`std` standardizes Fashion-MNIST (mean 0.286, std 0.353, the default); `unit` scales pixels to [0, 1].
Same setting as the foundation acceptance (100 clients, 10/round, Dirichlet 0.5, SGD 0.05/0.9, 30 rounds).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import fedprune.data.sources as sources  # noqa: E402


def main() -> int:
    variant, seed, fraction = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    if variant == "unit":
        sources._normalize = lambda images, mean, std: images.astype(np.float32) / 255.0
    from fedprune.client.app import app as client_app
    from fedprune.server.run_config import RunSettings
    from fedprune.server.runner import run_federation

    from tests.inprocess_grid import InProcessGrid

    settings = RunSettings(out=f"runs/fedavg-variants/{variant}-{seed}-{fraction}", seed=seed,
                           local_test_fraction=fraction, rounds=30)
    grid = InProcessGrid(client_app, 100, settings.to_run_config())
    doc = run_federation(grid, settings, progress=lambda line: print(variant, seed, fraction, line, flush=True))
    print(variant, seed, fraction, "last5", round(doc["summary"]["final_accuracy_last5"], 4))
    return 0


if __name__ == "__main__":
    sys.exit(main())
