"""Selectors: the random baseline, the adaptive selector's policies, and history bookkeeping."""

import numpy as np
import pytest

from fedhpc.selection import SELECTORS, get_selector
from fedhpc.selection.base import reputation
from fedhpc.types import ClientFailure, ClientHistory, ClientProfile, ClientResult, RoundOutcome

pytestmark = pytest.mark.unit


def rng(seed=0):
    return np.random.default_rng(seed)


def report(cid, seconds=1.0, loss=1.0):
    return ClientResult(cid, num_samples=10, loss=loss, delta=np.zeros(1, np.float32), seconds=seconds, nbytes=4)


def profiles(speeds):
    return {cid: ClientProfile(cid, speed=s) for cid, s in speeds.items()}


def run_rounds(selector, profs, k, rounds, misses=(), seed=0):
    """Select and update for ``rounds`` rounds; clients in ``misses`` are always late, the others
    report in reference_cost / speed seconds. Returns ([(chosen, log)] per round, history)."""
    history, picks, gen = {}, [], rng(seed)
    for rnd in range(rounds):
        chosen, log = selector.select(rnd, sorted(profs), k, profs, history, gen)
        picks.append((chosen, log))
        outcome = RoundOutcome(
            rnd,
            results=[report(c, 1.0 / profs[c].speed) for c in chosen if c not in misses],
            failures=[ClientFailure(c, "late") for c in chosen if c in misses],
        )
        selector.update(outcome, history, rnd)
    return picks, history


# ---- random ---------------------------------------------------------------------------
def test_random_gives_k_distinct_sorted_ids_reproducibly():
    available = list(range(3, 40, 2))
    chosen, log = get_selector("random").select(0, available, 7, {}, {}, rng(42))
    assert len(chosen) == 7 and chosen == sorted(set(chosen)) and set(chosen) <= set(available)
    assert chosen == get_selector("random").select(0, available, 7, {}, {}, rng(42))[0]
    assert any(get_selector("random").select(0, available, 7, {}, {}, rng(s))[0] != chosen for s in range(1, 5))
    assert log and "random" in log[0]


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_k_at_least_available_returns_all(name):
    available = [9, 2, 5, 7]
    history = {9: ClientHistory(consecutive_misses=2, excluded_until=10)}  # excluded, still needed
    assert get_selector(name).select(3, available, 10, {}, history, rng())[0] == [2, 5, 7, 9]
    assert get_selector(name).select(3, [], 10, {}, {}, rng())[0] == []
    assert get_selector(name).select(3, available, 0, {}, {}, rng())[0] == []
    assert get_selector(name).select(3, available, np.int64(2), {}, {}, rng())[0] != []


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_select_does_not_touch_history(name):
    history = {1: ClientHistory(selected=1, reported=1, last_selected=0, ema_seconds=2.0)}
    get_selector(name).select(1, [1, 2, 3], 2, {}, history, rng())
    assert history == {1: ClientHistory(selected=1, reported=1, last_selected=0, ema_seconds=2.0)}


# ---- history bookkeeping (base class, both selectors) ------------------------------------
@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_update_keeps_the_counters(name):
    selector = get_selector(name, ema_alpha=0.5)
    history = {}
    round0 = RoundOutcome(0, [report(1, 4.0, loss=2.0), report(2, 2.0, loss=2.0)], [ClientFailure(3, "late")])
    selector.update(round0, history, 0)
    round1 = RoundOutcome(
        1, [report(1, 2.0, loss=1.0), report(2, 2.0, loss=1.5)], [ClientFailure(3, "error"), ClientFailure(4, "timeout")]
    )
    selector.update(round1, history, 1)
    h1, h2, h3, h4 = (history[c] for c in (1, 2, 3, 4))
    assert (h1.selected, h1.reported, h1.late, h1.failed, h1.last_selected) == (2, 2, 0, 0, 1)
    assert h1.ema_seconds == pytest.approx(3.0) and h1.consecutive_misses == 0
    assert h1.ema_quality == 1.0 and h2.ema_quality == pytest.approx(0.5)  # 1's loss fell 50 %, 2's 25 %
    assert h1.last_loss == 1.0
    assert (h3.selected, h3.reported, h3.late, h3.failed, h3.consecutive_misses) == (2, 0, 1, 1, 2)
    assert h3.ema_seconds is None and h3.last_selected == 1
    assert (h4.selected, h4.late, h4.consecutive_misses) == (1, 1, 1)
    # reporting again resets the streak and ends any exclusion
    history[3].excluded_until = 9
    selector.update(RoundOutcome(2, [report(3, 1.0)]), history, np.int64(2))
    assert history[3].consecutive_misses == 0 and history[3].reported == 1 and history[3].excluded_until == -1


