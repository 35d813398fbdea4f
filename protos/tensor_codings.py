"""Each tensor encoding of the wire format, both ways: varints, bitmaps, index lists, coded bit streams, flips.

``encode_as`` writes one tensor in one encoding; ``decode_tensor`` reads one back after the payload's headers
passed their checks (``protos.codec``), treating every byte as hostile: byte lengths, index order and range,
padding bits, counts and value finiteness are checked before the tensor is returned.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from fedprune.protos import fedprune_wire_pb2 as pb
from fedprune.protos.entropy import (
    MAX_ALPHABET,
    CodedStreamError,
    decode_bits,
    decode_symbols,
    encode_bits,
    encode_symbols,
    quantize_rate,
)
from fedprune.protos.wire_types import DTYPES, ENCODINGS_FOR, WireFormatError, tensor_error

E = pb.Encoding


# -- varints ------------------------------------------------------------------

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


# -- per-encoding encoders -----------------------------------------------------

def bits_of(array: np.ndarray, dtype_code: int) -> np.ndarray:
    flat = array.reshape(-1)
    return flat > 0 if dtype_code == pb.SIGN else flat.astype(bool, copy=False)


def encode_as(array: np.ndarray, dtype_code: int, encoding: int, ref: np.ndarray | None) -> pb.Tensor:
    flat = array.reshape(-1)
    t = pb.Tensor(dtype=dtype_code, encoding=encoding, shape=list(array.shape))
    if encoding == E.DENSE:
        t.data = np.ascontiguousarray(flat, dtype=DTYPES[dtype_code]).tobytes()
    elif encoding == E.DENSE_F16:
        t.data = flat.astype("<f2").tobytes()
    elif encoding == E.BITMAP:
        bits = bits_of(array, dtype_code)
        t.data, t.count = np.packbits(bits).tobytes(), int(bits.sum())
    elif encoding in (E.BITMAP_VALUES, E.INDEX_VALUES):
        nonzero = flat != 0 if dtype_code != pb.BOOL else flat.astype(bool)
        idx = np.flatnonzero(nonzero)
        t.count = len(idx)
        if encoding == E.BITMAP_VALUES:
            t.data = np.packbits(nonzero).tobytes()
        else:
            t.data = varint_encode(np.diff(idx, prepend=-1) - 1)
        if dtype_code != pb.BOOL:
            t.values = flat[idx].astype("<f4").tobytes()
    elif encoding == E.CODED_BITS:
        bits = bits_of(array, dtype_code)
        t.count = int(bits.sum())
        t.model_q = quantize_rate(t.count, bits.size)
        t.data = b"" if t.count in (0, bits.size) else encode_bits(bits, t.model_q)
    elif encoding in (E.SIGN_FLIPS, E.CODED_FLIPS):
        flips = flat != ref.reshape(-1)
        t.count = int(flips.sum())
        if encoding == E.SIGN_FLIPS:
            t.data = np.packbits(flips).tobytes()
        else:
            t.model_q = quantize_rate(t.count, flips.size)
            t.data = b"" if t.count in (0, flips.size) else encode_bits(flips, t.model_q)
    elif encoding in (E.CODED_INTS, E.CODED_INT_DELTA):
        values = flat.astype(np.int64) - (ref.reshape(-1).astype(np.int64) if encoding == E.CODED_INT_DELTA else 0)
        _encode_ints(t, values)
    else:
        raise ValueError(f"unknown encoding {encoding}")
    return t


def _zigzag(values: np.ndarray) -> np.ndarray:
    return np.where(values >= 0, 2 * values, -2 * values - 1).astype(np.uint64)


def _unzigzag(values: np.ndarray) -> np.ndarray:
    signed = values.astype(np.int64)
    return np.where(signed % 2 == 0, signed // 2, -(signed + 1) // 2)


class NotApplicable(ValueError):
    """This encoding cannot represent this tensor (the encoder tries the others)."""


def _encode_ints(t: pb.Tensor, values: np.ndarray) -> None:
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


def usable_reference(name: str, array: np.ndarray, reference: Mapping[str, np.ndarray] | None) -> np.ndarray | None:
    """The reference tensor of this name if a reference encoding can use it: int8 signs for a sign vector,
    int32 for an int32 tensor, of the same shape."""
    if not reference or name not in reference:
        return None
    ref = np.asarray(reference[name])
    if ref.shape == array.shape and ref.dtype == array.dtype and ref.dtype in (np.int8, np.int32):
        return ref
    return None


# -- decoding (hostile input) ----------------------------------------------------

def unpack_bits(data: bytes, length: int, name: str) -> np.ndarray:
    if len(data) != (length + 7) // 8:
        raise tensor_error(name, f"bitmap has {len(data)} bytes, {length} bits need {(length + 7) // 8}")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    if bits[length:].any():
        raise tensor_error(name, "bitmap has nonzero padding bits")
    return bits[:length].astype(bool)


def float_values(t: pb.Tensor, count: int) -> np.ndarray:
    if len(t.values) != 4 * count:
        raise tensor_error(t.name, f"{len(t.values)} value bytes for {count} float32 values")
    values = np.frombuffer(t.values, dtype="<f4")
    if not np.isfinite(values).all():
        raise tensor_error(t.name, "values hold NaN or Inf")
    return values


def decode_tensor(t: pb.Tensor, n: int, ref: np.ndarray | None) -> np.ndarray:
    """Tensor ``t`` of ``n`` elements, flat, after its header and data are checked (``ref``: the receiver's
    sign vector of this name, for flip encodings); ``WireFormatError`` naming the tensor on anything wrong."""
    _check_header(t, n)
    decoder = _DECODERS.get(t.encoding)
    if decoder is None:
        raise tensor_error(t.name, f"unknown encoding {t.encoding}")
    return decoder(t, n, ref)


def _check_header(t: pb.Tensor, n: int) -> None:
    """The dtype is known, the encoding applies to it, the count fits, and no stray values field."""
    code, enc = t.dtype, t.encoding
    if code not in DTYPES:
        raise tensor_error(t.name, f"unknown dtype {code}")
    allowed = ENCODINGS_FOR[code] + ((E.DENSE_F16,) if code == pb.FLOAT32 else ())
    if enc not in allowed:
        raise tensor_error(t.name, f"encoding {E.Name(enc) if enc in E.values() else enc} does not apply to "
                            f"dtype {pb.DType.Name(code)}")
    if enc not in (E.DENSE, E.DENSE_F16) and t.count > n:
        raise tensor_error(t.name, f"count {t.count} exceeds {n} elements")
    if enc in (E.DENSE, E.DENSE_F16, E.BITMAP, E.SIGN_FLIPS, E.CODED_BITS, E.CODED_FLIPS) and t.values:
        raise tensor_error(t.name, "unexpected values field")


def _counted_bitmap(t: pb.Tensor, n: int, what: str = "bitmap") -> np.ndarray:
    """``t.data`` as ``n`` bits whose ones number what the header's count says."""
    bits = unpack_bits(t.data, n, t.name)
    if int(bits.sum()) != t.count:
        raise tensor_error(t.name, f"{what} has {int(bits.sum())} ones, header says {t.count}")
    return bits


