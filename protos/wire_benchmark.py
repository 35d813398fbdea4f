"""``fedprune bench wire``: coded sizes against the entropy bound, codec throughput, bytes per round.

Everything printed is measured in this process: sizes are lengths of real
serialized payloads (and of the Flower message content that carries them),
speeds are medians of repeated timed calls on one core.
"""

from __future__ import annotations

import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fedprune.models import build_model, prunable_names
from fedprune.protos.codec import Manifest, decode, encode
from fedprune.protos.flower_records import content_with_payload, payload_as_array, payload_record
from flwr.app import ArrayRecord, RecordDict
from flwr.common.serde import recorddict_to_proto


def binary_entropy(p: float) -> float:
    """H(p) in bits."""
    if p in (0.0, 1.0):
        return 0.0
    return -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def _median_seconds(fn, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _content_bytes(content: RecordDict) -> int:
    return recorddict_to_proto(content).ByteSize()


def mask_rows(n: int = 1_000_000, densities=(0.5, 0.1, 0.05, 0.01), seed: int = 0) -> list[dict[str, Any]]:
    """Random masks: payload bytes vs 1.01 N H(d) / 8 + 64, and encode/decode entries per second."""
    rows = []
    for d in densities:
        mask = np.random.default_rng(seed).random(n) < d
        blob = encode({"mask": mask})
        assert np.array_equal(decode(blob).tensors["mask"], mask)
        bound = 1.01 * n * binary_entropy(d) / 8 + 64
        enc_s = _median_seconds(lambda m=mask: encode({"mask": m}))
        dec_s = _median_seconds(lambda b=blob: decode(b))
        rows.append({"density": d, "entries": n, "payload_bytes": len(blob), "bound_bytes": round(bound, 1),
                     "entropy_bytes": round(n * binary_entropy(d) / 8, 1), "ratio_to_entropy":
                     round(len(blob) * 8 / (n * binary_entropy(d)), 5), "within_bound": len(blob) <= bound,
                     "encoding": decode(blob).encodings["mask"],
                     "encode_Mentries_per_s": round(n / enc_s / 1e6, 1),
                     "decode_Mentries_per_s": round(n / dec_s / 1e6, 1)})
    return rows


def sign_flip_row(n: int = 100_000, flip_rate: float = 0.02, seed: int = 0) -> dict[str, Any]:
    """A sign vector with ``flip_rate`` of its signs flipped against the reference the receiver holds."""
    rng = np.random.default_rng(seed)
    ref = np.where(rng.random(n) < 0.5, 1, -1).astype(np.int8)
    new = ref.copy()
    flipped = rng.choice(n, int(round(flip_rate * n)), replace=False)
    new[flipped] *= -1
    blob = encode({"signs": new}, reference={"signs": ref})
    decoded = decode(blob, reference={"signs": ref})
    assert np.array_equal(decoded.tensors["signs"], new)
    bound = 1.02 * n * binary_entropy(flip_rate) / 8 + 64
    return {"entries": n, "flip_rate": flip_rate, "payload_bytes": len(blob), "bound_bytes": round(bound, 1),
            "entropy_bytes": round(n * binary_entropy(flip_rate) / 8, 1), "within_bound": len(blob) <= bound,
            "encoding": decoded.encodings["signs"], "raw_sign_bits_bytes": len(encode({"signs": new},
                                                                                   force={"signs": "BITMAP"}))}


def magnitude_mask(model: torch.nn.Module, density: float) -> dict[str, np.ndarray]:
    """Global top-|w| mask over prunable tensors (a data-free mask; SynFlow is another)."""
    params = dict(model.named_parameters())
    names = prunable_names(model)
    scores = torch.cat([params[n].detach().abs().flatten() for n in names])
    k = max(1, int(round(density * scores.numel())))
    threshold = torch.topk(scores, k).values.min()
    return {n: (params[n].detach().abs() >= threshold).numpy() for n in names}


def fl_cnn_rows(densities=(0.1, 0.01), flip_rate: float = 0.02, seed: int = 0) -> list[dict[str, Any]]:
    """Bytes per client per round for the FL CNN, each as the Flower message content measured on the wire."""
    model = build_model("fl-cnn", (1, 28, 28), 10, seed=seed)
    state = {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}
    rows = []
    rng = np.random.default_rng(seed)
    for d in densities:
        mask = magnitude_mask(model, d)
        kept = sum(int(m.sum()) for m in mask.values())
        masked = {k: (v * mask[k] if k in mask else v) for k, v in state.items()}
        dense_bytes = _content_bytes(RecordDict({"arrays": ArrayRecord(
            {k: torch.from_numpy(v) for k, v in state.items()})}))
        masked_dense = _content_bytes(RecordDict({"arrays": ArrayRecord(
            {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in masked.items()})}))

        def coded(tensors, reference=None, force=None, density=d):
            blob = encode(tensors, reference=reference, force=force,
                          manifest=Manifest("fl-cnn", seed, density, 1, "bench"))
            return _content_bytes(content_with_payload(blob))

        bitmap_values = coded(masked, force={k: "BITMAP_VALUES" for k in mask})
        index_values = coded(masked, force={k: "INDEX_VALUES" for k in mask})
        signs = {k: np.where(state[k][mask[k]] >= 0, 1, -1).astype(np.int8) for k in mask}
        sign_bits = coded(signs, force={k: "BITMAP" for k in signs})
        new_signs = {k: np.where(rng.random(v.size) < flip_rate, -v, v).astype(np.int8) for k, v in signs.items()}
        coded_flips = coded(new_signs, reference=signs)
        rows.append({"density": d, "kept_weights": kept, "dense_fp32": dense_bytes, "masked_dense": masked_dense,
                     "bitmap_values": bitmap_values, "index_values": index_values, "signs": sign_bits,
                     "coded_flips_at_2pct": coded_flips})
    return rows


def container_rows(seed: int = 0) -> list[dict[str, Any]]:
    """The same large payload (dense FL CNN) in a ConfigRecord vs. an Array with a custom stype."""
    model = build_model("fl-cnn", (1, 28, 28), 10, seed=seed)
    blob = encode({k: v.detach().numpy() for k, v in model.state_dict().items()})
    as_config = RecordDict({"fedprune": payload_record(blob)})
    as_array = RecordDict({"fedprune": payload_as_array(blob)})
    rows = []
    for name, content in (("ConfigRecord bytes", as_config), ("Array custom stype", as_array)):
        seconds = _median_seconds(lambda c=content: recorddict_to_proto(c).SerializeToString(), repeats=5)
        rows.append({"container": name, "payload_bytes": len(blob), "content_bytes": _content_bytes(content),
                     "serialize_ms": round(seconds * 1000, 2)})
    return rows


def run(json_path: Path | None = None) -> dict[str, Any]:
    """Run every measurement, print tables, optionally save JSON."""
    torch.set_num_threads(1)
    results = {"masks": mask_rows(), "sign_flips": sign_flip_row(), "fl_cnn": fl_cnn_rows(),
               "containers": container_rows()}
    print("Random masks, 1,000,000 entries (payload = whole envelope):")
    print("| density | payload B | entropy B | bound B | ratio to H | ok | encode Me/s | decode Me/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["masks"]:
        print(f"| {r['density']} | {r['payload_bytes']:,} | {r['entropy_bytes']:,} | {r['bound_bytes']:,} | "
              f"{r['ratio_to_entropy']} | {r['within_bound']} | {r['encode_Mentries_per_s']} | "
              f"{r['decode_Mentries_per_s']} |")
    s = results["sign_flips"]
    print(f"\nSign vector, {s['entries']:,} kept weights, {s['flip_rate']:.0%} flipped vs reference: "
          f"{s['payload_bytes']:,} B ({s['encoding']}), entropy {s['entropy_bytes']:,} B, bound "
          f"{s['bound_bytes']:,} B, ok={s['within_bound']}; raw sign bits {s['raw_sign_bits_bytes']:,} B")
    print("\nFL CNN, bytes per client per round (Flower message content, measured):")
    print("| density | kept | dense fp32 | masked dense | bitmap+values | index+values | signs | coded flips (2%) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results["fl_cnn"]:
        print(f"| {r['density']} | {r['kept_weights']:,} | {r['dense_fp32']:,} | {r['masked_dense']:,} | "
              f"{r['bitmap_values']:,} | {r['index_values']:,} | {r['signs']:,} | {r['coded_flips_at_2pct']:,} |")
    print("\nContainer for a large payload:")
    for r in results["containers"]:
        print(f"  {r['container']:20s} payload {r['payload_bytes']:,} B -> content {r['content_bytes']:,} B, "
              f"serialize {r['serialize_ms']} ms")
    if json_path:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(results, indent=1))
        print(f"\nwrote {json_path}")
    return results
