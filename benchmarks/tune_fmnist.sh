#!/usr/bin/env bash
# The Fashion-MNIST tuning study of BENCHMARKS.md ("Tuning budgets"): the fmnist-budgets preset on its grid —
# dense FedAvg (the anchor), static SynFlow / magnitude / random masks, HideNseek and FedTiny at densities
# 0.01, 0.02, 0.05, 0.1, 0.2 — 26 trials, each one `fedprune simulate` run (100 clients, 10 per round,
# 20 rounds, Dirichlet 0.5, seed 0). Rerun the same command after an interruption: the study continues.
# Then the report (pareto.png, front.md, trials.csv) and `best` at a few budgets.
# Usage: benchmarks/tune_fmnist.sh [OUT]        (default runs/tune/fmnist-budgets; ~1 h on 2 cores)
set -euo pipefail
OUT=${1:-runs/tune/fmnist-budgets}
FEDPRUNE=${FEDPRUNE:-.venv/bin/fedprune}
export RAY_USAGE_STATS_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
start=$(date +%s)
$FEDPRUNE tune run --study fmnist-budgets --preset fmnist-budgets --sampler grid --trials 26 --out "$OUT"
echo "study wall time: $(( $(date +%s) - start )) s"
$FEDPRUNE tune report --study fmnist-budgets --out "$OUT"
for limits in "--max-uplink-kb 10 --max-downlink-kb 10" "--max-uplink-kb 100 --max-downlink-kb 1000" \
              "--max-memory-mb 0.5" "--max-memory-mb 2 --max-uplink-kb 300"; do
  echo "== best $limits"
  # shellcheck disable=SC2086
  $FEDPRUNE tune best --study fmnist-budgets --out "$OUT" $limits || true
done
