"""The norm guard and the stop rules, in-process."""

import json

import numpy as np
import pytest

from fedhpc.config import load_config
from fedhpc.runtime.guard import NormGuard, stop_reason
from fedhpc.types import ClientResult, RoundOutcome

pytestmark = pytest.mark.unit


def outcome(r: int, deltas: dict[int, np.ndarray]) -> RoundOutcome:
    return RoundOutcome(r, [ClientResult(c, 10, 0.1, d, 0.0, 0) for c, d in sorted(deltas.items())])


def honest(rng, n=1000, scale=0.01):
    return (rng.standard_normal(n) * scale).astype(np.float32)


def guard(*sets):
    return NormGuard(load_config(None, list(sets)).guard)


def test_the_first_round_refuses_absurd_updates_by_its_own_median():
    rng = np.random.default_rng(0)
    g = guard()
    deltas = {c: honest(rng) for c in range(8)}
    deltas[3] = np.full(1000, 1e30, np.float32)  # finite, absurd
    deltas[5] = np.full(1000, np.float32(3e38))  # its norm overflows to inf
    out, median, _ = g.screen(outcome(0, deltas))
    assert [r.client_id for r in out.results] == [0, 1, 2, 4, 6, 7]
    assert {f.client_id: f.reason for f in out.failures} == {3: "norm", 5: "norm"}
    assert "median update norm of this round" in out.failures[0].detail
    assert median == pytest.approx(np.median([np.linalg.norm(deltas[c]) for c in (0, 1, 2, 4, 6, 7)]), rel=1e-6)


def test_later_rounds_are_bounded_by_earlier_medians_even_if_most_of_a_round_is_hostile():
    rng = np.random.default_rng(1)
    g = guard("guard.norm_multiple=10")
    for r in range(3):
        g.screen(outcome(r, {c: honest(rng) for c in range(6)}))
    model = honest(rng, scale=1.0)  # "minus the model": the norm of the model itself, 100x an honest update
    deltas = {c: -model for c in range(4)} | {c: honest(rng) for c in range(4, 6)}
    out, _, _ = g.screen(outcome(3, deltas))
    assert [r.client_id for r in out.results] == [4, 5]  # a hostile majority cannot raise the bound
    assert all(f.reason == "norm" and "the last 3 rounds" in f.detail for f in out.failures)


def test_honest_updates_within_the_multiple_all_pass_and_the_limit_applies():
    rng = np.random.default_rng(2)
    g = guard()
    for r in range(6):
        # spread of a factor 8 between clients: all honest, all kept
        out, _, _ = g.screen(outcome(r, {c: honest(rng, scale=0.01 * (1 + c)) for c in range(8)}))
        assert len(out.results) == 8 and not out.failures
    out, _, _ = guard("guard.norm_limit=1.0").screen(outcome(0, {0: honest(rng), 1: honest(rng, scale=1.0)}))
    assert [r.client_id for r in out.results] == [0] and "guard.norm_limit" in out.failures[0].detail
    off = guard("guard.norm_multiple=0")
    assert len(off.screen(outcome(0, {0: honest(rng), 1: np.full(1000, 1e30, np.float32)}))[0].results) == 2


def test_a_resumed_guard_has_the_same_bound():
    rng = np.random.default_rng(3)
    a, lines = guard(), []
    for r in range(7):
        _, median, _ = a.screen(outcome(r, {c: honest(rng) for c in range(5)}))
        lines.append(json.dumps({"round": r + 1, "update_norm_median": median}))
    b = guard()
    b.restore(lines)
    assert list(a.medians) == list(b.medians) and len(b.medians) == 5
    assert a.bound([]) == b.bound([])


def test_stop_reasons():
    cfg = load_config(None, ["guard.idle_rounds=3"]).guard
    w = np.ones(10, np.float32)

    def lines(*reported):
        return [json.dumps({"round": i + 1, "clients_reported": n}) for i, n in enumerate(reported)]

    assert stop_reason(w, lines(4, 0, 0), cfg) is None
    assert stop_reason(w, lines(0, 0), cfg) is None  # fewer rounds than the limit so far
    assert "no client contributed an update for 3 rounds" in stop_reason(w, lines(4, 0, 0, 0), cfg)
    w[4] = np.nan
    assert "no longer finite" in stop_reason(w, lines(4), cfg)
    assert stop_reason(np.ones(3, np.float32), lines(*[0] * 100), load_config(None, ["guard.idle_rounds=0"]).guard) \
        is None


def test_a_verdict_at_arrival_is_never_contradicted_by_the_screen_at_the_close():
    """First rounds (the bound is the round's own median, still moving) and later ones, with
    clients that never arrive and a few absurd norms: whatever an early verdict says, the
    screen at the close says the same; and most honest clients get one before the close."""
    rng = np.random.default_rng(4)
    early = 0
    for trial in range(40):
        g = guard(*(["guard.norm_limit=50"] if trial % 3 == 0 else []))
        for r in range(2):
            k = int(rng.integers(1, 30))
            norms = list(rng.lognormal(0, 0.5, k))
            for c in rng.choice(k, size=min(k, 2), replace=False):
                norms[c] *= 100.0
            arrive = [c for c in rng.permutation(k) if rng.random() > 0.2]
            said, arrived = {}, []
            for c in arrive:
                arrived.append(norms[c])
                said[c] = g.verdict(norms[c], list(arrived), k)
            results = [ClientResult(c, 10, 0.1, None, 0.0, 0, norm=norms[c]) for c in sorted(arrive)]
            out, _, _ = g.screen(RoundOutcome(r, results))
            kept = {res.client_id for res in out.results}
            assert all(v == (c in kept) for c, v in said.items() if v is not None), (trial, r)
            early += sum(v is not None for v in said.values())
    assert early > 0.5 * 40 * 2 * 10
    assert guard("guard.norm_multiple=0", "guard.norm_limit=1").verdict(2.0, [2.0], 1) is False
    assert guard("guard.norm_multiple=0").verdict(float("nan"), [], 1) is False
