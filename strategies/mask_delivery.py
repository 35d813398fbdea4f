"""Coded payloads per node: kept values relative to the mask a node holds, and the coded mask when it lacks it.

Every masked strategy (static masks, FedTiny with its evolving and per-client
masks) sends the same thing: a node that holds the mask (known by its digest)
gets only kept values encoded against that digest; a node that does not gets
the coded mask with them. A node that failed or sent an unreadable reply is
forgotten, so the next message carries the mask again: never a silent desync.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from fedprune.protos.codec import Manifest, encode, reference_digest
from fedprune.protos.contract import MASK_SUFFIX


class MaskDelivery:
    """Which mask (by digest) each node holds, and the payload that brings a node up to date."""

    def __init__(self) -> None:
        self.held: dict[int, bytes] = {}

    def holds(self, node: int, mask: Mapping[str, np.ndarray], digest: bytes | None = None) -> bool:
        """Whether ``node`` last confirmed holding exactly ``mask``."""
        return self.held.get(node) == (digest or reference_digest(mask))

    def payload(self, node: int, tensors: Mapping[str, np.ndarray], mask: Mapping[str, np.ndarray],
                manifest: Manifest, digest: bytes | None = None) -> bytes:
        """``tensors`` coded for ``node``: relative to ``mask`` if it holds it, else with the coded mask."""
        if self.holds(node, mask, digest):
            return encode(tensors, reference=mask, manifest=manifest)
        masks = {name + MASK_SUFFIX: m for name, m in mask.items()}
        return encode({**tensors, **masks}, manifest=manifest)

    def confirm(self, node: int, mask: Mapping[str, np.ndarray], digest: bytes | None = None) -> None:
        """``node`` answered with a payload coded against ``mask``: it holds it."""
        self.held[node] = digest or reference_digest(mask)

    def forget(self, node: int) -> None:
        """``node`` may have lost its mask (error, unreadable reply, restart): send it again next time."""
        self.held.pop(node, None)

    def forget_all(self) -> None:
        """After a restart of the server nobody is known to hold anything."""
        self.held.clear()
