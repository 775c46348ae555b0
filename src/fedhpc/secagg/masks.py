"""The masks: seeds expanded into the ring by a cryptographic PRG, and the keys the
clients agree on.

Every mask is a vector of ``n`` uniformly random 64-bit integers, the ChaCha20
keystream of a 32-byte seed, added modulo 2**64 to the ring vector of an
update (:mod:`fedhpc.ring`). A client's self-mask comes from a seed only it
knows; the pairwise mask of clients ``u < v`` comes from their X25519
agreement, and ``u`` adds it where ``v`` subtracts it, so it cancels in the sum.
"""

from __future__ import annotations

import hashlib
import struct

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

KEY_BYTES = 32
_NONCE = bytes(16)  # each seed expands one stream only: a fixed nonce is safe
_EXPAND_CHUNK = 1 << 20  # values per keystream chunk: bounds the scratch memory of a big model


def add_mask(acc: np.ndarray, seed: bytes, sign: int) -> None:
    """Add (``sign`` 1) or subtract (-1) the mask of ``seed`` to the int64 ``acc``, modulo 2**64."""
    enc = Cipher(algorithms.ChaCha20(seed, _NONCE), mode=None).encryptor()
    view = acc.view(np.uint64)  # unsigned: numpy wraps it modulo 2**64 by definition
    for a in range(0, view.size, _EXPAND_CHUNK):
        part = view[a : a + _EXPAND_CHUNK]
        mask = np.frombuffer(enc.update(bytes(8 * part.size)), dtype="<u8")
        if sign > 0:
            np.add(part, mask, out=part)
        else:
            np.subtract(part, mask, out=part)


def agree(own: X25519PrivateKey, other: bytes, purpose: bytes, round_: int, a: int, b: int) -> bytes:
    """A 32-byte key only the holders of ``own`` and of ``other``'s private key can derive:
    X25519, then HKDF-SHA256 bound to the purpose, the round and the (unordered) pair."""
    lo, hi = min(a, b), max(a, b)
    secret = own.exchange(X25519PublicKey.from_public_bytes(other))
    info = b"fedhpc-secagg/" + purpose + struct.pack("<QQQ", round_, lo, hi)
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info).derive(secret)


def pairwise_sign(own: int, other: int) -> int:
    """What ``own`` does with its pairwise mask with ``other``: the lower id adds it."""
    return 1 if own < other else -1


def digest(data: bytes) -> bytes:
    """SHA-256: how a client commits to its self-mask seed before sharing it."""
    return hashlib.sha256(data).digest()
