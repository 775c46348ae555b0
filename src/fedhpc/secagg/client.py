"""One client's side of secure aggregation in one round (Bonawitz et al. 2017; Bell et al. 2020).

1. :meth:`SecAggClient.keys`: fresh X25519 key pairs and a self-mask seed.
2. :meth:`SecAggClient.share`: Shamir-share the seed and the mask key among its
   neighbours, each share sealed for its recipient.
3. :meth:`SecAggClient.receive`: the shares its neighbours sealed for it, and who shared.
4. :meth:`SecAggClient.mask`: its ring vector plus the self-mask and the pairwise masks.
5. :meth:`SecAggClient.reveal`: for each neighbour, the share the server may have: the
   seed's for a survivor, the mask key's for one that dropped, never both, and once.

Pure and MPI-free: trainer ranks host one per selected client, and the tests run
whole rounds of them in-process.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Collection, Sequence

import numpy as np
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from fedhpc.secagg import shamir
from fedhpc.secagg.masks import KEY_BYTES, add_mask, agree, digest, pairwise_sign
from fedhpc.secagg.messages import PublicKeys, Reveal, SealedShare, Secret, view_digest

NONCE_BYTES = 12
SEALED_BYTES = NONCE_BYTES + 2 * shamir.SHARE_BYTES + 16  # nonce, both shares, Poly1305's tag


class SecAggError(RuntimeError):
    """Secure aggregation cannot go on this round: the message says who or what broke it."""


def share_aad(round_: int, sender: int, recipient: int) -> bytes:
    """What a sealed share is bound to: the round and both ids."""
    return struct.pack("<4sQQQ", b"FHSA", round_, sender, recipient)


def raw_public(key: X25519PrivateKey) -> bytes:
    return key.public_key().public_bytes_raw()


class SecAggClient:
    """Client ``client``'s secrets and view of round ``round``."""

    def __init__(self, round_: int, client: int):
        self.round, self.client = round_, client
        self._cipher = X25519PrivateKey.generate()
        self._mask = X25519PrivateKey.generate()
        self._seed = os.urandom(KEY_BYTES)
        self.neighbours: dict[int, PublicKeys] = {}
        self.threshold = 0
        self._sealed: dict[int, bytes] = {}  # sender -> the share it sealed for this client
        self._own = b""  # this client's share of its own seed
        self.sharers: frozenset[int] = frozenset()  # the neighbours that shared (the server's U2 among them)
        self.revealed = False

    def keys(self) -> PublicKeys:
        return PublicKeys(self.client, raw_public(self._cipher), raw_public(self._mask), digest(self._seed))

    def _channel(self, other: PublicKeys) -> ChaCha20Poly1305:
        return ChaCha20Poly1305(agree(self._cipher, other.cipher, b"share", self.round, self.client, other.client))

    def share(self, neighbours: Sequence[PublicKeys], threshold: int) -> list[SealedShare]:
        """Seal the shares of this client's seed and mask key for each of ``neighbours``
        (the server's list of them); any ``threshold`` of those shares and the one this
        client keeps recover each secret."""
        ids = [k.client for k in neighbours]
        if len(set(ids)) != len(ids) or self.client in ids:
            raise SecAggError(f"client {self.client}: the server's neighbour list repeats a client or has itself")
        if not 1 <= threshold <= len(ids) + 1:
            raise SecAggError(f"client {self.client}: threshold {threshold} for {len(ids)} neighbours and itself")
        self.neighbours, self.threshold = {k.client: k for k in neighbours}, threshold
        # the client holds a share of its own too (Bonawitz et al.): it reveals it, the seed's
        # only, while it survives
        xs = [c + 1 for c in ids] + [self.client + 1]
        seeds = shamir.split(self._seed, xs, threshold)
        keys = shamir.split(self._mask.private_bytes_raw(), xs, threshold)
        self._own = seeds.pop()
        keys.pop()
        out = []
        for k, s, m in zip(neighbours, seeds, keys):
            nonce = os.urandom(NONCE_BYTES)
            sealed = self._channel(k).encrypt(nonce, s + m, share_aad(self.round, self.client, k.client))
            out.append(SealedShare(self.client, k.client, nonce + sealed))
        return out

    def receive(self, shares: Collection[SealedShare], sharers: Collection[int]) -> None:
        """Keep the shares sealed for this client; ``sharers``: every client that shared this
        round (the server's U2). Shares are opened only when revealed."""
        for s in shares:
            if s.recipient != self.client or s.sender not in self.neighbours:
                raise SecAggError(f"client {self.client} was routed a share from {s.sender} to {s.recipient}, "
                                  f"not from a neighbour to it")
            self._sealed[s.sender] = s.ciphertext
        self.sharers = frozenset(sharers) & self.neighbours.keys()
        missing = self.sharers - self._sealed.keys()
        if missing:
            raise SecAggError(f"client {self.client}: the server says {sorted(missing)} shared, but routed no share "
                              f"of theirs")

    def mask(self, acc: np.ndarray) -> None:
        """Mask the int64 ring vector ``acc`` in place: its self-mask, and a pairwise mask with
        every neighbour that shared (added for a higher id, subtracted for a lower one)."""
        add_mask(acc, self._seed, 1)
        for v in sorted(self.sharers):
            add_mask(acc, agree(self._mask, self.neighbours[v].mask, b"mask", self.round, self.client, v),
                     pairwise_sign(self.client, v))

    def reveal(self, survivors: Collection[int], dropped: Collection[int]) -> list[Reveal]:
        """This client's shares for the unmasking of the sum of ``survivors``: the seed's share
        of itself and of each surviving neighbour, the mask key's of each neighbour that shared and
        ``dropped``. Refused (:class:`SecAggError`) when asked twice, when a client is in both
        sets, when this client is not a survivor, when a set names a neighbour that did not
        share, when fewer than the threshold of its neighbours survive, or when a share does
        not open (it was tampered with or misrouted)."""
        me, alive, gone = self.client, set(survivors), set(dropped)
        if self.revealed:
            raise SecAggError(f"client {me} was asked to reveal twice in round {self.round}")
        if alive & gone:
            raise SecAggError(f"client {me}: clients {sorted(alive & gone)[:5]} are both survivors and dropped")
        if me not in alive:
            raise SecAggError(f"client {me} is asked to reveal but is not among the survivors")
        named = (alive | gone) & self.neighbours.keys()
        if named - self.sharers:
            raise SecAggError(f"client {me}: neighbours {sorted(named - self.sharers)[:5]} are named but never shared")
        if self.sharers - named:
            raise SecAggError(f"client {me}: neighbours {sorted(self.sharers - named)[:5]} shared but are neither "
                              f"survivors nor dropped")
        alive_neighbours = len(alive & self.sharers)
        if alive_neighbours + 1 < self.threshold:  # its own share counts, as its own input is in the sum
            raise SecAggError(f"client {me}: {alive_neighbours} surviving neighbours and itself, below the threshold "
                              f"{self.threshold}: revealing would expose too few")
        self.revealed = True
        view = view_digest(self.round, alive, gone)
        out = [Reveal(me, me, Secret.SELF, self._own, view)]
        for u in sorted(named):
            try:
                plain = self._channel(self.neighbours[u]).decrypt(self._sealed[u][:NONCE_BYTES],
                                                                  self._sealed[u][NONCE_BYTES:],
                                                                  share_aad(self.round, u, me))
            except InvalidTag:
                raise SecAggError(f"client {me}: the share from client {u} fails its authentication: it was "
                                  f"tampered with or misrouted") from None
            half = shamir.SHARE_BYTES
            if u in alive:
                out.append(Reveal(me, u, Secret.SELF, plain[:half], view))
            else:
                out.append(Reveal(me, u, Secret.MASK, plain[half:], view))
        return out
