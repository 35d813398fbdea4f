"""Why a round got no update: each sampled node's reason, and the most common ones in one line."""

from __future__ import annotations

from typing import Any

from fedprune.server.metered_grid import Traffic


def failure_reasons(traffic: Traffic, rejected: list[dict[str, Any]], sampled: set[int]) -> list[dict[str, Any]]:
    """Why each sampled node gave no usable reply this round: the strategy's screening reason, else the
    transport's (error reply, no reply), one entry per node in node order."""
    reasons = {item["node_id"]: item["reason"] for item in rejected if item["node_id"] in sampled}
    for node, reason in traffic.errors.items():
        if node in sampled:
            reasons.setdefault(node, reason)
    return [{"node_id": node, "reason": reason} for node, reason in sorted(reasons.items())]


def summarize_reasons(reasons: list[dict[str, Any]], limit: int = 3) -> str:
    """The most common reasons with their counts, for one console/error line."""
    counts: dict[str, int] = {}
    for item in reasons:
        counts[item["reason"]] = counts.get(item["reason"], 0) + 1
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    text = "; ".join(f"{n}x {reason[:300]}" for reason, n in ranked[:limit])
    return text + (f"; and {len(ranked) - limit} other reasons" if len(ranked) > limit else "") if ranked \
        else "no reply was sent or received"
