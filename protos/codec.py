"""The fedprune payload codec: named tensors (+ an optional reference) <-> validated bytes.

One API, two calls::

    blob = encode({"conv.mask": mask, "conv.values": kept}, reference=None, manifest=Manifest(...))
    decoded = decode(blob, expect=Expected.like({"conv.mask": mask, ...}))   # -> Decoded(manifest, tensors)

Per tensor the encoder tries every encoding that fits its dtype (and the
reference, for sign vectors) and keeps the smallest; the choice is recorded in
the payload. The decoder treats its input as hostile. A few bytes can declare
gigabytes (a constant bit vector is coded in zero bytes), so decoding runs in
two phases: first every header is checked — size caps, format version, digest,
names, ranks, each dimension, the decoded size of the whole payload (256 MiB by
default), and, when the receiver states what it ``expect``s, each tensor's name,
dtype and shape against that — and only then is any stream decoded (byte
lengths, index order and range, padding bits, value finiteness). Every failure
raises ``WireFormatError`` with what was wrong; ``encode`` refuses anything
``decode`` would refuse.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np
from fedprune.protos import fedprune_wire_pb2 as pb
from fedprune.protos.entropy import CodedStreamError, decode_bits, encode_bits, quantize_rate
from google.protobuf.message import DecodeError

FORMAT_VERSION = 1
DIGEST_BYTES = 16

E = pb.Encoding
_DTYPES = {
    pb.FLOAT32: np.dtype("<f4"), pb.FLOAT16: np.dtype("<f2"), pb.INT64: np.dtype("<i8"),
    pb.INT32: np.dtype("<i4"), pb.UINT8: np.dtype("u1"), pb.BOOL: np.dtype(bool), pb.SIGN: np.dtype("i1"),
}
_ENCODINGS_FOR = {
    pb.FLOAT32: (E.DENSE, E.BITMAP_VALUES, E.INDEX_VALUES),
    pb.FLOAT16: (E.DENSE,), pb.INT64: (E.DENSE,), pb.INT32: (E.DENSE,), pb.UINT8: (E.DENSE,),
    pb.BOOL: (E.BITMAP, E.INDEX_VALUES, E.CODED_BITS),
    pb.SIGN: (E.BITMAP, E.CODED_BITS, E.SIGN_FLIPS, E.CODED_FLIPS),
}
_NEEDS_REFERENCE = {E.SIGN_FLIPS, E.CODED_FLIPS}
# Wire dtype names as receivers state them in a ``TensorSpec`` ("sign" is int8 in {-1, +1}).
DTYPE_NAMES = {pb.FLOAT32: "float32", pb.FLOAT16: "float16", pb.INT64: "int64", pb.INT32: "int32",
               pb.UINT8: "uint8", pb.BOOL: "bool", pb.SIGN: "sign"}
_DTYPE_CODES = {name: code for code, name in DTYPE_NAMES.items()}


class WireFormatError(ValueError):
    """A payload is malformed, oversized, or relative to a reference the receiver does not hold."""


@dataclass(frozen=True)
class DecodeLimits:
    """Caps a receiver applies before trusting any declared size."""

    max_payload_bytes: int = 256 * 2**20
    max_tensors: int = 4096          # tensors and reference pairs together
    max_elements: int = 2**28        # per tensor, and per dimension
    max_decoded_bytes: int = 256 * 2**20  # what the decoded tensors and pairs of one payload may occupy
    max_name_length: int = 256
    max_rank: int = 8


@dataclass(frozen=True)
class TensorSpec:
    """What a receiver expects of one tensor: its wire dtype name (``DTYPE_NAMES``) and shape.

    ``at_most``: the shape is an upper bound per dimension (same rank), for tensors whose length the
    sender chooses within a known limit (e.g. one sign per moved score)."""

    dtype: str
    shape: tuple[int, ...]
    at_most: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPE_CODES:
            raise ValueError(f"dtype '{self.dtype}' is not one of: {', '.join(_DTYPE_CODES)}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    @classmethod
    def of(cls, array: np.ndarray, at_most: bool = False) -> TensorSpec:
        """The spec ``array`` would travel as (int8 arrays are sign vectors)."""
        array = np.asarray(array)
        return cls(DTYPE_NAMES[_dtype_code_of(array.dtype, "expected tensor")], array.shape, at_most)


@dataclass(frozen=True)
class Expected:
    """What a receiver asked for: every tensor it accepts (by name), which of them may be absent, and
    which reference tensors may carry reference pairs. Checked against the headers before any stream is
    decoded, so a payload can never make the receiver allocate more than it asked for."""

    tensors: Mapping[str, TensorSpec]
    optional: Collection[str] = frozenset()
    pairs: Collection[str] = frozenset()

    @classmethod
    def like(cls, tensors: Mapping[str, np.ndarray], *, optional: Collection[str] = frozenset(),
             pairs: Collection[str] = frozenset()) -> Expected:
        """Expect exactly the names, dtypes and shapes of ``tensors``."""
        return cls({name: TensorSpec.of(value) for name, value in tensors.items()}, frozenset(optional),
                   frozenset(pairs))


@dataclass(frozen=True)
class Manifest:
    """What a payload is: architecture, model seed, density, round, kind, and its reference digest."""

    architecture: str = ""
    model_seed: int = 0
    density: float = 1.0
    round: int = 0
    kind: str = ""
    reference_digest: bytes = b""


@dataclass(frozen=True)
class Decoded:
    """A decoded payload: its manifest, its tensors, the encoding chosen for each, and its reference pairs
    (keyed by the reference tensor's name, shaped like it, zero where no pair is)."""

    manifest: Manifest
    tensors: dict[str, np.ndarray]
    encodings: dict[str, str] = field(default_factory=dict)
    pairs: dict[str, np.ndarray] = field(default_factory=dict)


def _dtype_code_of(dtype: np.dtype, name: str) -> int:
    if dtype == np.dtype(bool):
        return pb.BOOL
    if dtype == np.int8:
        return pb.SIGN
    for code, wire in _DTYPES.items():
        if code not in (pb.BOOL, pb.SIGN) and dtype == wire.newbyteorder("="):
            return code
    raise WireFormatError(f"tensor '{name}': dtype {dtype} is not supported by the wire format")


def _dtype_code(array: np.ndarray, name: str) -> int:
    code = _dtype_code_of(array.dtype, name)
    if code == pb.SIGN and array.size and not np.isin(array, (-1, 1)).all():
        raise WireFormatError(f"tensor '{name}': int8 tensors are sign vectors and must hold only -1/+1")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise WireFormatError(f"tensor '{name}': values hold NaN or Inf (the receiver refuses them)")
    return code


def _decoded_itemsize(code: int, encoding: int) -> int:
    """Bytes per element of a decoded tensor (DENSE_F16 decodes to float32)."""
    return 4 if encoding == E.DENSE_F16 else _DTYPES[code].itemsize


def _check_name(name: str, limits: DecodeLimits, what: str = "tensor") -> None:
    if not name or len(name) > limits.max_name_length:
        raise WireFormatError(f"{what} name {name[:40]!r} is empty or longer than {limits.max_name_length}")


def _check_shape(name: str, shape: tuple[int, ...] | list[int], limits: DecodeLimits) -> int:
    """The element count of ``shape`` after checking its rank and every dimension against the caps."""
    if len(shape) > limits.max_rank:
        raise _fail(name, f"rank {len(shape)} exceeds {limits.max_rank}")
    n = 1
    for dim in shape:
        if not 0 <= int(dim) <= limits.max_elements:  # each dimension: [0, 2**63] has 0 elements
            raise _fail(name, f"shape {list(shape)} exceeds the cap of {limits.max_elements} elements")
        n *= int(dim)
    if n > limits.max_elements:
        raise _fail(name, f"shape {list(shape)} exceeds the cap of {limits.max_elements} elements")
    return n


def reference_digest(reference: Mapping[str, np.ndarray] | None) -> bytes:
    """Digest of a reference (names, dtypes, shapes, contents), sorted by name; empty for none."""
    if not reference:
        return b""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for name in sorted(reference):
        array = np.ascontiguousarray(reference[name])
        h.update(name.encode() + b"\0" + str(array.dtype).encode() + b"\0" + repr(array.shape).encode())
        h.update(array.tobytes())
    return h.digest()


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

def _bits_of(array: np.ndarray, dtype_code: int) -> np.ndarray:
    flat = array.reshape(-1)
    return flat > 0 if dtype_code == pb.SIGN else flat.astype(bool, copy=False)


def _encode_as(array: np.ndarray, dtype_code: int, encoding: int, ref: np.ndarray | None) -> pb.Tensor:
    flat = array.reshape(-1)
    t = pb.Tensor(dtype=dtype_code, encoding=encoding, shape=list(array.shape))
    if encoding == E.DENSE:
        t.data = np.ascontiguousarray(flat, dtype=_DTYPES[dtype_code]).tobytes()
    elif encoding == E.DENSE_F16:
        t.data = flat.astype("<f2").tobytes()
    elif encoding == E.BITMAP:
        bits = _bits_of(array, dtype_code)
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
        bits = _bits_of(array, dtype_code)
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
    else:
        raise ValueError(f"unknown encoding {encoding}")
    return t


def _usable_reference(name: str, array: np.ndarray, reference: Mapping[str, np.ndarray] | None) -> np.ndarray | None:
    if not reference or name not in reference:
        return None
    ref = np.asarray(reference[name])
    if ref.dtype == np.int8 and ref.shape == array.shape:
        return ref
    return None


def encode(tensors: Mapping[str, np.ndarray], *, reference: Mapping[str, np.ndarray] | None = None,
           manifest: Manifest | None = None, allow_fp16: bool = False,
           force: Mapping[str, str] | None = None, pairs: Mapping[str, np.ndarray] | None = None,
           limits: DecodeLimits = DecodeLimits()) -> bytes:
    """Encode ``tensors`` (float32/16, int64/32, uint8, bool masks, int8 ±1 signs) into one payload.

    ``reference`` holds what the receiver already has (same names; sign vectors
    there enable flip encodings). ``allow_fp16`` lets float32 travel as float16
    when smaller (lossy). ``force`` pins a tensor's encoding by name (for
    benchmarks); otherwise the smallest is chosen. ``pairs`` maps reference names
    to float32 arrays of the reference tensor's shape whose nonzero entries travel
    as (index, value) pairs without a tensor header (``ReferencePairs``).

    Raises ``WireFormatError`` for anything ``decode`` with the same ``limits`` would refuse (empty or
    long names, rank, element and size caps, too many tensors, NaN/Inf, a manifest it would not accept).
    """
    manifest = manifest or Manifest()
    _check_manifest(manifest.architecture, manifest.kind, manifest.density, manifest.round, limits)
    if len(tensors) + len(pairs or {}) > limits.max_tensors:
        raise WireFormatError(f"{len(tensors) + len(pairs or {})} tensors and pairs exceed the cap of "
                              f"{limits.max_tensors}")
    decoded_bytes = 0
    payload = pb.Payload()
    m = payload.manifest
    m.architecture, m.model_seed, m.density = manifest.architecture, manifest.model_seed, manifest.density
    m.round, m.kind = manifest.round, manifest.kind
    m.reference_digest = reference_digest(reference) if reference else b""
    for name, value in tensors.items():
        _check_name(name, limits)
        array = np.asarray(value)
        code = _dtype_code(array, name)
        decoded_bytes += _check_shape(name, array.shape, limits) * _DTYPES[code].itemsize
        ref = _usable_reference(name, array, reference)
        candidates = [e for e in _ENCODINGS_FOR[code] if ref is not None or e not in _NEEDS_REFERENCE]
        if allow_fp16 and code == pb.FLOAT32:
            candidates.append(E.DENSE_F16)
        if force and name in force:
            wanted = E.Value(force[name])
            if wanted not in candidates:
                raise ValueError(f"tensor '{name}': encoding {force[name]} does not apply")
            candidates = [wanted]
        best = min((_encode_as(array, code, e, ref) for e in candidates), key=lambda t: t.ByteSize())
        best.name = name
        payload.tensors.append(best)
    slots = {name: slot for slot, name in enumerate(sorted(reference or {}))}
    for name, value in (pairs or {}).items():
        array = np.asarray(value, dtype=np.float32)
        if name not in slots or np.shape(reference[name]) != array.shape:
            raise ValueError(f"pairs '{name}': not a tensor of the reference, or not of its shape")
        if not np.isfinite(array).all():
            raise WireFormatError(f"pairs '{name}': values hold NaN or Inf (the receiver refuses them)")
        decoded_bytes += 4 * array.size
        coded = _encode_as(array, pb.FLOAT32, E.INDEX_VALUES, None)
        payload.pairs.append(pb.ReferencePairs(slot=slots[name], indices=coded.data, values=coded.values))
    if decoded_bytes > limits.max_decoded_bytes:
        raise WireFormatError(f"payload decodes to {decoded_bytes} bytes, over the cap of {limits.max_decoded_bytes}")
    body = payload.SerializeToString()
    digest = hashlib.blake2b(body, digest_size=DIGEST_BYTES).digest()
    blob = pb.Envelope(format_version=FORMAT_VERSION, body=body, digest=digest).SerializeToString()
    if len(blob) > limits.max_payload_bytes:
        raise WireFormatError(f"payload of {len(blob)} bytes exceeds the cap of {limits.max_payload_bytes}")
    return blob


def _check_manifest(architecture: str, kind: str, density: float, server_round: int, limits: DecodeLimits) -> None:
    if len(architecture) > limits.max_name_length or len(kind) > limits.max_name_length:
        raise WireFormatError(f"manifest architecture/kind longer than {limits.max_name_length} characters")
    if not 0.0 <= density <= 1.0:  # NaN fails too
        raise WireFormatError(f"manifest density {density} is outside [0, 1]")
    if not 0 <= server_round < 2**32:
        raise WireFormatError(f"manifest round {server_round} is outside [0, 2^32)")


# -- decoding (hostile input) ----------------------------------------------------

def _fail(name: str, message: str) -> WireFormatError:
    return WireFormatError(f"tensor '{name}': {message}")


def _unpack_bits(data: bytes, length: int, name: str) -> np.ndarray:
    if len(data) != (length + 7) // 8:
        raise _fail(name, f"bitmap has {len(data)} bytes, {length} bits need {(length + 7) // 8}")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    if bits[length:].any():
        raise _fail(name, "bitmap has nonzero padding bits")
    return bits[:length].astype(bool)


def _float_values(t: pb.Tensor, count: int) -> np.ndarray:
    if len(t.values) != 4 * count:
        raise _fail(t.name, f"{len(t.values)} value bytes for {count} float32 values")
    values = np.frombuffer(t.values, dtype="<f4")
    if not np.isfinite(values).all():
        raise _fail(t.name, "values hold NaN or Inf")
    return values


def _decode_tensor(t: pb.Tensor, n: int, ref: np.ndarray | None) -> np.ndarray:
    code, enc = t.dtype, t.encoding
    if code not in _DTYPES:
        raise _fail(t.name, f"unknown dtype {code}")
    allowed = _ENCODINGS_FOR[code] + ((E.DENSE_F16,) if code == pb.FLOAT32 else ())
    if enc not in allowed:
        raise _fail(t.name, f"encoding {E.Name(enc) if enc in E.values() else enc} does not apply to "
                            f"dtype {pb.DType.Name(code)}")
    if enc not in (E.DENSE, E.DENSE_F16) and t.count > n:
        raise _fail(t.name, f"count {t.count} exceeds {n} elements")
    if enc in (E.DENSE, E.DENSE_F16, E.BITMAP, E.SIGN_FLIPS) and t.values:
        raise _fail(t.name, "unexpected values field")
    if enc == E.DENSE:
        dtype = _DTYPES[code]
        if len(t.data) != n * dtype.itemsize:
            raise _fail(t.name, f"{len(t.data)} bytes for {n} x {dtype}")
        flat = np.frombuffer(t.data, dtype=dtype).copy()
        if dtype.kind == "f" and not np.isfinite(flat).all():
            raise _fail(t.name, "values hold NaN or Inf")
        return flat.astype(dtype.newbyteorder("="))
    if enc == E.DENSE_F16:
        if len(t.data) != 2 * n:
            raise _fail(t.name, f"{len(t.data)} bytes for {n} float16 values")
        flat = np.frombuffer(t.data, dtype="<f2").astype(np.float32)
        if not np.isfinite(flat).all():
            raise _fail(t.name, "values hold NaN or Inf")
        return flat
    if enc == E.BITMAP:
        bits = _unpack_bits(t.data, n, t.name)
        if int(bits.sum()) != t.count:
            raise _fail(t.name, f"bitmap has {int(bits.sum())} ones, header says {t.count}")
        return _from_bits(bits, code)
    if enc == E.BITMAP_VALUES:
        bits = _unpack_bits(t.data, n, t.name)
        if int(bits.sum()) != t.count:
            raise _fail(t.name, f"bitmap has {int(bits.sum())} ones, header says {t.count}")
        flat = np.zeros(n, dtype=np.float32)
        flat[bits] = _float_values(t, t.count)
        if (flat[bits] == 0).any():
            raise _fail(t.name, "a kept position carries the value 0")
        return flat
    if enc == E.INDEX_VALUES:
        if len(t.data) > 8 * t.count:
            raise _fail(t.name, "index list longer than its count allows")
        deltas = varint_decode(t.data, t.count, max(n, 1))
        idx = np.cumsum(deltas + 1) - 1
        if t.count and idx[-1] >= n:
            raise _fail(t.name, f"index {int(idx[-1])} out of range for {n} elements")
        if code == pb.BOOL:
            if t.values:
                raise _fail(t.name, "a mask carries no values")
            flat = np.zeros(n, dtype=bool)
            flat[idx] = True
            return flat
        flat = np.zeros(n, dtype=np.float32)
        flat[idx] = _float_values(t, t.count)
        if t.count and (flat[idx] == 0).any():
            raise _fail(t.name, "a listed position carries the value 0")
        return flat
    if t.values:
        raise _fail(t.name, "unexpected values field")
    if enc in (E.CODED_BITS, E.CODED_FLIPS):
        if not 1 <= t.model_q < 2**16:
            raise _fail(t.name, f"model rate {t.model_q} outside [1, 65535]")
        if t.count in (0, n):
            if t.data:
                raise _fail(t.name, "a constant bit vector carries data")
            bits = np.full(n, t.count == n and n > 0, dtype=bool)
        else:
            if len(t.data) > 4 * ((n + 7) // 8) + 64:
                raise _fail(t.name, "coded stream larger than any encoding of this tensor")
            try:
                bits = decode_bits(t.data, n, t.model_q)
            except CodedStreamError as exc:
                raise _fail(t.name, str(exc)) from None
            if int(bits.sum()) != t.count:
                raise _fail(t.name, f"decoded {int(bits.sum())} ones, header says {t.count}")
        if enc == E.CODED_BITS:
            return _from_bits(bits, code)
        return _apply_flips(bits, ref, t.name)
    if enc == E.SIGN_FLIPS:
        bits = _unpack_bits(t.data, n, t.name)
        if int(bits.sum()) != t.count:
            raise _fail(t.name, f"flip bitmap has {int(bits.sum())} ones, header says {t.count}")
        return _apply_flips(bits, ref, t.name)
    raise _fail(t.name, f"unknown encoding {enc}")


def _from_bits(bits: np.ndarray, code: int) -> np.ndarray:
    """Bits as a mask, or as ±1 signs built in int8 in place (one byte per element, no int64 temporary)."""
    if code == pb.BOOL:
        return bits
    signs = bits.astype(np.int8)
    signs *= 2
    signs -= 1
    return signs


def _apply_flips(flips: np.ndarray, ref: np.ndarray | None, name: str) -> np.ndarray:
    if ref is None:
        raise _fail(name, "sign flips need a reference sign vector of this name and shape")
    return np.where(flips, -ref.reshape(-1), ref.reshape(-1)).astype(np.int8)


def decode(blob: bytes, *, reference: Mapping[str, np.ndarray] | None = None, expect: Expected | None = None,
           limits: DecodeLimits = DecodeLimits()) -> Decoded:
    """Validate and decode a payload; raise ``WireFormatError`` on anything wrong.

    ``expect`` is what the receiver asked for: with it, a tensor it did not ask for, of another dtype or
    shape, or a missing one is refused from the headers alone. Without it only ``limits`` bound what a
    payload can make the receiver allocate (256 MiB decoded by default)."""
    try:
        return _decode(blob, reference, expect, limits)
    except WireFormatError:
        raise
    except (ValueError, TypeError, OverflowError, IndexError, KeyError, MemoryError, RecursionError) as exc:
        # Defence in depth: every check above should have caught it; the contract is one error type.
        raise WireFormatError(f"payload is malformed: {type(exc).__name__}: {exc}") from None


def _decode(blob: bytes, reference: Mapping[str, np.ndarray] | None, expect: Expected | None,
            limits: DecodeLimits) -> Decoded:
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise WireFormatError(f"payload must be bytes, got {type(blob).__name__}")
    if len(blob) > limits.max_payload_bytes:
        raise WireFormatError(f"payload of {len(blob)} bytes exceeds the cap of {limits.max_payload_bytes}")
    try:
        envelope = pb.Envelope.FromString(bytes(blob))
    except DecodeError as exc:
        raise WireFormatError(f"payload is not a fedprune envelope: {exc}") from None
    if envelope.format_version != FORMAT_VERSION:
        raise WireFormatError(f"format version {envelope.format_version} is not supported (this is {FORMAT_VERSION})")
    if hashlib.blake2b(envelope.body, digest_size=DIGEST_BYTES).digest() != envelope.digest:
        raise WireFormatError("payload digest does not match its body (corrupted in transit?)")
    try:
        payload = pb.Payload.FromString(envelope.body)
    except DecodeError as exc:
        raise WireFormatError(f"payload body does not parse: {exc}") from None
    m = payload.manifest
    _check_manifest(m.architecture, m.kind, m.density, m.round, limits)
    if m.reference_digest:
        if not reference:
            raise WireFormatError("payload is relative to a reference, but none was given")
        if reference_digest(reference) != m.reference_digest:
            raise WireFormatError("payload was encoded against a different reference (digest mismatch)")
    if len(payload.tensors) + len(payload.pairs) > limits.max_tensors:
        raise WireFormatError(f"{len(payload.tensors) + len(payload.pairs)} tensors and pairs exceed the cap of "
                              f"{limits.max_tensors}")
    # Phase 1: every header, before a single stream is decoded.
    sizes = _check_headers(payload, reference if m.reference_digest else None, expect, limits)
    # Phase 2: the streams, each bounded by a header that passed.
    tensors, encodings = {}, {}
    for t in payload.tensors:
        ref = _usable_reference(t.name, np.empty(tuple(t.shape), dtype=np.int8), reference) \
            if t.encoding in _NEEDS_REFERENCE else None
        tensors[t.name] = _decode_tensor(t, sizes[t.name], ref).reshape(tuple(int(d) for d in t.shape))
        encodings[t.name] = E.Name(t.encoding)
    pairs = _decode_pairs(payload, reference if m.reference_digest else None)
    manifest = Manifest(m.architecture, m.model_seed, m.density, m.round, m.kind, m.reference_digest)
    return Decoded(manifest, tensors, encodings, pairs)


def _check_headers(payload: pb.Payload, reference: Mapping[str, np.ndarray] | None, expect: Expected | None,
                   limits: DecodeLimits) -> dict[str, int]:
    """Element count of every tensor, after checking names, shapes, dtypes, the decoded-size cap and what
    the receiver expects. Allocates nothing proportional to a declared size."""
    sizes: dict[str, int] = {}
    decoded_bytes = 0
    for t in payload.tensors:
        _check_name(t.name, limits)
        if t.name in sizes:
            raise _fail(t.name, "appears twice")
        n = _check_shape(t.name, t.shape, limits)
        if t.dtype not in _DTYPES:
            raise _fail(t.name, f"unknown dtype {t.dtype}")
        if t.encoding in _NEEDS_REFERENCE and reference is None:
            raise _fail(t.name, "flip encoding in a payload that names no reference")
        if expect is not None:
            _check_expected(t, expect)
        sizes[t.name] = n
        decoded_bytes += n * _decoded_itemsize(t.dtype, t.encoding)
        if decoded_bytes > limits.max_decoded_bytes:
            raise WireFormatError(f"payload declares more than {limits.max_decoded_bytes} decoded bytes")
    if expect is not None:
        missing = sorted(set(expect.tensors) - set(sizes) - set(expect.optional))
        if missing:
            raise WireFormatError(f"payload lacks expected tensors {missing[:3]}"
                                  + (f" and {len(missing) - 3} more" if len(missing) > 3 else ""))
    if payload.pairs and reference is None:
        raise WireFormatError("reference pairs in a payload that names no reference")
    names = sorted(reference or {})
    for p in payload.pairs:
        if p.slot >= len(names):
            raise WireFormatError(f"reference pairs name slot {p.slot}; the reference holds {len(names)} tensors")
        if expect is not None and names[p.slot] not in expect.pairs:
            raise WireFormatError(f"reference pairs for '{names[p.slot]}' were not asked for")
        decoded_bytes += 4 * int(np.size(reference[names[p.slot]]))
        if decoded_bytes > limits.max_decoded_bytes:
            raise WireFormatError(f"payload declares more than {limits.max_decoded_bytes} decoded bytes")
    return sizes


def _check_expected(t: pb.Tensor, expect: Expected) -> None:
    spec = expect.tensors.get(t.name)
    if spec is None:
        raise _fail(t.name, "was not asked for")
    if DTYPE_NAMES[t.dtype] != spec.dtype:
        raise _fail(t.name, f"is {DTYPE_NAMES[t.dtype]}, expected {spec.dtype}")
    shape = tuple(int(d) for d in t.shape)
    fits = shape == spec.shape if not spec.at_most else (
        len(shape) == len(spec.shape) and all(d <= bound for d, bound in zip(shape, spec.shape, strict=True)))
    if not fits:
        raise _fail(t.name, f"has shape {list(shape)}, expected {'at most ' if spec.at_most else ''}"
                            f"{list(spec.shape)}")


def _decode_pairs(payload: pb.Payload, reference: Mapping[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """Each ``ReferencePairs`` as a float32 array shaped like its reference tensor (checked as INDEX_VALUES)."""
    names = sorted(reference or {})
    out: dict[str, np.ndarray] = {}
    for p in payload.pairs:
        name = names[p.slot]
        if name in out:
            raise WireFormatError(f"reference pairs for '{name}' appear twice")
        if len(p.values) % 4:
            raise WireFormatError(f"reference pairs for '{name}': {len(p.values)} value bytes is not whole float32s")
        shape = np.shape(reference[name])
        as_tensor = pb.Tensor(name=f"pairs of {name}", dtype=pb.FLOAT32, encoding=E.INDEX_VALUES,
                              count=len(p.values) // 4, data=p.indices, values=p.values)
        out[name] = _decode_tensor(as_tensor, int(np.prod(shape)), None).reshape(shape)
    return out


def encoded_sizes(blob: bytes) -> dict[str, int]:
    """Serialized bytes of each tensor in a payload (for reports), keyed by name."""
    payload = pb.Payload.FromString(pb.Envelope.FromString(blob).body)
    return {t.name: t.ByteSize() for t in payload.tensors}


def pairs_cost(blob: bytes) -> tuple[int, int]:
    """(bytes a payload's reference pairs add to it, bytes of their coded indices and values alone).

    Measured, not estimated: ``blob`` minus the same payload re-serialized without them (protobuf
    serializes a parsed message back to the same bytes). For FedTiny's top-K pairs riding on a training
    reply, this is what the adjustment's upload costs on the wire beyond the training update."""
    envelope = pb.Envelope.FromString(bytes(blob))
    payload = pb.Payload.FromString(envelope.body)
    coded = sum(len(p.indices) + len(p.values) for p in payload.pairs)
    del payload.pairs[:]
    without = pb.Envelope(format_version=envelope.format_version, body=payload.SerializeToString(),
                          digest=envelope.digest).SerializeToString()
    return len(blob) - len(without), coded
