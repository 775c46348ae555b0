"""Secure aggregation in-process: Shamir against its definition, the graph, the masks cancel in
the ring to the exact plain sum whoever drops at whichever step, and every way the protocol can
be broken (too few survivors, tampered or misrouted shares, a server asking for both secrets,
views that disagree, a wrong reveal, a masked frame changed in transit) fails with a reason."""

import dataclasses

import numpy as np
import pytest

from fedhpc.compress import get_codec
from fedhpc.config import load_config
from fedhpc.errors import ConfigError, CorruptUpdateError
from fedhpc.ring import Accumulator, Ring, out_of_range
from fedhpc.runtime.fold import Folder
from fedhpc.secagg import SealedShare, SecAggClient, SecAggError, SecAggServer, Secret, neighbours, share_threshold
from fedhpc.secagg import frame, shamir
from fedhpc.secagg.masks import add_mask
from fedhpc.strategy import get_strategy
from fedhpc.update import HEADER, Status, UpdateHeader, seal_update

pytestmark = pytest.mark.unit

N = 257  # values per update: not a multiple of anything the PRG or a chunk works in


class Round:
    """One round of the protocol among ``ids``: every message passes through here, as through rank 0."""

    def __init__(self, ids, degree=0, fraction=0.5, r=7, drop_keys=(), drop_shares=()):
        self.r = r
        self.clients = {c: SecAggClient(r, c) for c in ids}
        keys = [c.keys() for cid, c in self.clients.items() if cid not in drop_keys]
        self.server = SecAggServer(r, keys, degree, fraction, seed=1234)
        self.shares = []
        for k in keys:
            if k.client not in drop_shares:
                self.shares += self.clients[k.client].share(self.server.neighbour_keys(k.client),
                                                            self.server.threshold)

    def route(self, shares=None):
        inbox = self.server.route(self.shares if shares is None else shares)
        for c in sorted(self.server.sharers):
            self.clients[c].receive(inbox.get(c, []), self.server.sharers)

    def inputs(self, seed=0):
        rng = np.random.default_rng(seed)
        return {c: rng.integers(-(1 << 50), 1 << 50, N) for c in self.clients}

    def masked_sum(self, q, survivors):
        acc = Accumulator(Ring(40, 100), N)
        for c in survivors:
            y = q[c].copy()
            self.clients[c].mask(y)
            acc.add(y)
        return acc.acc.copy()

    def reveals(self, survivors, silent=()):
        dropped = self.server.sharers - set(survivors)
        return [rv for c in survivors if c not in silent for rv in self.clients[c].reveal(survivors, dropped)]


def plain(q, survivors):
    return np.sum([q[c] for c in survivors], axis=0, dtype=np.int64)


def test_shamir_recovers_from_any_threshold_shares_and_not_from_fewer():
    secret = bytes(range(32))
    xs = [3, 9, 17, 2, 40]
    shares = dict(zip(xs, shamir.split(secret, xs, 3)))
    for pick in ([3, 9, 17], [2, 40, 9], [40, 17, 2, 3]):
        assert shamir.combine({x: shares[x] for x in pick}, 3) == secret
    with pytest.raises(shamir.ShareError, match="2 shares, 3 needed"):
        shamir.combine({3: shares[3], 9: shares[9]}, 3)
    # two shares of a degree-2 polynomial fit every constant term: combining them as if the
    # threshold were 2 gives a field element that is almost surely no 32-byte secret
    with pytest.raises(shamir.ShareError, match="do not belong"):
        shamir.combine({3: shares[3], 9: shares[9]}, 2)
    # the polynomial is fresh each time: the same secret gets other shares
    assert shamir.split(secret, xs, 3) != shamir.split(secret, xs, 3)
    with pytest.raises(ValueError, match="distinct"):
        shamir.split(secret, [1, 1], 1)
    with pytest.raises(ValueError, match="threshold"):
        shamir.split(secret, [1, 2], 3)


def test_shamir_against_lagrange_by_hand():
    """Threshold 2: the shares lie on a line through (0, secret); two of them give its slope."""
    secret = (12345).to_bytes(32, "big")
    s1, s2 = (int.from_bytes(s, "big") for s in shamir.split(secret, [1, 2], 2))
    slope = (s2 - s1) % shamir.PRIME
    assert (s1 - slope) % shamir.PRIME == 12345