def test_a_stale_failure_next_to_a_valid_result_counts_as_reported():
    history = {}
    get_selector("adaptive").update(RoundOutcome(0, [report(1)], [ClientFailure(1, "stale")]), history, 0)
    assert (history[1].selected, history[1].reported, history[1].failed) == (1, 1, 0)


# ---- adaptive ------------------------------------------------------------------------
def test_adaptive_prefers_fast_clients():
    speeds = {c: (4.0 if c % 3 == 0 else 0.5) for c in range(30)}
    chosen, log = get_selector("adaptive", explore=0.0).select(0, list(speeds), 10, profiles(speeds), {}, rng())
    assert chosen == [c for c in range(30) if c % 3 == 0]
    assert "10 by score" in log[0]


def test_adaptive_uses_bandwidth_and_model_bytes():
    profs = {c: ClientProfile(c, bandwidth_mbps=10.0 if c < 5 else 1000.0) for c in range(10)}
    heavy = get_selector("adaptive", explore=0.0)
    assert heavy.select(0, list(profs), 5, profs, {}, rng())[0] == [0, 1, 2, 3, 4]  # no cost model yet: ties
    heavy.set_costs(down_bytes=30_000_000, up_bytes=20_000_000, reference_cost=1.0)
    assert heavy.select(0, list(profs), 5, profs, {}, rng())[0] == [5, 6, 7, 8, 9]
    # 50 MB at 10 Mbit/s = 40 s on top of the 1 s of compute, and two messages of 0.1 ms latency
    assert heavy.estimate_seconds(profs[0]) == pytest.approx(1.0 + 40.0 + 2e-4)


def test_the_selector_and_the_simulated_clock_charge_a_round_the_same():
    """One time model: the adaptive selector's estimate for a client is what the
    simulated clock charges it: the model down and the update up, one latency each."""
    from fedhpc.clock import client_round_seconds

    prof = ClientProfile(0, speed=0.5, bandwidth_mbps=80.0, latency_ms=30.0)
    sel = get_selector("adaptive")
    sel.set_costs(down_bytes=1_000_000, up_bytes=40_000, reference_cost=0.4)
    expected = 0.4 / 0.5 + 1_040_000 * 8 / 80e6 + 2 * 0.030
    assert client_round_seconds(prof, 0.4, 1_000_000, 40_000) == pytest.approx(expected, rel=1e-12)
    assert sel.estimate_seconds(prof) == pytest.approx(expected, rel=1e-12)


def test_measured_completion_time_beats_the_profile():
    speeds = {c: 1.0 for c in range(6)}
    speeds[0] = 100.0  # claims to be fast ...
    history = {0: ClientHistory(selected=1, reported=1, last_selected=0, ema_seconds=50.0)}  # ... but is not
    for c in range(1, 6):
        history[c] = ClientHistory(selected=1, reported=1, last_selected=0, ema_seconds=1.0)
    chosen, _ = get_selector("adaptive", explore=0.0).select(1, list(speeds), 3, profiles(speeds), history, rng())
    assert 0 not in chosen


