"""Shamir secret sharing of 32-byte secrets over the prime field GF(2**521 - 1).

A secret (an X25519 private key, a self-mask seed) is the constant term of a
random polynomial of degree ``threshold - 1``; recipient ``x`` gets its value
at ``x``. Any ``threshold`` shares give the secret back (Lagrange at 0), fewer
give nothing about it. The field is the Mersenne prime 2**521 - 1, larger than
every 256-bit secret, so a secret is one field element and a share is 66 bytes.
"""

from __future__ import annotations

import functools
import secrets as _random
from collections.abc import Mapping, Sequence

PRIME = (1 << 521) - 1
SHARE_BYTES = 66  # a field element, big-endian
SECRET_BYTES = 32


class ShareError(ValueError):
    """Shares that cannot give a secret back: too few, malformed, or inconsistent."""


def split(secret: bytes, xs: Sequence[int], threshold: int) -> list[bytes]:
    """The shares of ``secret`` for the recipients at the distinct points ``xs`` (each in
    [1, PRIME)), any ``threshold`` of which recover it."""
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a shared secret is {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold must be in [1, {len(xs)}] for {len(xs)} recipients, got {threshold}")
    if len(set(xs)) != len(xs) or not all(0 < x < PRIME for x in xs):
        raise ValueError("share points must be distinct and in [1, PRIME)")
    coefs = [int.from_bytes(secret, "big")] + [_random.randbelow(PRIME) for _ in range(threshold - 1)]
    out = []
    for x in xs:
        y = 0
        for c in reversed(coefs):  # Horner
            y = (y * x + c) % PRIME
        out.append(y.to_bytes(SHARE_BYTES, "big"))
    return out


@functools.lru_cache(maxsize=4096)
def _lagrange_at_zero(points: tuple[int, ...]) -> tuple[int, ...]:
    """Each point's Lagrange coefficient at 0: O(t^2) once per set of points, which on the
    complete graph is the same for nearly every client a round (the same survivors reveal)."""
    out = []
    for x in points:
        num = den = 1
        for other in points:
            if other != x:
                num = num * other % PRIME
                den = den * (other - x) % PRIME
        out.append(num * pow(den, -1, PRIME) % PRIME)
    return tuple(out)


def combine(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret from at least ``threshold`` shares (point -> share); uses the ``threshold``
    at the lowest points. Raises :class:`ShareError` when there are too few, a share is
    malformed, or the result is no 32-byte secret (the shares do not belong together)."""
    if len(shares) < threshold:
        raise ShareError(f"{len(shares)} shares, {threshold} needed")
    points = sorted(shares)[:threshold]
    ys = {}
    for x in points:
        s = shares[x]
        if len(s) != SHARE_BYTES or not 0 < x < PRIME:
            raise ShareError(f"share at point {x} is malformed ({len(s)} bytes)")
        ys[x] = int.from_bytes(s, "big")
        if ys[x] >= PRIME:
            raise ShareError(f"share at point {x} is not a field element")
    weights = _lagrange_at_zero(tuple(points))
    secret = sum(ys[x] * w for x, w in zip(points, weights)) % PRIME
    if secret >> (8 * SECRET_BYTES):
        raise ShareError("the shares do not belong to one secret")
    return secret.to_bytes(SECRET_BYTES, "big")
