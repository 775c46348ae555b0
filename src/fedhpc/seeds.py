"""Seeds: every random draw of a run comes from (run seed, round, client, purpose).

That is what makes a client's result independent of which rank hosts it, how
many ranks there are and in which order updates arrive.
"""

from __future__ import annotations

from fedhpc import kernels as K


def derive_seed(*parts: int) -> int:
    """A 63-bit seed that depends only on ``parts`` (run seed, round, client, purpose):
    ``SeedSequence(parts).generate_state(2, uint64)[0] >> 1``, computed by the kernels
    (the same bits as NumPy's, 40x faster)."""
    return K.seed_sequence([int(p) for p in parts]) >> 1


# distinct purposes, so that streams drawn for different things never coincide
(SEED_TRAIN, SEED_DROPOUT, SEED_CODEC, SEED_SELECT, SEED_PROFILE, SEED_PARTITION, SEED_FEDDROP, SEED_EVAL,
 SEED_DP, SEED_ATTACK, SEED_DP_COUNT, SEED_SECAGG, SEED_ASYNC) = range(1, 14)