def test_adaptive_excludes_chronic_stragglers_for_a_while_then_lets_them_back():
    speeds = {c: 1.0 for c in range(8)}
    speeds[3] = 50.0  # fastest, so picked whenever eligible
    selector = get_selector("adaptive", miss_limit=2, exclusion_rounds=3, explore=0.0, fairness_rounds=100)
    picks, history = run_rounds(selector, profiles(speeds), k=3, rounds=7, misses={3})
    assert [3 in chosen for chosen, _ in picks] == [True, True, False, False, False, True, False]
    # missed rounds 0 and 1 -> out for rounds 2, 3, 4; missed again in 5 -> out for 6, 7, 8
    assert any("excluded 3: missed 2 rounds in a row, until round 5" in line for line in picks[2][1])
    assert any("excluded 3: missed 3 rounds in a row, until round 9" in line for line in picks[6][1])
    assert history[3].excluded_until == 9 and history[3].late == 3


def test_excluded_clients_fill_the_round_when_too_few_are_eligible():
    straggler = dict(selected=2, late=2, last_selected=1, consecutive_misses=2, excluded_until=5)
    history = {c: ClientHistory(**straggler) for c in (1, 2)}
    speeds = {0: 1.0, 1: 0.5, 2: 2.0}
    chosen, log = get_selector("adaptive").select(2, [0, 1, 2], 2, profiles(speeds), history, rng())
    assert chosen == [0, 2]  # 2 scores better than 1
    assert any(line.startswith("filled 2 from the excluded") for line in log)


def test_fairness_floor_forces_a_starving_client_in():
    speeds = {0: 5.0, 1: 5.0, 2: 5.0, 9: 0.01}
    selector = get_selector("adaptive", fairness_rounds=4, explore=0.0)
    picks, _ = run_rounds(selector, profiles(speeds), k=3, rounds=5)
    assert [9 in chosen for chosen, _ in picks] == [False, False, False, False, True]
    assert any("forced 9: never selected for 4 rounds" in line for line in picks[4][1])


def test_fairness_floor_caps_forced_slots():
    speeds = {c: 1.0 for c in range(12)}
    history = {c: ClientHistory(selected=1, reported=1, last_selected=19, ema_seconds=1.0) for c in range(4)}
    selector = get_selector("adaptive", fairness_rounds=10, fairness_share=0.25, explore=0.0)
    chosen, log = selector.select(20, list(speeds), 8, profiles(speeds), history, rng())
    assert sum(line.startswith("forced") for line in log) == 2  # 25 % of 8 slots, though 8 clients starve
    assert "2 forced" in log[0] and len(chosen) == 8


def test_exploration_is_random_but_reproducible():
    speeds = {c: 1.0 + c for c in range(40)}
    selector = get_selector("adaptive", explore=0.3)
    a = selector.select(0, list(speeds), 10, profiles(speeds), {}, rng(7))
    b = selector.select(0, list(speeds), 10, profiles(speeds), {}, rng(7))
    assert a == b
    chosen, log = a
    assert set(range(33, 40)) <= set(chosen)  # the 7 best by score ...
    assert len(set(chosen) - set(range(33, 40))) == 3  # ... and 3 explored
    assert "7 by score" in log[0] and "3 explored" in log[0] and any(line.startswith("explored") for line in log)


@pytest.mark.parametrize(
    "params,match",
    [
        ({"miss_limit": 0}, "selector 'adaptive': miss_limit must be an integer >= 1"),
        ({"exclusion_rounds": -1}, "exclusion_rounds"),
        ({"fairness_rounds": 0}, "fairness_rounds"),
        ({"fairness_share": 1.5}, "fairness_share"),
        ({"explore": -0.1}, r"explore must be a number in \[0.0, 1.0\]"),
        ({"ema_alpha": 0.0}, "ema_alpha"),
        ({"down_bytes": 1000}, "unknown parameter"),  # supplied by the runtime through set_costs
        ({"speedup": 2}, r"unknown parameter\(s\) speedup; allowed: miss_limit"),
    ],
)
def test_bad_adaptive_params_raise_naming_the_param(params, match):
    with pytest.raises(ValueError, match=match):
        get_selector("adaptive", **params)


