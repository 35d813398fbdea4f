"""The wire format's vocabulary: dtypes, limits, what a receiver expects, manifests, decoded payloads, errors.

Shared by the per-tensor codings (``protos.tensor_codings``) and the payload codec (``protos.codec``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import numpy as np
from fedprune.protos import fedprune_wire_pb2 as pb

FORMAT_VERSION = 1
DIGEST_BYTES = 16

E = pb.Encoding
DTYPES = {
    pb.FLOAT32: np.dtype("<f4"), pb.FLOAT16: np.dtype("<f2"), pb.INT64: np.dtype("<i8"),
    pb.INT32: np.dtype("<i4"), pb.UINT8: np.dtype("u1"), pb.BOOL: np.dtype(bool), pb.SIGN: np.dtype("i1"),
}
ENCODINGS_FOR = {
    pb.FLOAT32: (E.DENSE, E.BITMAP_VALUES, E.INDEX_VALUES),
    pb.FLOAT16: (E.DENSE,), pb.INT64: (E.DENSE,), pb.INT32: (E.DENSE, E.CODED_INTS, E.CODED_INT_DELTA),
    pb.UINT8: (E.DENSE,),
    pb.BOOL: (E.BITMAP, E.INDEX_VALUES, E.CODED_BITS),
    pb.SIGN: (E.BITMAP, E.CODED_BITS, E.SIGN_FLIPS, E.CODED_FLIPS),
}
NEEDS_REFERENCE = {E.SIGN_FLIPS, E.CODED_FLIPS, E.CODED_INT_DELTA}
# Wire dtype names as receivers state them in a ``TensorSpec`` ("sign" is int8 in {-1, +1}).
DTYPE_NAMES = {pb.FLOAT32: "float32", pb.FLOAT16: "float16", pb.INT64: "int64", pb.INT32: "int32",
               pb.UINT8: "uint8", pb.BOOL: "bool", pb.SIGN: "sign"}
DTYPE_CODES = {name: code for code, name in DTYPE_NAMES.items()}


class WireFormatError(ValueError):
    """A payload is malformed, oversized, or relative to a reference the receiver does not hold."""


def tensor_error(name: str, message: str) -> WireFormatError:
    """The error for one tensor, named."""
    return WireFormatError(f"tensor '{name}': {message}")


@dataclass(frozen=True)
class DecodeLimits:
    """Caps a receiver applies before trusting any declared size."""

    max_payload_bytes: int = 256 * 2**20
    max_tensors: int = 4096          # tensors and reference pairs together
    max_elements: int = 2**28        # per tensor, and per dimension
    max_decoded_bytes: int = 256 * 2**20  # what the decoded tensors and pairs of one payload may occupy
    max_name_length: int = 256
    max_rank: int = 8


DEFAULT_LIMITS = DecodeLimits()


@dataclass(frozen=True)
class TensorSpec:
    """What a receiver expects of one tensor: its wire dtype name (``DTYPE_NAMES``) and shape.

    ``at_most``: the shape is an upper bound per dimension (same rank), for tensors whose length the
    sender chooses within a known limit (e.g. one sign per moved score)."""

    dtype: str
    shape: tuple[int, ...]
    at_most: bool = False

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_CODES:
            raise ValueError(f"dtype '{self.dtype}' is not one of: {', '.join(DTYPE_CODES)}")
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    @classmethod
    def of(cls, array: np.ndarray, at_most: bool = False) -> TensorSpec:
        """The spec ``array`` would travel as (int8 arrays are sign vectors)."""
        array = np.asarray(array)
        return cls(DTYPE_NAMES[dtype_code_of(array.dtype, "expected tensor")], array.shape, at_most)


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


def dtype_code_of(dtype: np.dtype, name: str) -> int:
    if dtype == np.dtype(bool):
        return pb.BOOL
    if dtype == np.int8:
        return pb.SIGN
    for code, wire in DTYPES.items():
        if code not in (pb.BOOL, pb.SIGN) and dtype == wire.newbyteorder("="):
            return code
    raise WireFormatError(f"tensor '{name}': dtype {dtype} is not supported by the wire format")


def checked_dtype_code(array: np.ndarray, name: str) -> int:
    code = dtype_code_of(array.dtype, name)
    if code == pb.SIGN and array.size and not np.isin(array, (-1, 1)).all():
        raise WireFormatError(f"tensor '{name}': int8 tensors are sign vectors and must hold only -1/+1")
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise WireFormatError(f"tensor '{name}': values hold NaN or Inf (the receiver refuses them)")
    return code


def decoded_itemsize(code: int, encoding: int) -> int:
    """Bytes per element of a decoded tensor (DENSE_F16 decodes to float32)."""
    return 4 if encoding == E.DENSE_F16 else DTYPES[code].itemsize


def check_name(name: str, limits: DecodeLimits, what: str = "tensor") -> None:
    if not name or len(name) > limits.max_name_length:
        raise WireFormatError(f"{what} name {name[:40]!r} is empty or longer than {limits.max_name_length}")


def check_shape(name: str, shape: tuple[int, ...] | list[int], limits: DecodeLimits) -> int:
    """The element count of ``shape`` after checking its rank and every dimension against the caps."""
    if len(shape) > limits.max_rank:
        raise tensor_error(name, f"rank {len(shape)} exceeds {limits.max_rank}")
    n = 1
    for dim in shape:
        if not 0 <= int(dim) <= limits.max_elements:  # each dimension: [0, 2**63] has 0 elements
            raise tensor_error(name, f"shape {list(shape)} exceeds the cap of {limits.max_elements} elements")
        n *= int(dim)
    if n > limits.max_elements:
        raise tensor_error(name, f"shape {list(shape)} exceeds the cap of {limits.max_elements} elements")
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


