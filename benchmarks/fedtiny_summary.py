"""Print the FedTiny acceptance table from the runs ``benchmarks/fedtiny_table.sh`` wrote.

Usage: python benchmarks/fedtiny_summary.py OUT_DIR NAME [NAME ...]
Per run: final / last-5 mean / best test accuracy, measured bytes per client-round; for FedTiny runs also the
selected candidate and every candidate's pooled validation loss, each adjustment's grown/pruned counts, and each
adjustment upload's measured size (the bytes its pairs add to the training reply) against the coded size of
its (index, value) pairs.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    out, names = Path(sys.argv[1]), sys.argv[2:]
    print("| run | final acc | last-5 mean | best | uplink B/client-round | downlink B/client-round |")
    print("|---|---|---|---|---|---|")
    details = []
    for name in names:
        path = out / name / "results.json"
        if not path.is_file():
            print(f"| {name} | (missing) | | | | |")
            continue
        doc = json.loads(path.read_text())
        s, rounds = doc["summary"], doc["rounds"]
        n = sum(r["clients_sampled"] for r in rounds)
        print(f"| {name} | {s['final_accuracy']:.4f} | {s['final_accuracy_last5']:.4f} | {s['best_accuracy']:.4f} | "
              f"{s['total_uplink_bytes'] / n:,.0f} | {s['total_downlink_bytes'] / n:,.0f} |")
        if "strategy_report" in doc:
            details.append((name, doc))
    for name, doc in details:
        report = doc["strategy_report"]
        print(f"\n{name}: selected candidate {report['selected_candidate']}, candidate losses "
              f"{[round(v, 4) for v in report['candidate_losses'] or []]}, runner-up beyond two standard errors: "
              f"{report.get('selection_beyond_noise', 'not recorded')}")
        selection = doc["rounds"][0].get("bn_selection")
        if selection:
            print("  candidate layer densities:",
                  [[round(v, 4) for v in c.values()] for c in selection["layer_densities"]])
        for entry in (r["adjustment"] for r in doc["rounds"] if "adjustment" in r):
            layers = {k: (v["k"], v["grown"], v["pruned"], v["active"]) for k, v in entry["layers"].items()}
            ups = entry["uploads"]
            coded = [u["coded_pairs_bytes"] for u in ups]
            added = [u["pairs_bytes"] for u in ups]  # what the pairs add to the training reply, measured
            worst = max((a / c for a, c in zip(added, coded, strict=True) if c), default=float("nan"))
            mean_pairs = sum(u["pairs"] for u in ups) / len(ups) if ups else 0
            within = sum(a <= 1.01 * c for a, c in zip(added, coded, strict=True))
            print(f"  after round {entry['after_round']:>2}: (K, grown, pruned, active) {layers} "
                  f"{entry.get('skipped') or ''}| uploads {len(ups)}, mean pairs {mean_pairs:,.0f}, "
                  f"mean coded pairs {sum(coded) / max(1, len(coded)):,.0f} B, mean added to the reply "
                  f"{sum(added) / max(1, len(added)):,.0f} B, worst added/coded {worst:.4f}, "
                  f"{within}/{len(ups)} within coded + 1%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