def test_the_graph_is_complete_or_regular_and_the_same_everywhere():
    ids = list(range(0, 60, 3))
    full = neighbours(ids, 0, seed=5)
    assert all(full[c] == tuple(x for x in ids if x != c) for c in ids)
    assert neighbours(ids, len(ids) - 1, seed=5) == full
    sparse = neighbours(ids, 5, seed=5)  # rounded up to 6
    assert {len(v) for v in sparse.values()} == {6}
    assert all(c not in v and all(c in sparse[u] for u in v) for c, v in sparse.items())  # undirected
    assert sparse == neighbours(list(reversed(ids)), 5, seed=5)
    assert sparse != neighbours(ids, 5, seed=6)
    assert share_threshold(0.5, 7) == 4 and share_threshold(1.0, 7) == 7 and share_threshold(0.01, 7) == 1


def test_masks_are_uniform_and_cancel_exactly():
    acc = np.zeros(1 << 16, np.int64)
    add_mask(acc, bytes(32), 1)
    bits = np.unpackbits(acc.view(np.uint8))
    assert abs(bits.mean() - 0.5) < 0.01  # 4 million bits: 0.5 +- 0.00025 (1 sigma)
    add_mask(acc, bytes(32), -1)
    assert not acc.any()


@pytest.mark.parametrize("degree, fraction", [(0, 0.5), (4, 0.34)])
def test_the_unmasked_sum_is_the_plain_sum_with_dropouts_at_every_step(degree, fraction):
    ids = list(range(3, 33, 2))  # 15 clients, ids with gaps
    rnd = Round(ids, degree=degree, fraction=fraction, drop_keys={5}, drop_shares={9})
    rnd.route()
    assert rnd.server.sharers == set(ids) - {5, 9}
    q = rnd.inputs()
    survivors = sorted(rnd.server.sharers - {13, 21})  # shared, then dropped before their input
    total = rnd.masked_sum(q, survivors)
    reveals = rnd.reveals(survivors, silent={25})  # and one survivor is silent when unmasking
    rnd.server.unmask(total, survivors, reveals)
    assert np.array_equal(total, plain(q, survivors))


def test_no_single_masked_input_tells_anything_of_its_update():
    rnd = Round(list(range(6)))
    rnd.route()
    q = {c: np.zeros(N, np.int64) for c in rnd.clients}  # the most telling input there is
    for c, client in rnd.clients.items():
        y = q[c].copy()
        client.mask(y)
        assert np.count_nonzero(y) == N and out_of_range(y) >= 0  # uniform over the whole ring


def test_below_the_threshold_the_round_fails():
    rnd = Round(list(range(8)), fraction=0.75)  # 6 of the 8 share holders (7 neighbours and itself)
    rnd.route()
    q = rnd.inputs()
    survivors = [0, 1, 2, 3, 4]
    total = rnd.masked_sum(q, survivors)
    with pytest.raises(SecAggError, match="surviving neighbours and itself, below the threshold 6"):
        rnd.reveals(survivors)
    with pytest.raises(SecAggError, match="5 of 8 clients survived, fewer than the 6 needed"):
        rnd.server.unmask(total, survivors, [])
    with pytest.raises(SecAggError, match="1 of 8 clients survived, fewer than the 6 needed"):
        rnd.server.check_survivors([0])


def test_one_silent_revealer_too_many_fails_and_names_whose_secret_is_lost():
    rnd = Round(list(range(6)), degree=2, fraction=1.0)  # everyone's 3 share holders must all reveal
    rnd.route()
    q = rnd.inputs()
    survivors = list(range(6))
    total = rnd.masked_sum(q, survivors)
    with pytest.raises(SecAggError, match=r"self secret cannot be recovered: 2 shares, 3 needed"):
        rnd.server.unmask(total, survivors, rnd.reveals(survivors, silent={4}))


def test_a_tampered_share_is_detected_when_it_is_opened():
    rnd = Round(list(range(5)))
    bad = rnd.shares[3]
    flipped = bytearray(bad.ciphertext)
    flipped[20] ^= 1
    shares = [s if s is not bad else SealedShare(s.sender, s.recipient, bytes(flipped)) for s in rnd.shares]
    rnd.route(shares)
    with pytest.raises(SecAggError, match=f"share from client {bad.sender} fails its authentication"):
        rnd.clients[bad.recipient].reveal(list(range(5)), [])


def test_a_share_redirected_by_the_server_does_not_open():
    """The server delivers the share sealed for client 2 to client 3, claiming it is for 3."""
    rnd = Round(list(range(4)))
    moved = [s for s in rnd.shares if s.sender == 0 and s.recipient == 2][0]
    honest = [s for s in rnd.shares if not (s.sender == 0 and s.recipient == 3)]
    rnd.server.route(rnd.shares)
    client = rnd.clients[3]
    client.receive([s for s in honest if s.recipient == 3] + [SealedShare(0, 3, moved.ciphertext)],
                   rnd.server.sharers)
    with pytest.raises(SecAggError, match="share from client 0 fails its authentication"):
        client.reveal([0, 1, 2, 3], [])


