"""The server's side of secure aggregation in one round: it routes what it cannot read
and, at the end, removes the masks from the sum of the survivors' masked inputs.

What it holds of a client is its public keys, sealed shares addressed to others,
and its masked input, uniformly random modulo 2**64 on its own. From the
unmasking step's shares it recovers the self-mask seed of each survivor and the
mask key of each client that shared and then dropped, never both of one
client, and subtracts exactly the masks left in the sum. Pure and MPI-free:
rank 0 runs it, and the tests in-process.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterable, Sequence

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from fedhpc.secagg import shamir
from fedhpc.secagg.client import SecAggError, raw_public
from fedhpc.secagg.graph import neighbours, share_threshold
from fedhpc.secagg.masks import add_mask, agree, digest, pairwise_sign
from fedhpc.secagg.messages import PublicKeys, Reveal, SealedShare, Secret, view_digest


class SecAggServer:
    """Round ``round``'s protocol state at the server, from the keys the clients advertised.

    ``degree`` 0 is the complete graph; ``fraction`` of a client's neighbours must
    reveal to recover its secrets; ``seed`` draws the graph.
    """

    def __init__(self, round_: int, keys: Iterable[PublicKeys], degree: int, fraction: float, seed: int):
        self.round = round_
        self.keys: dict[int, PublicKeys] = {}
        for k in keys:
            if k.client in self.keys:
                raise SecAggError(f"client {k.client} advertised keys twice")
            self.keys[k.client] = k
        self.graph = neighbours(self.keys, degree, seed)
        degrees = {len(v) for v in self.graph.values()}
        self.threshold = share_threshold(fraction, min(degrees) + 1) if self.keys else 0  # its neighbours and itself
        self.sharers: frozenset[int] = frozenset()

    def neighbour_keys(self, client: int) -> tuple[PublicKeys, ...]:
        return tuple(self.keys[v] for v in self.graph[client])

    def route(self, shares: Iterable[SealedShare]) -> dict[int, list[SealedShare]]:
        """Sort the sealed shares by recipient. A client shared (it is in :attr:`sharers`, the
        protocol's U2) when it sealed a share for every one of its neighbours; a share from
        or to anyone else, or a second one for a pair, is refused."""
        by_sender: dict[int, dict[int, SealedShare]] = defaultdict(dict)
        for s in shares:
            if s.sender not in self.graph or s.recipient not in self.graph[s.sender]:
                raise SecAggError(f"a share from client {s.sender} to {s.recipient}: not neighbours this round")
            if s.recipient in by_sender[s.sender]:
                raise SecAggError(f"client {s.sender} sealed two shares for client {s.recipient}")
            by_sender[s.sender][s.recipient] = s
        self.sharers = frozenset(c for c, got in by_sender.items() if len(got) == len(self.graph[c]))
        inbox: dict[int, list[SealedShare]] = defaultdict(list)
        for c in sorted(self.sharers):
            for s in by_sender[c].values():
                inbox[s.recipient].append(s)
        return inbox

    def check_survivors(self, survivors: Collection[int], among: Collection[int] | None = None) -> None:
        """Refuse to go on with too few clients: fewer than two survivors (the sum would be one
        client's input) or than the threshold, of those that shared (or of ``among``)."""
        pool = self.sharers if among is None else frozenset(among)
        need = max(2, self.threshold)
        if len(survivors) < need:
            raise SecAggError(f"{len(survivors)} of {len(pool)} clients survived, fewer than the {need} needed "
                              f"(secagg.threshold)")
        if not set(survivors) <= pool:
            raise SecAggError(f"survivors {sorted(set(survivors) - pool)[:5]} never shared")

    def unmask(self, acc: np.ndarray, survivors: Collection[int], reveals: Sequence[Reveal]) -> None:
        """Remove the masks from ``acc``, the int64 sum of exactly the ``survivors``' masked
        inputs: their self-masks, and their pairwise masks with the clients that shared and
        dropped. Raises :class:`SecAggError`, leaving ``acc`` unusable, when a secret cannot be
        recovered: too few reveals, a reveal of the wrong secret or for another view, or a
        recovered secret that does not match what its owner committed to."""
        alive = set(survivors)
        self.check_survivors(alive)
        dropped = self.sharers - alive
        view = view_digest(self.round, alive, dropped)
        points: dict[tuple[int, Secret], dict[int, bytes]] = defaultdict(dict)
        for rv in reveals:
            if rv.view != view:
                raise SecAggError(f"client {rv.sender} revealed for another set of survivors: the views disagree")
            if rv.sender not in alive or (rv.owner != rv.sender and rv.owner not in self.graph.get(rv.sender, ())):
                raise SecAggError(f"client {rv.sender} revealed a share of client {rv.owner}: not a surviving neighbour")
            expected = Secret.SELF if rv.owner in alive else Secret.MASK
            if rv.secret != expected:
                raise SecAggError(f"client {rv.sender} revealed client {rv.owner}'s {rv.secret.name} secret, which "
                                  f"the server may not have")
            points[rv.owner, rv.secret][rv.sender + 1] = rv.share
        for u in sorted(alive):
            seed = self._recover(u, Secret.SELF, points)
            if digest(seed) != self.keys[u].self_digest:
                raise SecAggError(f"client {u}'s self-mask seed, as recovered, is not the one it committed to: a "
                                  f"revealed share is wrong")
            add_mask(acc, seed, -1)
        for u in sorted(dropped):
            key = X25519PrivateKey.from_private_bytes(self._recover(u, Secret.MASK, points))
            if raw_public(key) != self.keys[u].mask:
                raise SecAggError(f"client {u}'s mask key, as recovered, does not match its public key: a revealed "
                                  f"share is wrong")
            for v in self.graph[u]:
                if v in alive:  # v added its mask with u; u's own input is not in the sum
                    add_mask(acc, agree(key, self.keys[v].mask, b"mask", self.round, u, v), -pairwise_sign(v, u))

    def _recover(self, owner: int, secret: Secret, points: dict) -> bytes:
        got = points.get((owner, secret), {})
        try:
            return shamir.combine(got, self.threshold)
        except shamir.ShareError as exc:
            raise SecAggError(f"client {owner}'s {secret.name.lower()} secret cannot be recovered: {exc} "
                              f"(its surviving neighbours revealed {len(got)} shares)") from None
