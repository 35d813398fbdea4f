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
from collections.abc import Mapping

import numpy as np
from fedprune.protos import fedprune_wire_pb2 as pb
from fedprune.protos.integer_codings import NotApplicable
from fedprune.protos.tensor_codings import (
    decode_tensor,
    encode_as,
    usable_reference,
    varint_decode,
    varint_encode,
)
from fedprune.protos.wire_types import (
    DEFAULT_LIMITS,
    DIGEST_BYTES,
    DTYPE_NAMES,
    DTYPES,
    ENCODINGS_FOR,
    FORMAT_VERSION,
    NEEDS_REFERENCE,
    Decoded,
    DecodeLimits,
    Expected,
    Manifest,
    TensorSpec,
    WireFormatError,
    check_name,
    check_shape,
    checked_dtype_code,
    decoded_itemsize,
    reference_digest,
    tensor_error,
)
from google.protobuf.message import DecodeError

__all__ = ["DIGEST_BYTES", "DTYPE_NAMES", "FORMAT_VERSION", "DecodeLimits", "Decoded", "Expected", "Manifest",
           "TensorSpec", "WireFormatError", "decode", "encode", "on_float16_grid", "pairs_cost", "reference_digest",
           "varint_decode", "varint_encode"]
E = pb.Encoding


def encode(tensors: Mapping[str, np.ndarray], *, reference: Mapping[str, np.ndarray] | None = None,
           manifest: Manifest | None = None, allow_fp16: bool = False,
           force: Mapping[str, str] | None = None, pairs: Mapping[str, np.ndarray] | None = None,
           limits: DecodeLimits = DEFAULT_LIMITS) -> bytes:
    """Encode ``tensors`` (float32/16, int64/32, uint8, bool masks, int8 ±1 signs) into one payload.

    ``reference`` holds what the receiver already has (same names; sign vectors
    there enable flip encodings). ``allow_fp16`` lets float32 travel as float16
    when smaller (lossy). ``force`` pins a tensor's encoding by name (benchmarks;
    ``DENSE_F16`` for values a sender keeps on the float16 grid, ``on_float16_grid``);
    otherwise the smallest is chosen. ``pairs`` maps reference names
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
    payload = pb.Payload()
    m = payload.manifest
    m.architecture, m.model_seed, m.density = manifest.architecture, manifest.model_seed, manifest.density
    m.round, m.kind = manifest.round, manifest.kind
    m.reference_digest = reference_digest(reference) if reference else b""
    decoded_bytes = 0
    for name, value in tensors.items():
        tensor, size = _encode_tensor(name, value, reference, allow_fp16, force, limits)
        payload.tensors.append(tensor)
        decoded_bytes += size
    decoded_bytes += _append_pairs(payload, pairs or {}, reference)
    if decoded_bytes > limits.max_decoded_bytes:
        raise WireFormatError(f"payload decodes to {decoded_bytes} bytes, over the cap of {limits.max_decoded_bytes}")
    body = payload.SerializeToString()
    digest = hashlib.blake2b(body, digest_size=DIGEST_BYTES).digest()
    blob = pb.Envelope(format_version=FORMAT_VERSION, body=body, digest=digest).SerializeToString()
    if len(blob) > limits.max_payload_bytes:
        raise WireFormatError(f"payload of {len(blob)} bytes exceeds the cap of {limits.max_payload_bytes}")
    return blob


def on_float16_grid(arrays: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """float32 copies of ``arrays`` rounded to the nearest float16 value, so they travel as ``DENSE_F16``
    without loss (a sender that keeps these values holds exactly what the receiver decodes); ``ValueError``
    for a value beyond float16's range."""
    out = {}
    for name, value in arrays.items():
        rounded = np.asarray(value, dtype=np.float32).astype(np.float16)
        if not np.isfinite(rounded).all():
            raise ValueError(f"tensor '{name}' holds values beyond float16's range")
        out[name] = rounded.astype(np.float32)
    return out


def _encode_tensor(name: str, value: np.ndarray, reference: Mapping[str, np.ndarray] | None, allow_fp16: bool,
                   force: Mapping[str, str] | None, limits: DecodeLimits) -> tuple[pb.Tensor, int]:
    """(``value`` in the smallest encoding that applies, or the one ``force`` names; its decoded bytes)."""
    check_name(name, limits)
    array = np.asarray(value)
    code = checked_dtype_code(array, name)
    decoded_bytes = check_shape(name, array.shape, limits) * DTYPES[code].itemsize
    ref = usable_reference(name, array, reference)
    candidates = [e for e in ENCODINGS_FOR[code] if ref is not None or e not in NEEDS_REFERENCE]
    if (allow_fp16 or (force or {}).get(name) == "DENSE_F16") and code == pb.FLOAT32:  # forcing it is consent
        candidates.append(E.DENSE_F16)
    if force and name in force:
        wanted = E.Value(force[name])
        if wanted not in candidates:
            raise ValueError(f"tensor '{name}': encoding {force[name]} does not apply")
        candidates = [wanted]
    best = min(_applicable(array, code, candidates, ref), key=lambda t: t.ByteSize())
    best.name = name
    return best, decoded_bytes


