"""Codec round trips (hypothesis), encoding choice, and hostile input."""

import hashlib
import time

import numpy as np
import pytest
from fedprune.protos import fedprune_wire_pb2 as pb
from fedprune.protos.codec import (
    DecodeLimits,
    Manifest,
    WireFormatError,
    decode,
    encode,
    pairs_cost,
    reference_digest,
    varint_decode,
    varint_encode,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

shapes = st.lists(st.integers(0, 40), min_size=0, max_size=3).map(tuple)


@st.composite
def float_tensors(draw):
    shape = draw(shapes)
    density = draw(st.sampled_from([0.0, 0.01, 0.1, 0.5, 1.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = rng.standard_normal(shape).astype(np.float32)
    values[rng.random(shape) >= density] = 0.0
    return values


@st.composite
def masks(draw):
    shape = draw(shapes)
    density = draw(st.sampled_from([0.0, 0.001, 0.05, 0.5, 0.99, 1.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    return rng.random(shape) < density


@st.composite
def sign_pairs(draw):
    n = draw(st.integers(0, 3000))
    flip = draw(st.sampled_from([0.0, 0.02, 0.3, 1.0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ref = np.where(rng.random(n) < 0.5, 1, -1).astype(np.int8)
    new = np.where(rng.random(n) < flip, -ref, ref).astype(np.int8)
    return ref, new


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(values=float_tensors(), mask=masks(), signs=sign_pairs(), with_reference=st.booleans(),
       ints=st.lists(st.integers(-2**40, 2**40), max_size=5))
def test_round_trip(values, mask, signs, with_reference, ints):
    ref, new = signs
    tensors = {"values": values, "mask": mask, "signs": new, "ints": np.array(ints, dtype=np.int64),
               "half": values.astype(np.float16)}
    reference = {"signs": ref} if with_reference else None
    manifest = Manifest("fl-cnn", 7, 0.1, 3, "test")
    decoded = decode(encode(tensors, reference=reference, manifest=manifest), reference=reference)
    assert decoded.manifest.architecture == "fl-cnn" and decoded.manifest.round == 3
    assert decoded.manifest.reference_digest == reference_digest(reference)
    for name, original in tensors.items():
        got = decoded.tensors[name]
        assert got.shape == original.shape and got.dtype == original.dtype, name
        assert np.array_equal(got, original), name


def _chosen(tensors, reference=None, **kwargs):
    return decode(encode(tensors, reference=reference, **kwargs), reference=reference).encodings


def test_every_encoding_is_chosen_somewhere():
    rng = np.random.default_rng(0)
    dense = rng.standard_normal(1000).astype(np.float32)
    mid = dense.copy()
    mid[rng.random(1000) < 0.8] = 0  # 20% dense: bitmap + values wins
    sparse = dense.copy()
    sparse[rng.random(1000) < 0.99] = 0  # 1%: index list wins
    ref = np.where(rng.random(20000) < 0.5, 1, -1).astype(np.int8)
    few_flips = ref.copy()
    few_flips[rng.choice(20000, 200, replace=False)] *= -1
    half_flips = np.where(rng.random(20000) < 0.5, -ref, ref).astype(np.int8)
    seen = set()
    seen |= set(_chosen({"a": dense, "b": mid, "c": sparse}).values())
    seen |= set(_chosen({"a": dense}, allow_fp16=True).values())
    seen |= set(_chosen({"m1": rng.random(20000) < 0.5, "m2": rng.random(20000) < 0.05,
                         "m3": rng.random(200000) < 0.00002}).values())
    seen |= set(_chosen({"s": half_flips}).values())
    seen |= set(_chosen({"s": few_flips}, {"s": ref}).values())
    seen |= set(_chosen({"s": half_flips}, {"s": ref}).values())
    seen |= set(_chosen({"s": np.where(rng.random(20000) < 0.05, 1, -1).astype(np.int8)}).values())
    expected = {"DENSE", "DENSE_F16", "BITMAP", "BITMAP_VALUES", "INDEX_VALUES", "CODED_BITS", "CODED_FLIPS"}
    assert expected <= seen, expected - seen
    # SIGN_FLIPS (raw flip bitmap) only wins over the coded flips when coding gains nothing;
    # it is chosen when forced and must round-trip.
    assert _chosen({"s": few_flips}, {"s": ref}, force={"s": "SIGN_FLIPS"}) == {"s": "SIGN_FLIPS"}


def test_choice_is_the_smallest():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(5000).astype(np.float32)
    x[rng.random(5000) < 0.9] = 0
    auto = len(encode({"x": x}))
    for forced in ("DENSE", "BITMAP_VALUES", "INDEX_VALUES"):
        assert auto <= len(encode({"x": x}, force={"x": forced}))


def test_varints_round_trip_and_reject_garbage():
    values = np.array([0, 1, 127, 128, 300, 2**20, 2**40], dtype=np.uint64)
    blob = varint_encode(values)
    assert np.array_equal(varint_decode(blob, len(values), 2**50), values.astype(np.int64))
    with pytest.raises(WireFormatError):
        varint_decode(blob[:-1], len(values), 2**50)
    with pytest.raises(WireFormatError):
        varint_decode(blob, len(values), 2**30)


def _reseal(body: bytes) -> bytes:
    digest = hashlib.blake2b(body, digest_size=16).digest()
    return pb.Envelope(format_version=1, body=body, digest=digest).SerializeToString()


def _body(blob: bytes) -> pb.Payload:
    return pb.Payload.FromString(pb.Envelope.FromString(blob).body)


def test_each_validation_names_the_problem():
    mask = np.random.default_rng(0).random(1000) < 0.1
    good = encode({"m": mask}, force={"m": "BITMAP"})
    cases = {}
    p = _body(good)
    p.tensors[0].shape[0] = 2**40
    cases["exceeds the cap"] = _reseal(p.SerializeToString())
    p = _body(good)
    p.tensors[0].count += 1
    cases["header says"] = _reseal(p.SerializeToString())
    p = _body(good)
    p.tensors[0].data = p.tensors[0].data[:-1]
    cases["bitmap has"] = _reseal(p.SerializeToString())
    p = _body(encode({"v": np.array([0, 1.5, 0, 2.5], np.float32)}, force={"v": "INDEX_VALUES"}))
    p.tensors[0].values = np.array([np.nan, 1], np.float32).tobytes()
    cases["NaN"] = _reseal(p.SerializeToString())
    p = _body(encode({"v": np.array([0, 1.5, 0, 2.5], np.float32)}, force={"v": "INDEX_VALUES"}))
    p.tensors[0].data = varint_encode(np.array([1, 5]))
    cases["out of range"] = _reseal(p.SerializeToString())
    env = pb.Envelope.FromString(good)
    env.format_version = 9
    cases["format version 9"] = env.SerializeToString()
    env = pb.Envelope.FromString(good)
    env.digest = b"x" * 16
    cases["digest does not match"] = env.SerializeToString()
    for needle, blob in cases.items():
        with pytest.raises(WireFormatError, match=needle):
            decode(blob)
    with pytest.raises(WireFormatError, match="exceeds the cap"):
        decode(good, limits=DecodeLimits(max_payload_bytes=10))


def _pairs_case():
    rng = np.random.default_rng(7)
    reference = {"a.weight": rng.random((64, 100)) < 0.1, "b.weight": np.ones(10, bool)}
    pairs = np.zeros((64, 100), np.float32)
    pairs.flat[rng.choice(6400, 250, replace=False)] = rng.random(250).astype(np.float32) + 0.1
    update = {"a.weight/kept": rng.standard_normal(300).astype(np.float32)}
    return reference, update, pairs


def test_reference_pairs_round_trip_with_a_few_bytes_of_framing():
    reference, update, pairs = _pairs_case()
    alone = encode(update, reference=reference)
    both = encode(update, reference=reference, pairs={"a.weight": pairs})
    decoded = decode(both, reference=reference)
    assert set(decoded.pairs) == {"a.weight"} and np.array_equal(decoded.pairs["a.weight"], pairs)
    assert set(decoded.tensors) == set(update) and not decode(alone, reference=reference).pairs
    added, coded = pairs_cost(both)
    (entry,) = _body(both).pairs
    assert added == len(both) - len(alone) and coded == len(entry.indices) + len(entry.values)
    assert 0 < added - coded <= 12  # framing: field tags and lengths only (a tensor header was 42–48 B)
    assert entry.slot == 0 and entry.values == pairs.reshape(-1)[np.flatnonzero(pairs)].astype("<f4").tobytes()
    assert pairs_cost(alone) == (0, 0)
    for bad in ({"c.weight": pairs}, {"b.weight": pairs}):  # not in the reference / not of its shape
        with pytest.raises(ValueError, match="not a tensor of the reference"):
            encode(update, reference=reference, pairs=bad)


def test_hostile_reference_pairs_are_refused():
    reference, update, pairs = _pairs_case()
    good = encode(update, reference=reference, pairs={"a.weight": pairs})
    cases = {}
    p = _body(good)
    p.pairs[0].slot = 2
    cases["slot 2"] = p
    p = _body(good)
    p.pairs.append(p.pairs[0])
    cases["appear twice"] = p
    p = _body(good)
    p.pairs[0].values = p.pairs[0].values[:-1]
    cases["not whole float32s"] = p
    p = _body(good)
    p.pairs[0].values = p.pairs[0].values[:-4]
    cases["complete varints"] = p
    p = _body(good)
    p.pairs[0].indices = varint_encode(np.r_[6400, np.zeros(249, np.int64)])
    cases["out of range"] = p
    p = _body(good)
    p.pairs[0].values = np.r_[0.0, np.ones(249)].astype("<f4").tobytes()
    cases["carries the value 0"] = p
    p = _body(good)
    p.pairs[0].values = np.r_[np.inf, np.ones(249)].astype("<f4").tobytes()
    cases["NaN or Inf"] = p
    for needle, body in cases.items():
        with pytest.raises(WireFormatError, match=needle):
            decode(_reseal(body.SerializeToString()), reference=reference)
    p = _body(good)
    p.manifest.reference_digest = b""
    with pytest.raises(WireFormatError, match="names no reference"):
        decode(_reseal(p.SerializeToString()))


def test_reference_mismatch_is_refused():
    ref = np.ones(100, dtype=np.int8)
    new = ref.copy()
    new[3] = -1
    blob = encode({"s": new}, reference={"s": ref})
    other = ref.copy()
    other[50] = -1
    with pytest.raises(WireFormatError, match="different reference"):
        decode(blob, reference={"s": other})


def _fuzz_corpus():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((30, 20)).astype(np.float32)
    w[rng.random(w.shape) < 0.9] = 0
    ref = np.where(rng.random(4000) < 0.5, 1, -1).astype(np.int8)
    signs = ref.copy()
    signs[:80] *= -1
    tensors = {"w": w, "mask": rng.random(5000) < 0.05, "signs": signs, "b": rng.standard_normal(20).astype(
        np.float32), "steps": np.array([3], np.int64)}
    forced = [None, {"w": "BITMAP_VALUES", "mask": "BITMAP", "signs": "SIGN_FLIPS"},
              {"w": "DENSE", "mask": "INDEX_VALUES", "signs": "BITMAP"}]
    pairs = {"signs": np.where(rng.random(4000) < 0.02, rng.random(4000) + 0.5, 0.0).astype(np.float32)}
    corpus = [(encode(tensors, reference={"signs": ref}, force=f), tensors, {}) for f in forced]
    corpus.append((encode(tensors, reference={"signs": ref}, pairs=pairs), tensors, pairs))
    return corpus, {"signs": ref}


def _same(decoded, tensors, pairs):
    return set(decoded.tensors) == set(tensors) and all(
        decoded.tensors[k].dtype == v.dtype and np.array_equal(decoded.tensors[k], v) for k, v in tensors.items()
    ) and set(decoded.pairs) == set(pairs) and all(np.array_equal(decoded.pairs[k], v) for k, v in pairs.items())


def test_fuzz_mutated_and_truncated_payloads():
    """>= 10,000 hostile payloads: each raises WireFormatError or decodes exactly; none is slow."""
    corpus, reference = _fuzz_corpus()
    rng = np.random.default_rng(42)
    outcomes = {"rejected": 0, "identical": 0, "resealed-accepted": 0}
    slowest = 0.0
    for i in range(12_000):
        blob, tensors, pairs = corpus[i % len(corpus)]
        resealed = i % 2 == 1  # half: a malicious sender with a valid digest over a mutated body
        raw = bytearray(pb.Envelope.FromString(blob).body if resealed else blob)
        action = rng.integers(0, 4)
        if action == 0 and len(raw) > 1:
            raw = raw[: rng.integers(0, len(raw))]
        elif action == 1:
            for _ in range(rng.integers(1, 4)):
                raw[rng.integers(0, len(raw))] ^= 1 << int(rng.integers(0, 8))
        elif action == 2:
            pos = rng.integers(0, len(raw))
            raw[pos:pos] = rng.integers(0, 256, rng.integers(1, 9), dtype=np.uint8).tobytes()
        else:
            raw[rng.integers(0, len(raw))] = int(rng.integers(0, 256))
        candidate = _reseal(bytes(raw)) if resealed else bytes(raw)
        start = time.perf_counter()
        try:
            decoded = decode(candidate, reference=reference)
        except WireFormatError:
            outcomes["rejected"] += 1
        else:
            if _same(decoded, tensors, pairs):
                outcomes["identical"] += 1
            else:
                # Only a sender holding the digest can make a different payload pass, and what passes
                # must still be well-formed: the declared shapes and dtypes, finite values.
                assert resealed, "a transit corruption was accepted with different content"
                for array in decoded.tensors.values():
                    if array.dtype.kind == "f":
                        assert np.isfinite(array).all()
                    if array.dtype == np.int8:
                        assert np.isin(array, (-1, 1)).all()
                for name, array in decoded.pairs.items():  # pairs: the reference's shape, finite values
                    assert array.shape == reference[name].shape and np.isfinite(array).all()
                outcomes["resealed-accepted"] += 1
        slowest = max(slowest, time.perf_counter() - start)
    print(outcomes, f"slowest {slowest * 1000:.1f} ms")
    assert sum(outcomes.values()) == 12_000
    assert outcomes["rejected"] > 9_000
    assert slowest < 1.0, slowest
