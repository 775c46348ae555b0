"""Attacks change an attacker's update exactly as their papers say (against NumPy), the omniscient
ones forge from the honest updates only, and who attacks is a function of the seed."""

import numpy as np
import pytest

from fedhpc.attack import ATTACKS, AttackPlan, get_attack
from fedhpc.attack.alie import z_max
from fedhpc.config import load_config
from fedhpc.errors import ConfigError
from fedhpc.types import ClientResult, RoundOutcome

pytestmark = pytest.mark.unit

N = 257


def result(cid, delta):
    return ClientResult(cid, 10, 1.0, delta, 1.0, delta.nbytes, norm=float(np.linalg.norm(delta)))


def honest_round(rnd=3, ids=(0, 1, 2, 3, 4, 5, 6, 7), seed=0):
    rng = np.random.default_rng(seed)
    return RoundOutcome(rnd, [result(c, (rng.standard_normal(N) * 0.1 + 0.05).astype(np.float32)) for c in ids])


@pytest.mark.parametrize(("kind", "scale", "factor"), [("sign-flip", 0, -1.0), ("sign-flip", 4, -4.0),
                                                        ("scale", 0, 10.0), ("scale", 2.5, 2.5)])
def test_sign_flip_and_scale_multiply_the_update(kind, scale, factor):
    delta = np.random.default_rng(1).standard_normal(N).astype(np.float32)
    want = delta * np.float32(factor)
    get_attack(kind, scale).corrupt(delta, np.random.default_rng(0))
    assert np.array_equal(delta, want)


def test_gaussian_replaces_the_update_with_seeded_noise_of_its_std():
    delta = np.ones(200_000, np.float32)
    get_attack("gaussian", 0.3).corrupt(delta, np.random.default_rng(5))
    assert abs(delta.std() / 0.3 - 1) < 6 / np.sqrt(2 * delta.size) and abs(delta.mean()) < 6 * 0.3 / np.sqrt(delta.size)
    again = np.ones(200_000, np.float32)
    get_attack("gaussian", 0.3).corrupt(again, np.random.default_rng(5))
    assert np.array_equal(delta, again)


def test_label_flip_maps_every_class_to_its_mirror():
    y = np.array([0, 1, 2, 9, 9, 5])
    assert get_attack("label-flip").label_map(10)[y].tolist() == [9, 8, 7, 0, 0, 4]


def test_alie_z_max_is_the_papers():
    # n = 50, m = 12: s = floor(26) - 12 = 14 honest clients to win, z = Phi^-1(36 / 50) = 0.5828
    assert z_max(50, 12) == pytest.approx(0.5828, abs=1e-4)
    # n = 10, m = 2: s = 4, z = Phi^-1(0.6) = 0.2533
    assert z_max(10, 2) == pytest.approx(0.2533, abs=1e-4)
    assert np.isfinite(z_max(10, 9))  # so many attackers that any shift passes: capped, not infinite


@pytest.mark.parametrize(("kind", "scale"), [("alie", 0.0), ("alie", 1.5), ("ipm", 0.0), ("ipm", 2.0)])
def test_omniscient_attacks_forge_from_the_honest_updates_only(kind, scale):
    out = honest_round()
    bad = {2, 5}
    # the attackers' own trained updates are wild: they must play no part in the forgery
    for r in out.results:
        if r.client_id in bad:
            r.delta[:] = 1e6
    plan = AttackPlan(get_attack(kind, scale), frozenset(bad), start=0)
    got = plan.forge_round(out)
    honest = np.array([r.delta for r in out.results if r.client_id not in bad], dtype=np.float64)
    mean, std = honest.mean(axis=0), honest.std(axis=0)
    want = (mean - (scale or z_max(8, 2)) * std) if kind == "alie" else -(scale or 0.5) * mean
    for before, after in zip(out.results, got.results):
        if before.client_id in bad:
            np.testing.assert_allclose(after.delta, want.astype(np.float32), rtol=1e-6, atol=1e-7)
            assert after.norm == pytest.approx(np.linalg.norm(after.delta.astype(np.float64)), rel=1e-9)
        else:
            assert after is before