def _applicable(array: np.ndarray, code: int, candidates: list[int], ref: np.ndarray | None) -> list[pb.Tensor]:
    """``array`` in each candidate encoding that can represent it (DENSE always can)."""
    encoded = []
    for encoding in candidates:
        try:
            encoded.append(encode_as(array, code, encoding, ref))
        except NotApplicable:
            continue
    if not encoded:
        raise WireFormatError(f"no encoding in {[E.Name(e) for e in candidates]} can represent this tensor")
    return encoded


def _append_pairs(payload: pb.Payload, pairs: Mapping[str, np.ndarray],
                  reference: Mapping[str, np.ndarray] | None) -> int:
    """Add ``pairs`` to ``payload`` as (index, value) lists by reference slot; their decoded bytes."""
    decoded_bytes = 0
    slots = {name: slot for slot, name in enumerate(sorted(reference or {}))}
    for name, value in pairs.items():
        array = np.asarray(value, dtype=np.float32)
        if name not in slots or np.shape(reference[name]) != array.shape:
            raise ValueError(f"pairs '{name}': not a tensor of the reference, or not of its shape")
        if not np.isfinite(array).all():
            raise WireFormatError(f"pairs '{name}': values hold NaN or Inf (the receiver refuses them)")
        decoded_bytes += 4 * array.size
        coded = encode_as(array, pb.FLOAT32, E.INDEX_VALUES, None)
        payload.pairs.append(pb.ReferencePairs(slot=slots[name], indices=coded.data, values=coded.values))
    return decoded_bytes


def _check_manifest(architecture: str, kind: str, density: float, server_round: int, limits: DecodeLimits) -> None:
    if len(architecture) > limits.max_name_length or len(kind) > limits.max_name_length:
        raise WireFormatError(f"manifest architecture/kind longer than {limits.max_name_length} characters")
    if not 0.0 <= density <= 1.0:  # NaN fails too
        raise WireFormatError(f"manifest density {density} is outside [0, 1]")
    if not 0 <= server_round < 2**32:
        raise WireFormatError(f"manifest round {server_round} is outside [0, 2^32)")


def decode(blob: bytes, *, reference: Mapping[str, np.ndarray] | None = None, expect: Expected | None = None,
           limits: DecodeLimits = DEFAULT_LIMITS) -> Decoded:
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
        like = np.broadcast_to(np.zeros((), np.int32 if t.dtype == pb.INT32 else np.int8), tuple(t.shape))
        ref = usable_reference(t.name, like, reference) if t.encoding in NEEDS_REFERENCE else None
        tensors[t.name] = decode_tensor(t, sizes[t.name], ref).reshape(tuple(int(d) for d in t.shape))
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
        check_name(t.name, limits)
        if t.name in sizes:
            raise tensor_error(t.name, "appears twice")
        n = check_shape(t.name, t.shape, limits)
        if t.dtype not in DTYPES:
            raise tensor_error(t.name, f"unknown dtype {t.dtype}")
        if t.encoding in NEEDS_REFERENCE and reference is None:
            raise tensor_error(t.name, "flip encoding in a payload that names no reference")
        if expect is not None:
            _check_expected(t, expect)
        sizes[t.name] = n
        decoded_bytes += n * decoded_itemsize(t.dtype, t.encoding)
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
        raise tensor_error(t.name, "was not asked for")
    if DTYPE_NAMES[t.dtype] != spec.dtype:
        raise tensor_error(t.name, f"is {DTYPE_NAMES[t.dtype]}, expected {spec.dtype}")
    shape = tuple(int(d) for d in t.shape)
    fits = shape == spec.shape if not spec.at_most else (
        len(shape) == len(spec.shape) and all(d <= bound for d, bound in zip(shape, spec.shape, strict=True)))
    if not fits:
        raise tensor_error(t.name, f"has shape {list(shape)}, expected {'at most ' if spec.at_most else ''}"
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
        out[name] = decode_tensor(as_tensor, int(np.prod(shape)), None).reshape(shape)
    return out


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
