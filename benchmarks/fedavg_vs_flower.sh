#!/usr/bin/env bash
# Foundation acceptance: fedprune's dense FedAvg vs Flower's built-in FedAvg, back to back,
# same simulation, same seed (Fashion-MNIST, FL CNN, Dirichlet 0.5, 100 clients, 10/round, 30 rounds).
# Prints both summaries and the ratio of median round times and of measured bytes.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/bench-foundation}
ROUNDS=${ROUNDS:-30}
common=(--dataset fashion-mnist --model fl-cnn --partition dirichlet --alpha 0.5 --num-clients 100
        --clients-per-round 10 --local-epochs 1 --batch-size 32 --lr 0.05 --momentum 0.9 --seed 0 --rounds "$ROUNDS")
fedprune simulate --strategy fedavg "${common[@]}" --out "$OUT/fedavg"
fedprune simulate --strategy flwr-fedavg "${common[@]}" --out "$OUT/flwr-fedavg"
fedprune report "$OUT/fedavg" "$OUT/flwr-fedavg" --out "$OUT/report.png"
python - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
a = json.load(open(f"{out}/fedavg/results.json"))
b = json.load(open(f"{out}/flwr-fedavg/results.json"))
for name, d in (("fedprune fedavg", a), ("flower FedAvg", b)):
    s = d["summary"]
    print(f"{name:16s} last5 {s['final_accuracy_last5']:.4f} final {s['final_accuracy']:.4f} "
          f"median round {s['median_round_seconds']:.2f}s up {s['total_uplink_bytes']:,} down {s['total_downlink_bytes']:,}")
sa, sb = a["summary"], b["summary"]
print(f"median round time ratio fedprune/flower: {sa['median_round_seconds'] / sb['median_round_seconds']:.3f}")
print(f"uplink bytes ratio: {sa['total_uplink_bytes'] / sb['total_uplink_bytes']:.5f}; "
      f"downlink bytes ratio: {sa['total_downlink_bytes'] / sb['total_downlink_bytes']:.5f}")
rounds = sum(len(d['rounds']) for d in (a,))
print(f"uplink bytes per client-round (fedprune): {sa['total_uplink_bytes'] / sum(r['clients_sampled'] for r in a['rounds']):,.0f}")
PY
