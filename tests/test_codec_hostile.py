"""Hostile payloads that try to make a receiver allocate or compute far more than it asked for.

A constant bit vector is coded in zero bytes and a sparse float tensor with no entries in two varints,
so a 100-byte payload can declare gigabytes. The codec checks every header — against the receiver's
expectations when it states them, against a 256 MiB decoded-size cap when it does not — before it
decodes any stream. Each case here asserts the error type, and time and traced allocation per case.
"""

from __future__ import annotations

import time
import tracemalloc

import numpy as np
import pytest
from fedprune.protos import fedprune_wire_pb2 as pb
from fedprune.protos.codec import (
    DecodeLimits,
    Expected,
    Manifest,
    TensorSpec,
    WireFormatError,
    decode,
    encode,
    varint_encode,
)

from tests.hostile_payloads import body_of, reseal

E = pb.Encoding
MIB = 2**20


def _payload(*tensors: pb.Tensor, pairs: tuple[pb.ReferencePairs, ...] = (), reference_digest: bytes = b"") -> bytes:
    p = pb.Payload(tensors=list(tensors), pairs=list(pairs))
    p.manifest.reference_digest = reference_digest
    return reseal(p.SerializeToString())


def sign_bomb() -> bytes:
    """Four SIGN tensors of 2^28 entries, each a constant CODED_BITS stream: ~100 bytes declaring 1 GiB."""
    tensors = [pb.Tensor(name=f"s{i}", dtype=pb.SIGN, encoding=E.CODED_BITS, shape=[2**28], count=2**28,
                         model_q=65535) for i in range(4)]
    return _payload(*tensors)


def float_bomb() -> bytes:
    """One FLOAT32 tensor of 2^28 zeros as INDEX_VALUES with no entries: ~40 bytes declaring 1 GiB."""
    return _payload(pb.Tensor(name="w", dtype=pb.FLOAT32, encoding=E.INDEX_VALUES, shape=[2**28], count=0))