def _decode_dense(t: pb.Tensor, n: int, ref: np.ndarray | None) -> np.ndarray:
    dtype = DTYPES[t.dtype]
    if len(t.data) != n * dtype.itemsize:
        raise tensor_error(t.name, f"{len(t.data)} bytes for {n} x {dtype}")
    flat = np.frombuffer(t.data, dtype=dtype).copy()
    if dtype.kind == "f" and not np.isfinite(flat).all():
        raise tensor_error(t.name, "values hold NaN or Inf")
    return flat.astype(dtype.newbyteorder("="))


def _decode_dense_f16(t: pb.Tensor, n: int, ref: np.ndarray | None) -> np.ndarray:
    if len(t.data) != 2 * n:
        raise tensor_error(t.name, f"{len(t.data)} bytes for {n} float16 values")
    flat = np.frombuffer(t.data, dtype="<f2").astype(np.float32)
    if not np.isfinite(flat).all():
        raise tensor_error(t.name, "values hold NaN or Inf")
    return flat


def _decode_bitmap(t: pb.Tensor, n: int, ref: np.ndarray | None) -> np.ndarray:
    return from_bits(_counted_bitmap(t, n), t.dtype)


def _decode_bitmap_values(t: pb.Tensor, n: int, ref: np.ndarray | None) -> np.ndarray:
    bits = _counted_bitmap(t, n)
    flat = np.zeros(n, dtype=np.float32)
    flat[bits] = float_values(t, t.count)
    if (flat[bits] == 0).any():
        raise tensor_error(t.name, "a kept position carries the value 0")
    return flat


