#!/usr/bin/env bash
# Foundation acceptance: 500 clients, 50 per round, 3 rounds of dense FedAvg on Fashion-MNIST.
# Prints per-round progress, the median round time, and the peak RSS summed over the whole
# process tree (CLI, SuperLink, ServerApp, Ray head and workers).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/bench-scale-500}
python benchmarks/process_tree_memory.py -- fedprune simulate --strategy fedavg --dataset fashion-mnist \
  --partition dirichlet --alpha 0.5 --num-clients 500 --clients-per-round 50 --rounds 3 --seed 0 --out "$OUT"
python -c "import json,sys; s=json.load(open('$OUT/results.json'))['summary']; print('median_round_seconds', round(s['median_round_seconds'],2))"
