"""LEB128 varints, vectorized both ways: index gaps, histograms and counts in the wire format."""

from __future__ import annotations

import numpy as np
from fedprune.protos.wire_types import WireFormatError


def varint_encode(values: np.ndarray) -> bytes:
    """LEB128 of unsigned integers, vectorized."""
    v = np.asarray(values, dtype=np.uint64)
    if v.size == 0:
        return b""
    nbytes = np.ones(v.shape, dtype=np.int64)
    for k in range(1, 10):
        nbytes += v >= np.uint64(1) << np.uint64(7 * k)
    offsets = np.cumsum(nbytes) - nbytes
    out = np.empty(int(nbytes.sum()), dtype=np.uint8)
    for k in range(int(nbytes.max())):
        sel = nbytes > k
        chunk = ((v[sel] >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        out[offsets[sel] + k] = chunk | ((nbytes[sel] > k + 1).astype(np.uint8) << 7)
    return out.tobytes()


def varint_decode(data: bytes, count: int, max_value: int) -> np.ndarray:
    """Decode exactly ``count`` varints, each < ``max_value`` (< 2^56); raises on anything else."""
    raw = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(raw < 0x80)
    if len(ends) != count or (count and ends[-1] != len(raw) - 1) or (not count and len(raw)):
        raise WireFormatError(f"index list holds {len(ends)} complete varints, expected {count}")
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    starts = np.concatenate(([0], ends[:-1] + 1))
    lengths = ends - starts + 1
    if lengths.max() > 8:
        raise WireFormatError("index varint longer than 8 bytes")
    out = np.zeros(count, dtype=np.uint64)
    for k in range(int(lengths.max())):
        sel = lengths > k
        out[sel] |= (raw[starts[sel] + k] & 0x7F).astype(np.uint64) << np.uint64(7 * k)
    if out.max() >= max_value:
        raise WireFormatError(f"index delta {int(out.max())} out of range (< {max_value})")
    return out.astype(np.int64)
