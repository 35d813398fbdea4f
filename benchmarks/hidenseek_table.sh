#!/usr/bin/env bash
# HideNseek acceptance table: Fashion-MNIST, FL CNN, Dirichlet 0.5, 100 clients, 10/round, 30 rounds,
# seed 0 for every method. Each run writes runs/bench-hns/<name>/results.json; the summary table is
# printed at the end (final, last-5 mean, uplink and downlink bytes per client-round, mean flip rate).
# Usage: benchmarks/hidenseek_table.sh [NAME ...]   (default: all rows below)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/bench-hns}
ROUNDS=${ROUNDS:-30}
common=(--dataset fashion-mnist --model fl-cnn --partition dirichlet --alpha 0.5 --num-clients 100
        --clients-per-round 10 --local-epochs 1 --batch-size 32 --seed 0 --rounds "$ROUNDS")
# The hns-* rows below the first five are the previous client (Adam lr 1e-3 on scores, plain cross-entropy).
old="--score-optimizer adam --score-lr 0.001 --local-loss cross-entropy"
# Every hns-* row was measured with the float32 exchange, HideNseek's default before ecb1a3d (BENCHMARKS.md).
f32="--score-step 0 --mask-transfer send"
declare -A rows=(
  [hns-0.1]="--strategy hidenseek --density 0.1 $f32"
  [hns-3ep-0.1]="--strategy hidenseek --density 0.1 --local-epochs 3 $f32"
  [hns-0.01]="--strategy hidenseek --density 0.01 $f32"
  [hns-random-mask-new-0.1]="--strategy hidenseek --density 0.1 --score random $f32"
  [hns-vote-new-0.1]="--strategy hidenseek --density 0.1 --aggregation vote $f32"
  [hns-tally-0.1]="--strategy hidenseek --density 0.1 --aggregation tally $old $f32"
  [hns-vote-0.1]="--strategy hidenseek --density 0.1 --aggregation vote $old $f32"
  [hns-score-average-0.1]="--strategy hidenseek --density 0.1 --aggregation score-average $old $f32"
  [hns-vote-lr0.01-0.1]="--strategy hidenseek --density 0.1 --aggregation vote $old --score-lr 0.01 $f32"
  [hns-tally-3ep-0.1]="--strategy hidenseek --density 0.1 --aggregation tally --local-epochs 3 $old $f32"
  [hns-tally-0.01]="--strategy hidenseek --density 0.01 --aggregation tally $old $f32"
  [hns-random-mask-0.1]="--strategy hidenseek --density 0.1 --aggregation tally --score random $old $f32"
  [static-synflow-0.1]="--strategy static-synflow --density 0.1 --lr 0.05 --momentum 0.9"
  [static-magnitude-0.1]="--strategy static-magnitude --density 0.1 --lr 0.05 --momentum 0.9"
  [static-random-0.1]="--strategy static-random --density 0.1 --lr 0.05 --momentum 0.9"
)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(hns-0.1 hns-3ep-0.1 hns-0.01 hns-random-mask-new-0.1 hns-vote-new-0.1
                                 static-synflow-0.1 static-magnitude-0.1 static-random-0.1)
for name in "${names[@]}"; do
  # shellcheck disable=SC2086
  fedprune simulate "${common[@]}" ${rows[$name]} --out "$OUT/$name"
done
python - "$OUT" "${names[@]}" <<'PY'
import json, sys
out, names = sys.argv[1], sys.argv[2:]
print("| run | final acc | last-5 mean | uplink B/client-round | downlink B/client-round | mean flip rate |")
print("|---|---|---|---|---|---|")
for name in names:
    d = json.load(open(f"{out}/{name}/results.json"))
    s, rounds = d["summary"], d["rounds"]
    n = sum(r["clients_sampled"] for r in rounds)
    flips = [r["flip_rate"] for r in rounds if r.get("flip_rate") is not None]
    flip = f"{sum(flips) / len(flips):.4f}" if flips else "-"
    print(f"| {name} | {s['final_accuracy']:.4f} | {s['final_accuracy_last5']:.4f} | "
          f"{s['total_uplink_bytes'] / n:,.0f} | {s['total_downlink_bytes'] / n:,.0f} | {flip} |")
PY