def test_bad_costs_raise_naming_the_value():
    with pytest.raises(ValueError, match="down_bytes must be an integer >= 0"):
        get_selector("adaptive").set_costs(-1, 0, 1.0)
    with pytest.raises(ValueError, match="reference_cost must be"):
        get_selector("adaptive").set_costs(100, 10, float("nan"))
    get_selector("random").set_costs(100, 10, 1.0)  # accepted and ignored


def test_bad_selector_arguments():
    with pytest.raises(ValueError, match="unknown selector 'oort'; choose one of: random, adaptive"):
        get_selector("oort")
    with pytest.raises(ValueError, match="unknown parameter.*explore; allowed: ema_alpha"):
        get_selector("random", explore=0.1)
    with pytest.raises(ValueError, match="k must be"):
        get_selector("random").select(0, [1, 2], -1, {}, {}, rng())
    with pytest.raises(ValueError, match="duplicates"):
        get_selector("random").select(0, [1, 1], 1, {}, {}, rng())


# ---- trust ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_trust_counts_what_the_defenses_kept_and_flagged(name):
    selector, history = get_selector(name), {}
    outcome = RoundOutcome(0, results=[report(1), report(2), report(3)],
                           failures=[ClientFailure(4, "norm", "above the bound"), ClientFailure(5, "late")])
    selector.update(outcome, history, 0, flagged=frozenset({2}))
    assert [(history[c].kept, history[c].flagged) for c in (1, 2, 3, 4, 5)] == [(1, 0), (0, 1), (1, 0), (0, 1), (0, 0)]
    assert history[4].failed == 1 and history[5].late == 1  # the usual counts too
    assert reputation(history[1]) == 2 / 3 and reputation(history[4]) == 1 / 3 and reputation(ClientHistory()) == 0.5


@pytest.mark.parametrize("name", sorted(SELECTORS))
def test_distrusted_clients_are_not_selected_while_enough_others_remain(name):
    history = {c: ClientHistory(kept=5) for c in range(10)}
    history[3] = ClientHistory(kept=1, flagged=6)  # reputation 2 / 9
    history[8] = ClientHistory(kept=0, flagged=2)  # 0.25
    selector = get_selector(name, trust=0.3)
    seen = set()
    for r in range(30):
        chosen, log = selector.select(r, list(range(10)), 8, {}, history, rng(r))
        seen |= set(chosen)
        assert "not selecting 2 client(s) whose reputation is below 0.3: 8 (0.25: kept 0, flagged 2), 3 (0.22: kept 1, flagged 6)" in log[0]
    assert seen == set(range(10)) - {3, 8}
    # nine wanted: the better of the two comes back, and the log names only the other
    chosen, log = get_selector("random", trust=0.3).select(0, list(range(10)), 9, {}, history, rng())
    assert chosen == [c for c in range(10) if c != 3] and "not selecting 1 client(s)" in log[0]
    chosen, log = get_selector("random").select(0, list(range(10)), 8, {}, history, rng())
    assert not any("reputation" in line for line in log)  # trust = 0: nobody is left out
    # a client never judged (reputation 1/2 by the prior) is never left out, and trust must be below 1/2
    fresh = {c: ClientHistory() for c in range(10)}
    assert get_selector("random", trust=0.45).select(0, list(range(10)), 8, {}, fresh, rng())[1][0].startswith(
        "round 0: chose 8")
    with pytest.raises(ValueError, match=r"trust must be a number in \[0.0, 0.5\)"):
        get_selector("random", trust=0.5)
