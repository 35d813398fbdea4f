"""Payloads an honest encoder refuses to make (NaN values, forged headers), for hostile-input tests.

``encode`` refuses whatever ``decode`` would refuse, so a test that plays a hostile sender builds the
payload from an honest one and edits the protobuf, then reseals the digest as a sender would.
"""

from __future__ import annotations

import hashlib

import numpy as np
from fedprune.protos import fedprune_wire_pb2 as pb
from fedprune.protos.codec import DIGEST_BYTES, FORMAT_VERSION, encode


def reseal(body: bytes) -> bytes:
    """An envelope around ``body`` with a valid digest (what a malicious sender can always make)."""
    digest = hashlib.blake2b(body, digest_size=DIGEST_BYTES).digest()
    return pb.Envelope(format_version=FORMAT_VERSION, body=body, digest=digest).SerializeToString()


def body_of(blob: bytes) -> pb.Payload:
    """The parsed payload inside an envelope."""
    return pb.Payload.FromString(pb.Envelope.FromString(blob).body)


def encode_unchecked(tensors: dict[str, np.ndarray], **kwargs) -> bytes:
    """Like ``encode``, but float tensors holding NaN/Inf travel as they are (DENSE)."""
    bad = {k: np.asarray(v) for k, v in tensors.items()
           if np.asarray(v).dtype.kind == "f" and not np.isfinite(v).all()}
    clean = {k: (np.zeros_like(v) if k in bad else v) for k, v in tensors.items()}
    blob = encode(clean, force={k: "DENSE" for k in bad}, **kwargs)
    if not bad:
        return blob
    payload = body_of(blob)
    for t in payload.tensors:
        if t.name in bad:
            t.data = np.ascontiguousarray(bad[t.name]).astype(bad[t.name].dtype.newbyteorder("<")).tobytes()
    return reseal(payload.SerializeToString())
