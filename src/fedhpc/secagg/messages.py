"""What secure aggregation's clients and server tell each other: small, typed and frozen.

They travel inside the job's control messages (:mod:`fedhpc.runtime.messages`);
none carries an update, and no share ever crosses the server unencrypted.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Collection
from dataclasses import dataclass
from enum import IntEnum


@dataclass(frozen=True)
class PublicKeys:
    """A client's keys for one round: X25519 public keys for its encrypted channels
    (``cipher``) and its pairwise masks (``mask``), and the SHA-256 of its self-mask
    seed, against which the server checks the seed it recovers."""

    client: int
    cipher: bytes
    mask: bytes
    self_digest: bytes


@dataclass(frozen=True)
class SealedShare:
    """``sender``'s shares of its two secrets for ``recipient``, encrypted and authenticated
    (ChaCha20-Poly1305) with a key only the two of them can derive; the round and both ids
    are its associated data, so the server can neither read nor redirect it."""

    sender: int
    recipient: int
    ciphertext: bytes


class Secret(IntEnum):
    SELF = 0  # the self-mask seed: revealed for a survivor
    MASK = 1  # the pairwise-mask private key: revealed for a client that dropped


@dataclass(frozen=True)
class Reveal:
    """``sender``'s share of ``owner``'s ``secret``, given in the unmasking step for the
    survivor set whose digest is ``view``."""

    sender: int
    owner: int
    secret: Secret
    share: bytes
    view: bytes


def view_digest(round_: int, survivors: Collection[int], dropped: Collection[int]) -> bytes:
    """What every revealing client and the server must agree on: who survived and who dropped."""
    h = hashlib.sha256(struct.pack("<Q", round_))
    for group in (survivors, dropped):
        ids = sorted(group)
        h.update(struct.pack(f"<Q{len(ids)}Q", len(ids), *ids))
    return h.digest()
