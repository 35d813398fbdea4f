"""Each tensor encoding of the wire format, both ways: varints, bitmaps, index lists, coded bit streams, flips.

``encode_as`` writes one tensor in one encoding; ``decode_tensor`` reads one back after the payload's headers
passed their checks (``protos.codec``), treating every byte as hostile: byte lengths, index order and range,
padding bits, counts and value finiteness are checked before the tensor is returned.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from fedprune.protos import fedprune_wire_pb2 as pb
from fedprune.protos.entropy import CodedStreamError, decode_bits, encode_bits, quantize_rate
from fedprune.protos.integer_codings import decode_ints, encode_ints
from fedprune.protos.varints import varint_decode, varint_encode
from fedprune.protos.wire_types import DTYPES, ENCODINGS_FOR, tensor_error

E = pb.Encoding


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
        encode_ints(t, values)
    else:
        raise ValueError(f"unknown encoding {encoding}")
    return t


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


_DECODERS = {E.DENSE: _decode_dense, E.DENSE_F16: _decode_dense_f16, E.BITMAP: _decode_bitmap,
             E.BITMAP_VALUES: _decode_bitmap_values, E.INDEX_VALUES: _decode_index_values,
             E.CODED_BITS: _decode_coded, E.CODED_FLIPS: _decode_coded, E.SIGN_FLIPS: _decode_sign_flips,
             E.CODED_INTS: decode_ints, E.CODED_INT_DELTA: decode_ints}


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


