"""Entropy coding of bit vectors (masks, sign flips) with constriction's ANS coder.

Two-pass Bernoulli model: the sender counts the ones, quantizes their rate to
16 bits and sends it; both sides build the same model from that number. Bits
are coded eight at a time as byte symbols whose probabilities are the product
of eight Bernoulli factors, which is exactly as tight as coding bit by bit
(the model is i.i.d.) and eight times fewer coder steps.
"""

from __future__ import annotations

import functools

import constriction
import numpy as np

Q_BITS = 16
Q_ONE = 1 << Q_BITS
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.float64)


def quantize_rate(ones: int, total: int) -> int:
    """The rate of ones in units of 2^-16, clamped to [1, 2^16 - 1] so both outcomes stay codable."""
    if total <= 0:
        return Q_ONE // 2
    return int(min(max(round(ones / total * Q_ONE), 1), Q_ONE - 1))


@functools.lru_cache(maxsize=1024)
def _byte_model(model_q: int) -> constriction.stream.model.Categorical:
    p = model_q / Q_ONE
    probs = np.exp(_POPCOUNT * np.log(p) + (8 - _POPCOUNT) * np.log1p(-p))
    return constriction.stream.model.Categorical(probs / probs.sum(), perfect=False)


def encode_bits(bits: np.ndarray, model_q: int) -> bytes:
    """ANS-code a bool vector with an i.i.d. Bernoulli(model_q / 2^16) model."""
    symbols = np.packbits(bits.astype(bool, copy=False)).astype(np.int32)
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols, _byte_model(model_q))
    return coder.get_compressed().astype("<u4").tobytes()


class CodedStreamError(ValueError):
    """A coded stream does not decode to exactly the declared number of bits."""


def decode_bits(data: bytes, length: int, model_q: int) -> np.ndarray:
    """Inverse of ``encode_bits``; raises ``CodedStreamError`` unless the stream ends exactly."""
    if len(data) % 4:
        raise CodedStreamError("coded stream length is not a multiple of 4 bytes")
    words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        symbols = coder.decode(_byte_model(model_q), (length + 7) // 8)
    except Exception as exc:  # constriction raises on streams it cannot decode
        raise CodedStreamError(f"coded stream is corrupt: {exc}") from None
    if not coder.is_empty():
        raise CodedStreamError("coded stream has trailing data")
    bits = np.unpackbits(symbols.astype(np.uint8))
    if bits[length:].any():
        raise CodedStreamError("coded stream has nonzero padding bits")
    return bits[:length].astype(bool)


# -- small-alphabet integer symbols (quantized scores and their changes) ---------------------------------------

MAX_ALPHABET = 4096  # distinct symbols a coded integer tensor may have (the histogram travels with it)


def _categorical(counts: np.ndarray) -> constriction.stream.model.Categorical:
    """The model both sides build from the same histogram (float64 arithmetic, same order: same model)."""
    probabilities = counts.astype(np.float64) / float(counts.sum())
    return constriction.stream.model.Categorical(probabilities, perfect=False)


def encode_symbols(indices: np.ndarray, counts: np.ndarray) -> bytes:
    """ANS-code symbol indices in [0, len(counts)) with the categorical model of their histogram ``counts``."""
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(indices.astype(np.int32, copy=False), _categorical(counts))
    return coder.get_compressed().astype("<u4").tobytes()


def decode_symbols(data: bytes, length: int, counts: np.ndarray) -> np.ndarray:
    """Inverse of ``encode_symbols``; ``CodedStreamError`` unless the stream decodes to exactly ``length``
    symbols whose histogram is ``counts``."""
    if len(data) % 4:
        raise CodedStreamError("coded stream length is not a multiple of 4 bytes")
    words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        symbols = coder.decode(_categorical(counts), length)
    except Exception as exc:  # constriction raises on streams it cannot decode
        raise CodedStreamError(f"coded stream is corrupt: {exc}") from None
    if not coder.is_empty():
        raise CodedStreamError("coded stream has trailing data")
    if not np.array_equal(np.bincount(symbols, minlength=len(counts)), counts):
        raise CodedStreamError("decoded symbols do not match the histogram the header declares")
    return symbols