def test_the_server_cannot_have_both_secrets_of_one_client():
    rnd = Round(list(range(5)))
    rnd.route()
    with pytest.raises(SecAggError, match="both survivors and dropped"):
        rnd.clients[0].reveal([0, 1, 2, 3, 4], [2])
    first = rnd.clients[1].reveal([0, 1, 2, 3], [4])  # 4 dropped: its mask key's share ...
    assert {(rv.owner, rv.secret) for rv in first} == {(1, Secret.SELF), (0, Secret.SELF), (2, Secret.SELF),
                                                        (3, Secret.SELF), (4, Secret.MASK)}
    with pytest.raises(SecAggError, match="asked to reveal twice"):  # ... and never later its seed's
        rnd.clients[1].reveal([0, 1, 2, 3, 4], [])
    with pytest.raises(SecAggError, match="not among the survivors"):
        rnd.clients[4].reveal([0, 1, 2, 3], [4])


def test_a_view_that_names_a_client_that_never_shared_is_refused():
    rnd = Round(list(range(5)), drop_shares={4})
    rnd.route()
    with pytest.raises(SecAggError, match=r"neighbours \[4\] are named but never shared"):
        rnd.clients[0].reveal([0, 1, 2, 3], [4])
    with pytest.raises(SecAggError, match=r"neighbours \[3\] shared but are neither"):
        rnd.clients[1].reveal([0, 1, 2], [])


def test_reveals_for_disagreeing_views_or_wrong_secrets_are_refused():
    rnd = Round(list(range(5)))
    rnd.route()
    q = rnd.inputs()
    total = rnd.masked_sum(q, [0, 1, 2, 3])
    told_other = rnd.clients[0].reveal([0, 1, 2, 3, 4], [])  # client 0 was told 4 survived
    others = [rv for c in (1, 2, 3) for rv in rnd.clients[c].reveal([0, 1, 2, 3], [4])]
    with pytest.raises(SecAggError, match="client 0 revealed for another set of survivors"):
        rnd.server.unmask(total.copy(), [0, 1, 2, 3], told_other + others)
    forged = [dataclasses.replace(rv, secret=Secret.MASK) if rv.owner == 2 and rv.sender == 1 else rv
              for rv in others]
    with pytest.raises(SecAggError, match="revealed client 2's MASK secret"):
        rnd.server.unmask(total.copy(), [0, 1, 2, 3], forged)


def test_a_wrong_share_is_caught_by_its_owners_commitment():
    """A share changed so that the secret it recovers is still a 32-byte value (the seed plus
    one, the liar's best case) is caught by the SHA-256 its owner advertised with its keys."""
    rnd = Round(list(range(5)))
    rnd.route()
    q = rnd.inputs()
    survivors = [0, 1, 2, 3, 4]
    total = rnd.masked_sum(q, survivors)
    reveals = rnd.reveals(survivors)
    mine = sorted(r.sender + 1 for r in reveals if r.owner == 3)[: rnd.server.threshold]  # the points combined
    lie = [r for r in reveals if r.owner == 3 and r.sender + 1 == mine[0]][0]
    p, x = shamir.PRIME, mine[0]
    weight = 1
    for other in mine[1:]:
        weight = weight * other * pow(other - x, -1, p) % p  # Lagrange's coefficient of x at 0
    y = (int.from_bytes(lie.share, "big") + pow(weight, -1, p)) % p
    reveals = [r if r is not lie else dataclasses.replace(r, share=y.to_bytes(66, "big")) for r in reveals]
    with pytest.raises(SecAggError, match="client 3's self-mask seed, as recovered, is not the one it committed to"):
        rnd.server.unmask(total, survivors, reveals)


def test_the_server_refuses_shares_between_non_neighbours_and_twice_for_a_pair():
    rnd = Round(list(range(8)), degree=2)
    stranger = next(c for c in range(8) if c != 0 and c not in rnd.server.graph[0])
    with pytest.raises(SecAggError, match=f"from client 0 to {stranger}: not neighbours"):
        rnd.server.route([SealedShare(0, stranger, b"x")])
    with pytest.raises(SecAggError, match="sealed two shares"):
        rnd.server.route(rnd.shares + rnd.shares[:1])
    with pytest.raises(SecAggError, match="advertised keys twice"):
        SecAggServer(1, [rnd.clients[0].keys()] * 2, 0, 0.5, seed=1)