def _decode_index_values(t: pb.Tensor, n: int, ref: np.ndarray | None) -> np.ndarray:
    if len(t.data) > 8 * t.count:
        raise tensor_error(t.name, "index list longer than its count allows")
    deltas = varint_decode(t.data, t.count, max(n, 1))
    idx = np.cumsum(deltas + 1) - 1
    if t.count and idx[-1] >= n:
        raise tensor_error(t.name, f"index {int(idx[-1])} out of range for {n} elements")
    if t.dtype == pb.BOOL:
        if t.values:
            raise tensor_error(t.name, "a mask carries no values")
        flat = np.zeros(n, dtype=bool)
        flat[idx] = True
        return flat
    flat = np.zeros(n, dtype=np.float32)
    flat[idx] = float_values(t, t.count)
    if t.count and (flat[idx] == 0).any():
        raise tensor_error(t.name, "a listed position carries the value 0")
    return flat


def _decode_coded(t: pb.Tensor, n: int, ref: np.ndarray | None) -> np.ndarray:
    """An entropy-coded bit vector: a mask or signs (``CODED_BITS``), or flips of ``ref`` (``CODED_FLIPS``)."""
    if not 1 <= t.model_q < 2**16:
        raise tensor_error(t.name, f"model rate {t.model_q} outside [1, 65535]")
    if t.count in (0, n):
        if t.data:
            raise tensor_error(t.name, "a constant bit vector carries data")
        bits = np.full(n, t.count == n and n > 0, dtype=bool)
    else:
        if len(t.data) > 4 * ((n + 7) // 8) + 64:
            raise tensor_error(t.name, "coded stream larger than any encoding of this tensor")
        try:
            bits = decode_bits(t.data, n, t.model_q)
        except CodedStreamError as exc:
            raise tensor_error(t.name, str(exc)) from None
        if int(bits.sum()) != t.count:
            raise tensor_error(t.name, f"decoded {int(bits.sum())} ones, header says {t.count}")
    if t.encoding == E.CODED_BITS:
        return from_bits(bits, t.dtype)
    return apply_flips(bits, ref, t.name)


def _decode_sign_flips(t: pb.Tensor, n: int, ref: np.ndarray | None) -> np.ndarray:
    return apply_flips(_counted_bitmap(t, n, "flip bitmap"), ref, t.name)


def _decode_ints(t: pb.Tensor, n: int, ref: np.ndarray | None) -> np.ndarray:
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


_DECODERS = {E.DENSE: _decode_dense, E.DENSE_F16: _decode_dense_f16, E.BITMAP: _decode_bitmap,
             E.BITMAP_VALUES: _decode_bitmap_values, E.INDEX_VALUES: _decode_index_values,
             E.CODED_BITS: _decode_coded, E.CODED_FLIPS: _decode_coded, E.SIGN_FLIPS: _decode_sign_flips,
             E.CODED_INTS: _decode_ints, E.CODED_INT_DELTA: _decode_ints}


def from_bits(bits: np.ndarray, code: int) -> np.ndarray:
    """Bits as a mask, or as ±1 signs built in int8 in place (one byte per element, no int64 temporary)."""
    if code == pb.BOOL:
        return bits
    signs = bits.astype(np.int8)
    signs *= 2
    signs -= 1
    return signs


def apply_flips(flips: np.ndarray, ref: np.ndarray | None, name: str) -> np.ndarray:
    if ref is None:
        raise tensor_error(name, "sign flips need a reference sign vector of this name and shape")
    return np.where(flips, -ref.reshape(-1), ref.reshape(-1)).astype(np.int8)


