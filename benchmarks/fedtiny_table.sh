#!/usr/bin/env bash
# FedTiny acceptance table: Fashion-MNIST, FL CNN with BatchNorm (fl-cnn-bn), Dirichlet 0.5, 100 clients,
# 10 per round, 30 rounds, seed 0 for every run, SGD lr 0.05 momentum 0.9, 1 local epoch, batch 32.
# Five configurations at each density: FedTiny, FedTiny without BN selection (--candidates 1), FedTiny without
# progressive pruning (--adjust-every 0), static-synflow, static-magnitude, static-random.
# Each run writes runs/bench-fedtiny/<name>/results.json (Ray simulation through a private SuperLink); the
# table is printed at the end. Usage: benchmarks/fedtiny_table.sh [NAME ...]   (default: all rows)
# SEED=N (default 0) runs every row with seed N (partition, sampling, θ0, candidates) into
# runs/bench-fedtiny-seedN.
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${SEED:-0}
if [ "$SEED" = 0 ]; then OUT=${OUT:-runs/bench-fedtiny}; else OUT=${OUT:-runs/bench-fedtiny-seed$SEED}; fi
ROUNDS=${ROUNDS:-30}
PY=${PYTHON:-python}
common=(--dataset fashion-mnist --model fl-cnn-bn --partition dirichlet --alpha 0.5 --num-clients 100
        --clients-per-round 10 --local-epochs 1 --batch-size 32 --lr 0.05 --momentum 0.9 --seed "$SEED"
        --rounds "$ROUNDS")
declare -A rows
for d in 0.05 0.01; do
  rows[fedtiny-$d]="--strategy fedtiny --density $d"
  rows[fedtiny-no-bn-$d]="--strategy fedtiny --density $d --candidates 1"
  rows[fedtiny-no-pp-$d]="--strategy fedtiny --density $d --adjust-every 0"
  rows[static-synflow-$d]="--strategy static-synflow --density $d"
  rows[static-magnitude-$d]="--strategy static-magnitude --density $d"
  rows[static-random-$d]="--strategy static-random --density $d"
done
# FedTiny with neither BN selection nor progressive pruning: its candidate 0 as a static mask (SynFlow's layer
# counts, the largest |θ0| within each layer), to tell the candidate family's effect from BN selection's and PP's.
for d in 0.05 0.01; do
  rows[fedtiny-no-bn-no-pp-$d]="--strategy fedtiny --density $d --candidates 1 --adjust-every 0"
done
# Progressive pruning ending earlier (T_end 15 of 30 rounds: the last adjustment leaves 15 rounds to recover).
for d in 0.05 0.01; do
  rows[fedtiny-until15-$d]="--strategy fedtiny --density $d --adjust-until 15"
done
# Every adjusting client on the buffered gradient tap (8·K running sums) instead of the dense accumulator.
for d in 0.05 0.01; do
  rows[fedtiny-buffered-$d]="--strategy fedtiny --density $d --gradient-tap buffered"
done
# Half the clients with a 2 MB memory budget: it holds their submodel and the buffered tap, not fc1's dense tap.
for tap in auto dense; do
  rows[fedtiny-budget2mb-$tap-0.01]="--strategy fedtiny --density 0.01 --budget-tiers 2:inf,inf:inf --gradient-tap $tap"
done
# The earlier candidate family: within a layer the score's own choice (candidate 0 = SynFlow's mask).
for d in 0.05 0.01; do
  rows[fedtiny-score-ranked-$d]="--strategy fedtiny --density $d --candidate-ranking score"
  rows[fedtiny-no-bn-score-ranked-$d]="--strategy fedtiny --density $d --candidate-ranking score --candidates 1"
  rows[fedtiny-no-pp-score-ranked-$d]="--strategy fedtiny --density $d --candidate-ranking score --adjust-every 0"
done
# Every layer at every adjustment instead of one layer per step, output→input (not in the default list).
for d in 0.05 0.01; do
  rows[fedtiny-adjust-all-$d]="--strategy fedtiny --density $d --adjust-layers all --candidate-ranking score"
done
# A slower client step for FedTiny and its closest baseline (the later --lr overrides the common one).
rows[fedtiny-lr0.01-0.01]="--strategy fedtiny --density 0.01 --lr 0.01 --candidate-ranking score"
rows[static-synflow-lr0.01-0.01]="--strategy static-synflow --density 0.01 --lr 0.01"
# The previous default step (α = 0.2), kept for comparison (not in the default list).
for d in 0.05 0.01; do
  rows[fedtiny-alpha0.2-$d]="--strategy fedtiny --density $d --adjust-alpha 0.2 --candidate-ranking score"
  rows[fedtiny-no-bn-alpha0.2-$d]="--strategy fedtiny --density $d --adjust-alpha 0.2 --candidates 1 --candidate-ranking score"
done
# Every FedTiny row here ran before the defaults became block-magnitude candidates (9f30856), the z = 2
# selection gate (aa976f8) and progressive pruning off: pin what they ran with, so each command still
# reproduces its BENCHMARKS figures.
for name in "${!rows[@]}"; do
  if [[ "${rows[$name]}" == *"--strategy fedtiny"* ]]; then
    [[ "${rows[$name]}" == *--candidate-ranking* ]] || rows[$name]+=" --candidate-ranking magnitude"
    [[ "${rows[$name]}" == *--adjust-every* ]] || rows[$name]+=" --adjust-every 3"
    rows[$name]+=" --bn-selection-z 0"
  fi
done
names=("$@")
if [ ${#names[@]} -eq 0 ]; then
  for d in 0.05 0.01; do
    names+=(fedtiny-$d fedtiny-no-bn-$d fedtiny-no-pp-$d static-synflow-$d static-magnitude-$d static-random-$d)
  done
fi
for name in "${names[@]}"; do
  # shellcheck disable=SC2086
  PYTHONPATH="$PWD" "$PY" -m fedprune.cli simulate "${common[@]}" ${rows[$name]} --out "$OUT/$name"
done
PYTHONPATH="$PWD" "$PY" benchmarks/fedtiny_summary.py "$OUT" "${names[@]}"
