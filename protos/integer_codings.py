"""Integer tensors as entropy-coded symbols (``CODED_INTS``) or as changes to the receiver's copy
(``CODED_INT_DELTA``): quantized scores and their round-to-round changes (HideNseek's coded downlink).

The histogram travels in the tensor's ``values`` field (first distinct symbol zigzagged, gaps to the next ones,
then each count, all varints); both sides build the same categorical model from it. Decoding treats every byte
as hostile: the symbol count, the histogram's length, counts and range (int32 after adding the reference) are
checked before anything proportional to the tensor is allocated, and the result is built in int32.
"""

from __future__ import annotations

import numpy as np
from fedprune.protos import fedprune_wire_pb2 as pb
from fedprune.protos.entropy import MAX_ALPHABET, CodedStreamError, decode_symbols, encode_symbols
from fedprune.protos.varints import varint_decode, varint_encode
from fedprune.protos.wire_types import WireFormatError, tensor_error

E = pb.Encoding


def _zigzag(values: np.ndarray) -> np.ndarray:
    return np.where(values >= 0, 2 * values, -2 * values - 1).astype(np.uint64)


def _unzigzag(values: np.ndarray) -> np.ndarray:
    signed = values.astype(np.int64)
    return np.where(signed % 2 == 0, signed // 2, -(signed + 1) // 2)


class NotApplicable(ValueError):
    """This encoding cannot represent this tensor (the encoder tries the others)."""


def encode_ints(t: pb.Tensor, values: np.ndarray) -> None:
    """Histogram in ``values`` (the first distinct symbol zigzagged, the gaps to the next ones, then each one's
    count, all varints), the symbols ANS-coded in ``data`` (none for a constant tensor)."""
    symbols, indices, counts = np.unique(values, return_inverse=True, return_counts=True)
    if len(symbols) > MAX_ALPHABET or (values.size and (symbols[0] < -(2**31) or symbols[-1] >= 2**31)):
        raise NotApplicable(f"{len(symbols)} distinct values (or values outside int32) cannot be coded")
    t.count = len(symbols)
    if not len(symbols):
        return
    gaps = np.diff(symbols) - 1
    t.values = varint_encode(np.r_[_zigzag(symbols[:1]), gaps.astype(np.uint64)]) + varint_encode(counts)
    t.data = b"" if len(symbols) == 1 else encode_symbols(indices.reshape(-1), counts)


def decode_ints(t: pb.Tensor, n: int, ref: np.ndarray | None) -> np.ndarray:
    """Integer symbols with their histogram (``CODED_INTS``), or changes to ``ref`` (``CODED_INT_DELTA``).
    Ranges are checked on the histogram, so the result is built in int32 (4 B per element, no int64 copy)."""
    distinct = t.count
    if not 1 <= distinct <= min(n, MAX_ALPHABET) and not (n == 0 and distinct == 0):
        raise tensor_error(t.name, f"{distinct} distinct symbols for {n} elements (at most {MAX_ALPHABET})")
    if len(t.values) > 20 * distinct:
        raise tensor_error(t.name, "histogram longer than its symbol count allows")
    symbols, counts = _histogram(t, distinct)
    if int(counts.sum()) != n:
        raise tensor_error(t.name, f"histogram counts {int(counts.sum())} symbols for {n} elements")
    low, high = (int(symbols[0]), int(symbols[-1])) if distinct else (0, 0)
    if t.encoding == E.CODED_INT_DELTA:
        if ref is None or ref.size != n or ref.dtype != np.int32:
            raise tensor_error(t.name, "change encoding without an int32 reference of this shape")
        if n:
            low, high = low + int(ref.min()), high + int(ref.max())
    if low < -(2**31) or high >= 2**31:
        raise tensor_error(t.name, "values outside int32")
    if distinct <= 1:
        if t.data:
            raise tensor_error(t.name, "a constant tensor carries data")
        values = np.full(n, symbols[0] if distinct else 0, dtype=np.int64 if t.encoding == E.CODED_INT_DELTA
                         else np.int32)
    else:
        if len(t.data) > 4 * n + 64:
            raise tensor_error(t.name, "coded stream larger than any encoding of this tensor")
        try:
            values = symbols.astype(np.int64 if t.encoding == E.CODED_INT_DELTA else np.int32)[
                decode_symbols(t.data, n, counts)]
        except CodedStreamError as exc:
            raise tensor_error(t.name, str(exc)) from None
    if t.encoding == E.CODED_INT_DELTA:
        values = (values + ref.reshape(-1)).astype(np.int32)
    return values


def _histogram(t: pb.Tensor, distinct: int) -> tuple[np.ndarray, np.ndarray]:
    """(distinct symbols, increasing; their counts, each >= 1) from the ``values`` field."""
    if distinct == 0:
        if t.values:
            raise tensor_error(t.name, "an empty tensor carries a histogram")
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    try:
        raw = varint_decode(t.values, 2 * distinct, 2**34)
    except WireFormatError as exc:
        raise tensor_error(t.name, f"histogram: {exc}") from None
    first = _unzigzag(raw[:1])
    symbols = first[0] + np.cumsum(np.r_[0, raw[1:distinct].astype(np.int64) + 1])
    counts = raw[distinct:].astype(np.int64)
    if (counts < 1).any():
        raise tensor_error(t.name, "histogram has a symbol with count 0")
    if symbols[0] < -(2**32) or symbols[-1] >= 2**32:
        raise tensor_error(t.name, "histogram symbols out of range")
    return symbols, counts