def test_a_masked_frame_is_checked_on_arrival():
    vals = np.arange(-5, N - 5, dtype=np.int64)
    buf = np.empty(frame.frame_bytes(N), np.uint8)
    frame.values(buf, N)[:] = vals
    frame.seal(buf, N)
    assert np.array_equal(frame.read(memoryview(buf), N), vals)
    buf[17] ^= 4
    with pytest.raises(CorruptUpdateError, match="checksum"):
        frame.read(memoryview(buf), N)
    with pytest.raises(CorruptUpdateError, match="bytes"):
        frame.read(memoryview(buf[:-8]), N)


def test_the_sums_range_check_finds_a_wrapped_sum():
    acc = np.zeros(10, np.int64)
    assert out_of_range(acc) == -1
    acc[3] = (1 << 62) + 1
    acc[7] = -(1 << 62) - 5
    assert out_of_range(acc) == 3
    acc[3] = 1 << 62
    assert out_of_range(acc) == 7


@pytest.mark.parametrize("sets, message", [
    (["strategy.name=median"], "needs every client's update"),
    (["codec.name=topk", "codec.ratio=0.1"], "sends the positions it keeps"),
    (["guard.norm_multiple=10"], "guard.norm_limit must be 0"),
    (["fed_dropout.rate=0.5"], "fed_dropout.rate"),
    (["clients.per_round=1"], "the sum of one client"),
    (["secagg.threshold=0"], "must be in (0, 1]"),
    (["secagg.neighbors=-2"], ">= 0"),
    (["attack.kind=alie", "attack.fraction=0.1", "strategy.name=fedavg"], "forges from the whole honest updates"),
    (["secagg.step_timeout_s=40", "stragglers.timeout_s=60"], "must be below half of stragglers.timeout_s"),
])
def test_configs_secure_aggregation_cannot_serve_say_why(sets, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(overrides=["secagg.enabled=true", "guard.norm_multiple=0", *sets])


def test_protocol_faults_need_secure_aggregation():
    with pytest.raises(ConfigError, match="need secagg.enabled"):
        load_config(overrides=["faults.drop_at_unmask=[1]"])
    with pytest.raises(ConfigError, match="faults.drop_at_keys"):
        load_config(overrides=["secagg.enabled=true", "guard.norm_multiple=0", "faults.drop_at_keys=[999]"])



def _folder(secure: bool, n: int = N):
    sets = ["clients.per_round=4", "guard.norm_multiple=0"] + (["secagg.enabled=true"] if secure else [])
    f = Folder(load_config(None, sets), get_strategy("fedavg"), n, 5, lambda cid: get_codec("none"), None, 1.0)
    f.begin(0, [1, 2, 3])
    return f


def _update(client: int, body: np.ndarray, masked: bool) -> np.ndarray:
    buf = np.empty(HEADER.size + body.nbytes, np.uint8)
    buf[HEADER.size :] = body
    return seal_update(UpdateHeader(Status.OK, 5, 0, client, 10, 0.5, masked=masked), buf)


def test_a_folder_under_secure_aggregation_takes_masked_inputs_only_and_can_take_them_out():
    """An unmasked codec frame (a hostile worker's, or a relay's bug) is refused, never folded;
    a masked input is folded as it is, with no norm told, and a client excluded afterwards is
    subtracted to the bit."""
    secure = _folder(True)
    plain = get_codec("none").encode(np.ones(N, np.float32), None)
    refused = secure.take(_update(1, plain, masked=False))
    assert refused.refused == "corrupt" and "is not masked: secure aggregation is on" in refused.detail
    assert not secure.folded
    vecs = {}
    for c in (2, 3):
        vecs[c] = np.random.default_rng(c).integers(-(1 << 63), 1 << 63, N, dtype=np.int64)
        body = np.empty(frame.frame_bytes(N), np.uint8)
        frame.values(body, N)[:] = vecs[c]
        frame.seal(body, N)
        account = secure.take(_update(c, body, masked=True))
        assert not account.refused and np.isnan(account.norm)
    secure.settle([3])  # client 2 came too late after all
    assert np.array_equal(secure.acc.acc, vecs[3])
    off = _folder(False)
    assert "is masked, but secure aggregation is off" in off.take(_update(2, body, masked=True)).detail


def test_an_input_beyond_the_ring_shows_in_the_unmasked_sums_range():
    """A hostile client skips its own range check and sends 2**63 - 1 beneath its masks: the
    masks hide it until unmasking, and the sum's range check finds it then."""
    rnd = Round(list(range(4)))
    rnd.route()
    q = rnd.inputs()
    q[2][5] = (1 << 63) - 1
    total = rnd.masked_sum(q, [0, 1, 2, 3])
    assert out_of_range(total) >= 0  # masked: everything looks out of range ...
    rnd.server.unmask(total, [0, 1, 2, 3], rnd.reveals([0, 1, 2, 3]))
    assert out_of_range(total) == 5  # ... unmasked, only the poisoned value is