def _measured(call) -> tuple[BaseException | None, float, int]:
    """(exception or None, seconds, peak traced bytes) of ``call()``."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    start = time.perf_counter()
    error = None
    try:
        call()
    except BaseException as exc:  # noqa: BLE001 - the test asserts the type
        error = exc
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return error, seconds, peak


@pytest.mark.parametrize("expect", [None, Expected({f"s{i}": TensorSpec("sign", (4000,)) for i in range(4)})],
                         ids=["default-limits", "expected"])
def test_sign_bomb_is_refused_fast_and_small(expect):
    blob = sign_bomb()
    assert len(blob) < 140  # ~100 bytes on the wire
    decode(encode({"warm": np.ones(8, np.int8)}))  # first-call imports are not the bomb's cost
    error, seconds, peak = _measured(lambda: decode(blob, expect=expect))
    assert isinstance(error, WireFormatError), error
    assert seconds < 0.05, seconds
    assert peak < 20 * MIB, peak


def test_float_bomb_is_refused_without_expectations():
    blob = float_bomb()
    assert len(blob) < 50
    error, seconds, peak = _measured(lambda: decode(blob))
    assert isinstance(error, WireFormatError) and "decoded bytes" in str(error)
    assert seconds < 0.05 and peak < 20 * MIB


def test_decoded_size_cap_counts_every_tensor_and_pair():
    ones = encode({"a": np.ones(300_000, bool), "b": np.ones(300_000, bool)})  # coded in a few bytes each
    assert len(ones) < 200
    decode(ones)
    with pytest.raises(WireFormatError, match="decoded bytes"):
        decode(ones, limits=DecodeLimits(max_decoded_bytes=500_000))
    reference = {"r": np.ones(200_000, bool)}
    with_pairs = encode({}, reference=reference, pairs={"r": np.r_[1.0, np.zeros(199_999)]})
    with pytest.raises(WireFormatError, match="decoded bytes"):  # pairs decode to 4 bytes per reference element
        decode(with_pairs, reference=reference, limits=DecodeLimits(max_decoded_bytes=700_000))


@pytest.mark.parametrize("shape", [[0, 2**63], [0, 2**40, 2**20], [2**64 - 1, 0], [2**29]])
def test_absurd_dimensions_are_wire_format_errors(shape):
    blob = _payload(pb.Tensor(name="w", dtype=pb.FLOAT32, encoding=E.DENSE, shape=shape))
    with pytest.raises(WireFormatError, match="exceeds the cap"):
        decode(blob)


def test_expectations_are_checked_before_any_stream():
    good = {"w": np.arange(1, 7, dtype=np.float32).reshape(2, 3), "m": np.array([True, False, True])}
    expect = Expected.like(good)
    assert set(decode(encode(good), expect=expect).tensors) == {"w", "m"}
    cases = {
        "was not asked for": {**good, "extra": np.ones(2, np.float32)},
        "is float32, expected bool": {**good, "m": np.ones(3, np.float32)},
        "has shape \\[3, 2\\], expected \\[2, 3\\]": {**good, "w": good["w"].T.copy()},
        "lacks expected tensors \\['m'\\]": {"w": good["w"]},
    }
    for needle, tensors in cases.items():
        with pytest.raises(WireFormatError, match=needle):
            decode(encode(tensors), expect=expect)
    optional = Expected(expect.tensors, optional={"m"})
    assert set(decode(encode({"w": good["w"]}), expect=optional).tensors) == {"w"}
    # A corrupt stream behind a header that does not match is refused for the header (nothing decoded).
    body = body_of(encode({**good, "w": np.ones((4, 3), np.float32)}))
    body.tensors[0].data = b"\xff"
    with pytest.raises(WireFormatError, match="has shape"):
        decode(reseal(body.SerializeToString()), expect=expect)


def test_at_most_shapes_bound_sender_chosen_lengths():
    expect = Expected({"signs": TensorSpec("sign", (10,), at_most=True)})
    assert decode(encode({"signs": np.ones(4, np.int8)}), expect=expect).tensors["signs"].shape == (4,)
    with pytest.raises(WireFormatError, match="expected at most \\[10\\]"):
        decode(encode({"signs": np.ones(11, np.int8)}), expect=expect)
    with pytest.raises(WireFormatError, match="expected at most"):
        decode(encode({"signs": np.ones((2, 2), np.int8)}), expect=expect)


def test_pairs_must_be_asked_for():
    reference = {"a": np.zeros(100, bool), "b": np.zeros(10, bool)}
    blob = encode({}, reference=reference, pairs={"a": np.r_[0.5, np.zeros(99)]})
    assert decode(blob, reference=reference, expect=Expected({}, pairs={"a"})).pairs["a"][0] == np.float32(0.5)
    with pytest.raises(WireFormatError, match="were not asked for"):
        decode(blob, reference=reference, expect=Expected({}, pairs={"b"}))


@pytest.mark.parametrize("case, needle", [
    ({"": np.ones(2, np.float32)}, "empty or longer"),
    ({"x" * 257: np.ones(2, np.float32)}, "empty or longer"),
    ({"w": np.ones((1,) * 9, np.float32)}, "rank 9"),
    ({f"t{i}": np.ones(1, np.float32) for i in range(4097)}, "exceed the cap"),
    ({"w": np.array([1.0, np.nan], np.float32)}, "NaN or Inf"),
    ({"w": np.array([np.inf], np.float16)}, "NaN or Inf"),
    ({"s": np.array([1, 0], np.int8)}, "-1/\\+1"),
])
def test_encode_refuses_what_decode_refuses(case, needle):
    with pytest.raises(WireFormatError, match=needle):
        encode(case)


def test_encode_refuses_manifests_and_pairs_decode_would_refuse():
    with pytest.raises(WireFormatError, match="density"):
        encode({}, manifest=Manifest(density=float("nan")))
    with pytest.raises(WireFormatError, match="longer than"):
        encode({}, manifest=Manifest(architecture="a" * 300))
    reference = {"a": np.zeros(4, bool)}
    with pytest.raises(WireFormatError, match="NaN or Inf"):
        encode({}, reference=reference, pairs={"a": np.array([0, np.nan, 0, 0], np.float32)})
    with pytest.raises(WireFormatError, match="decodes to"):
        encode({"m": np.ones(2000, bool)}, limits=DecodeLimits(max_decoded_bytes=1000))


# -- fuzz: inflation headers and mutations, with per-case time and memory bounds -------------------------

_FUZZ_CASES = 20_000
_CASE_SECONDS = 1.0    # generous on a loaded machine (cases take ~1 ms, the slowest ~20 ms idle); a bomb took 9-12 s
_CASE_BYTES = 20 * MIB


def _fuzz_corpus():
    rng = np.random.default_rng(0)
    ref = np.where(rng.random(4000) < 0.5, 1, -1).astype(np.int8)
    signs = ref.copy()
    signs[:80] *= -1
    w = rng.standard_normal((30, 20)).astype(np.float32)
    w[rng.random(w.shape) < 0.9] = 0
    levels_ref = np.floor(rng.normal(0, 3, 3000)).astype(np.int32)
    levels = levels_ref + (rng.random(3000) < 0.1).astype(np.int32) * rng.choice([-1, 1], 3000).astype(np.int32)
    tensors = {"w": w, "mask": rng.random(5000) < 0.05, "signs": signs,
               "b": rng.standard_normal(20).astype(np.float32), "steps": np.array([3], np.int64),
               "levels": levels, "fresh-levels": np.floor(rng.normal(0, 2, 2000)).astype(np.int32)}
    reference = {"signs": ref, "levels": levels_ref}
    forced = [None, {"w": "BITMAP_VALUES", "mask": "BITMAP", "signs": "SIGN_FLIPS"},
              {"w": "DENSE", "mask": "INDEX_VALUES", "signs": "BITMAP", "levels": "CODED_INTS"},
              {"mask": "CODED_BITS", "signs": "CODED_BITS", "levels": "DENSE", "fresh-levels": "DENSE"}]
    blobs = [encode(tensors, reference=reference, force=f) for f in forced]
    blobs.append(encode(tensors, reference=reference,
                        pairs={"signs": np.where(rng.random(4000) < 0.02, 1.5, 0.0).astype(np.float32)}))
    return blobs, tensors, reference


def _inflate(body: pb.Payload, rng: np.random.Generator) -> None:
    """Rewrite one header so it declares far more than the stream holds (or than anyone asked for)."""
    kind = int(rng.integers(0, 7))
    t = body.tensors[int(rng.integers(0, len(body.tensors)))]
    huge = 2 ** int(rng.integers(20, 64))
    if kind == 0:                                     # declared size only
        t.shape[:] = [huge] if rng.random() < 0.5 else [0, huge, huge]
    elif kind == 1:                                   # constant coded bit vector of a huge size
        t.dtype, t.encoding = (pb.SIGN, pb.BOOL)[int(rng.integers(0, 2))], E.CODED_BITS
        t.shape[:], t.data, t.values, t.model_q = [min(huge, 2**28)], b"", b"", 1
        t.count = t.shape[0] if rng.random() < 0.5 else 0
    elif kind == 2:                                   # empty sparse float tensor of a huge size
        t.dtype, t.encoding, t.shape[:], t.count, t.data, t.values = pb.FLOAT32, E.INDEX_VALUES, [huge], 0, b"", b""
    elif kind == 3:                                   # many copies of a big constant tensor
        t.dtype, t.encoding, t.shape[:], t.count, t.data, t.model_q = pb.BOOL, E.CODED_BITS, [2**24], 2**24, b"", 9
        for i in range(int(rng.integers(2, 64))):
            body.tensors.append(pb.Tensor(name=f"{t.name}-{i}", dtype=pb.BOOL, encoding=E.CODED_BITS,
                                          shape=[2**24], count=2**24, model_q=9))
    elif kind == 4:                                   # pairs with a count far beyond their bytes
        body.pairs.append(pb.ReferencePairs(slot=0, indices=b"\x00" * int(rng.integers(1, 64)),
                                            values=b"\x00\x00\x80\x3f" * int(rng.integers(1, 64))))
    elif kind == 5:                                   # deep or wide shapes
        t.shape[:] = [int(rng.integers(1, 2**16)) for _ in range(int(rng.integers(2, 12)))]
    else:                                             # coded integers: a constant of a huge size, a histogram
        size = min(huge, 2**40)                       # that lies about its counts, or a delta without reference
        t.dtype, t.encoding, t.shape[:] = pb.INT32, (E.CODED_INTS, E.CODED_INT_DELTA)[int(rng.integers(0, 2))], [size]
        t.count, t.data = int(rng.integers(1, 3)), b"" if rng.random() < 0.5 else bytes(16)
        t.values = varint_encode(np.array([0] * t.count + [size // t.count] * t.count, dtype=np.uint64))


def _mutate(raw: bytearray, rng: np.random.Generator) -> bytearray:
    action = int(rng.integers(0, 4))
    if action == 0 and len(raw) > 1:
        return raw[: int(rng.integers(0, len(raw)))]
    if action == 1:
        for _ in range(int(rng.integers(1, 4))):
            raw[int(rng.integers(0, len(raw)))] ^= 1 << int(rng.integers(0, 8))
    elif action == 2:
        pos = int(rng.integers(0, len(raw)))
        raw[pos:pos] = rng.integers(0, 256, int(rng.integers(1, 9)), dtype=np.uint8).tobytes()
    else:
        raw[int(rng.integers(0, len(raw)))] = int(rng.integers(0, 256))
    return raw


@pytest.mark.slow  # ~20 s CPU; the bombs above and test_codec's 10,000-payload fuzz stay in `make test-fast`
def test_fuzz_inflation_and_mutation_with_time_and_memory_bounds():
    """>= 20,000 hostile payloads, half inflating headers: each raises WireFormatError or decodes to what
    the receiver expects; every case stays under the time and traced-memory bounds."""
    blobs, tensors, reference = _fuzz_corpus()
    expect = Expected.like(tensors, pairs={"signs"})
    small_cap = DecodeLimits(max_decoded_bytes=1 * MIB)  # receivers without expectations: the cap must hold
    rng = np.random.default_rng(17)
    outcomes = {"rejected": 0, "decoded": 0}
    slowest, largest = 0.0, 0
    tracemalloc.start()
    started = time.perf_counter()
    try:
        for i in range(_FUZZ_CASES):
            blob = blobs[i % len(blobs)]
            if i % 2 == 0:
                body = body_of(blob)
                _inflate(body, rng)
                candidate = reseal(body.SerializeToString())
            else:
                resealed = i % 4 == 1
                raw = bytearray(body_of(blob).SerializeToString() if resealed else blob)
                raw = _mutate(raw, rng)
                candidate = reseal(bytes(raw)) if resealed else bytes(raw)
            with_expectations = i % 3 != 0
            tracemalloc.reset_peak()
            base = tracemalloc.get_traced_memory()[0]
            t0 = time.perf_counter()
            try:
                if with_expectations:
                    decoded = decode(candidate, reference=reference, expect=expect)
                else:
                    decoded = decode(candidate, reference=reference, limits=small_cap)
            except WireFormatError:
                outcomes["rejected"] += 1
            else:
                outcomes["decoded"] += 1
                if with_expectations:
                    for name, array in decoded.tensors.items():
                        assert array.shape == tensors[name].shape and array.dtype == tensors[name].dtype
                assert sum(a.nbytes for a in decoded.tensors.values()) <= small_cap.max_decoded_bytes
            seconds = time.perf_counter() - t0
            peak = tracemalloc.get_traced_memory()[1] - base
            slowest, largest = max(slowest, seconds), max(largest, peak)
            assert seconds < _CASE_SECONDS, (i, seconds)
            assert peak < _CASE_BYTES, (i, peak)
    finally:
        tracemalloc.stop()
    total = time.perf_counter() - started
    print(outcomes, f"slowest {slowest * 1000:.1f} ms, largest {largest / MIB:.2f} MiB, total {total:.1f} s")
    assert sum(outcomes.values()) == _FUZZ_CASES
    used = {e for b in blobs for e in decode(b, reference=reference).encodings.values()}
    assert {"CODED_INTS", "CODED_INT_DELTA"} <= used
    assert outcomes["rejected"] > _FUZZ_CASES // 2  # every inflating header at least
    assert total < 120, total