def test_an_attack_waits_for_its_round_and_needs_an_honest_client():
    out = honest_round(rnd=3)
    assert AttackPlan(get_attack("ipm"), frozenset({1}), start=4).forge_round(out) is out
    everyone = AttackPlan(get_attack("ipm"), frozenset(range(8)), start=0)
    assert everyone.forge_round(out) is out  # nobody honest to learn from
    flips = AttackPlan(get_attack("sign-flip"), frozenset({1}), start=0)
    assert flips.forge_round(out) is out  # not omniscient: it acts in the client step
    assert flips.attacks(3, 1) and not flips.attacks(3, 2)


def test_who_attacks_is_a_function_of_the_seed():
    a = AttackPlan.choose(100, 0.2, [], seed=7)
    assert len(a) == 20 and a == AttackPlan.choose(100, 0.2, [], seed=7) and a != AttackPlan.choose(100, 0.2, [], 8)
    assert AttackPlan.choose(100, 0.2, [3, 4], seed=7) == {3, 4}
    assert AttackPlan.choose(100, 0.0, [], seed=7) == frozenset()


@pytest.mark.parametrize(("sets", "match"), [
    (["attack.kind=worm", "attack.fraction=0.1"], "choose one of: " + ", ".join(ATTACKS)),
    (["attack.fraction=0.1"], "must name an attack"),
    (["attack.kind=scale"], "not both"),
    (["attack.kind=scale", "attack.fraction=0.1", "attack.clients=[1]"], "not both"),
    (["attack.kind=scale", "attack.fraction=1.5"], "must be in"),
    (["attack.kind=scale", "attack.clients=[99]"], "attack.clients' has client id 99"),
    (["attack.kind=scale", "attack.fraction=0.1", "attack.scale=-1"], "attack.scale"),
    (["attack.kind=scale", "attack.fraction=0.1", "attack.start_round=0"], "start_round"),
    (["attack.kind=scale", "attack.fraction=0.1", "attack.start_round=51"], "after the run's last round"),
    (["attack.kind=label-flip", "attack.fraction=0.1", "attack.scale=2"], "plays no part in label-flip"),
    (["attack.kind=alie", "attack.fraction=0.1", "fed_dropout.rate=0.5"], "needs whole updates"),
    # 30 % of 20 clients, all 10 a round selected on average 3 attackers: beyond f = 1, and beyond trim 0.1
    (["attack.kind=ipm", "attack.fraction=0.3", "strategy.name=krum", "strategy.f=1"], "raise f"),
    (["attack.kind=ipm", "attack.fraction=0.3", "strategy.name=bulyan", "strategy.f=3"], "at least 15 clients"),
    (["attack.kind=ipm", "attack.fraction=0.3", "strategy.name=trimmed-mean", "strategy.trim=0.1"], "raise trim"),
    (["attack.kind=ipm", "attack.fraction=0.5", "strategy.name=median"], "fewer than half"),
    (["attack.kind=ipm", "attack.fraction=0.5", "strategy.name=geomedian"], "fewer than half"),
    (["attack.kind=ipm", "attack.fraction=0.5", "strategy.name=centered-clipping"], "fewer than half"),
])
def test_attack_configurations_that_cannot_hold_are_refused(sets, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, ["clients.total=20", "clients.per_round=10", *sets])


@pytest.mark.parametrize("sets", [
    ["strategy.name=krum", "strategy.f=3"], ["strategy.name=trimmed-mean", "strategy.trim=0.3"],
    ["strategy.name=median"], ["strategy.name=fedavg"], ["strategy.name=bulyan", "strategy.f=1",
                                                          "clients.per_round=20", "attack.fraction=0.05"]])
def test_defenses_within_their_tolerance_are_accepted(sets):
    cfg = load_config(None, ["clients.total=20", "clients.per_round=10", "attack.kind=ipm", "attack.fraction=0.3",
                             *sets])
    assert cfg.attack.omniscient and not load_config(None, ["attack.kind=scale", "attack.fraction=0.1"]).attack.omniscient
