"""The round collector, in-process: when a round closes, who counts, on both clocks."""

import numpy as np
import pytest

from fedhpc.clock import SimulatedClock, WallClock
from fedhpc.runtime.collector import Admission, CloseRules, RoundCollector
from fedhpc.types import ClientFailure, ClientResult

pytestmark = pytest.mark.unit

EMPTY = np.zeros(0, dtype=np.float32)


def result(cid: int, t: float) -> ClientResult:
    return ClientResult(cid, 10, 0.5, EMPTY, t, 100)


def feed(col: RoundCollector, cid: int, t: float, round_: int | None = None) -> Admission:
    verdict, _ = col.admit(col.round if round_ is None else round_, cid, 100)
    if verdict is Admission.OPEN:
        col.add_result(result(cid, col.arrival_time(t, t)))
    return verdict


def reference(times: dict[int, float], failed: set[int], deadline: float, k: int):
    """What the round should be, from the definitions: in clock order, an arrival is in
    time unless it comes after the deadline or after k others; a round missing someone
    waits until its deadline."""
    order = sorted(times, key=lambda c: (times[c], c))
    kept = [c for c in order if not deadline or times[c] <= deadline]
    if k:
        kept = kept[:k]
    if k and len(kept) == k:
        closed = times[kept[-1]]
    elif deadline and (len(kept) < len(order) or failed):
        closed = deadline
    else:
        closed = max(times.values(), default=0.0)
    return sorted(kept), closed


@pytest.mark.parametrize("deadline,k", [(0.0, 0), (0.5, 0), (0.0, 40), (0.5, 40), (0.2, 900)])
def test_simulated_clock_thousands_of_arrivals_out_of_order(deadline, k):
    rng = np.random.default_rng(int(deadline * 10) + k)
    n = 2000
    expected = frozenset(range(0, 2 * n, 2))  # even ids selected
    times = {c: float(rng.exponential(0.3)) for c in expected}
    failed = set(rng.choice(sorted(expected), 50, replace=False).tolist())
    col = RoundCollector(7, expected, CloseRules(deadline, k, timeout_s=1e9), SimulatedClock())
    order = list(expected)
    rng.shuffle(order)
    for i, c in enumerate(order):
        assert col.close_reason(wall_s=1.0) is None  # the simulated clock never closes a round early
        if c in failed:
            assert col.admit(7, c)[0] is Admission.OPEN
            col.add_failure(ClientFailure(c, "error"))
        else:
            assert feed(col, c, times[c]) is Admission.OPEN
        # noise: duplicates, stale and future rounds, and clients never selected
        if i % 7 == 0:
            assert col.admit(7, c)[0] is Admission.REJECTED
            assert col.admit(6, c)[0] is Admission.STALE
            assert col.admit(8, c)[0] is Admission.REJECTED
            assert col.admit(7, c + 1)[0] is Admission.REJECTED
    assert col.close_reason(wall_s=1.0) == "all accounted for"
    col.close("all accounted for")
    outcome, closed_at, late = col.outcome()
    on_time = {c: t for c, t in times.items() if c not in failed}
    kept, closed = reference(on_time, failed, deadline, k)
    assert [res.client_id for res in outcome.results] == kept
    assert closed_at == pytest.approx(closed)
    assert late == set(on_time) - set(kept)
    assert {f.client_id for f in outcome.failures} == expected - set(kept)
    assert {f.client_id for f in outcome.failures if f.reason == "error"} == failed
    assert col.stale == len(range(0, n, 7))


def test_arrival_order_does_not_change_the_outcome():
    expected = frozenset(range(300))
    times = {c: (c * 7919 % 300) / 300 for c in expected}
    outcomes = []
    for seed in range(3):
        col = RoundCollector(0, expected, CloseRules(0.8, 100), SimulatedClock())
        order = sorted(expected)
        np.random.default_rng(seed).shuffle(order)
        for c in order:
            feed(col, c, times[c])
        outcome, closed_at, _ = col.outcome()
        outcomes.append(([r.client_id for r in outcome.results], [f.client_id for f in outcome.failures], closed_at))
    assert outcomes[0] == outcomes[1] == outcomes[2]
    assert len(outcomes[0][0]) == 100


def test_wall_clock_closes_at_the_deadline_and_later_arrivals_are_late():
    col = RoundCollector(3, frozenset(range(10)), CloseRules(deadline_s=2.0), WallClock())
    for c, t in enumerate([0.1, 0.5, 1.9]):
        assert col.close_reason(t) is None
        assert feed(col, c, t) is Admission.OPEN
    assert col.close_reason(2.0) is None  # exactly at the deadline is still in time
    assert col.close_reason(2.01) == "deadline 2.0s"
    col.close("deadline 2.0s")
    assert feed(col, 5, 2.5) is Admission.LATE
    assert feed(col, 5, 2.6) is Admission.REJECTED  # a duplicate of a late one
    outcome, _, late = col.outcome()
    assert [r.client_id for r in outcome.results] == [0, 1, 2]
    assert late == set(range(3, 10))
    assert all(f.reason == "late" for f in outcome.failures)


def test_wall_clock_fastest_k_closes_on_the_kth_result_failures_do_not_count():
    col = RoundCollector(0, frozenset(range(8)), CloseRules(fastest_k=3), WallClock())
    col.admit(0, 7)
    col.add_failure(ClientFailure(7, "dropout"))
    for c in range(3):
        assert col.close_reason(0.1 * c) is None
        feed(col, c, 0.1 * c)
    assert col.close_reason(0.3) == "fastest 3 arrived"
    col.close("fastest 3 arrived")
    assert feed(col, 3, 0.4) is Admission.LATE
    outcome, closed_at, late = col.outcome()
    assert [r.client_id for r in outcome.results] == [0, 1, 2] and closed_at == pytest.approx(0.2)
    assert late == {3, 4, 5, 6}
    assert [f.reason for f in outcome.failures if f.client_id == 7] == ["dropout"]


def test_timeout_and_a_second_stop_signal_close_on_either_clock():
    for clock in (WallClock(), SimulatedClock()):
        col = RoundCollector(0, frozenset(range(4)), CloseRules(timeout_s=30.0), clock)
        assert col.close_reason(29.0, stop_signals=1) is None  # the first signal lets the round finish
        assert col.close_reason(29.0, stop_signals=2) == "a second stop signal"
        assert col.close_reason(30.0) == "timeout 30.0s"


def test_a_problem_the_caller_found_rejects_but_stale_wins():
    col = RoundCollector(5, frozenset({1, 2}), CloseRules(), WallClock())
    assert col.admit(5, 1, problem="claims client 1, which rank 3 does not host") == (
        Admission.REJECTED, "claims client 1, which rank 3 does not host")
    assert col.admit(4, 1, problem="anything")[0] is Admission.STALE
    assert col.admit(5, 1)[0] is Admission.OPEN  # the rejected one did not count as an arrival
    assert col.accounted() == 0 and col.client_bytes == {1: 0}


def test_bytes_are_counted_for_selected_clients_of_the_round_only():
    col = RoundCollector(2, frozenset({1}), CloseRules(), WallClock())
    col.admit(2, 1, 500)
    col.admit(2, 1, 70)  # a duplicate still cost its bytes
    col.admit(1, 1, 900)
    col.admit(2, 9, 900)
    assert col.client_bytes == {1: 570}


@pytest.mark.parametrize("deadline,k", [(0.0, 0), (0.5, 0), (0.0, 40), (0.5, 40)])
def test_a_result_said_certain_when_filed_is_in_the_outcome(deadline, k):
    """What lets a folding rank let a frame go before the close: 'certain' is never wrong,
    and on the simulated clock without fastest-k it is said of every result in time."""
    rng = np.random.default_rng(k + int(10 * deadline))
    expected = frozenset(range(300))
    col = RoundCollector(1, expected, CloseRules(deadline, k, timeout_s=1e9), SimulatedClock())
    certain = set()
    for c in rng.permutation(sorted(expected)):
        feed(col, int(c), float(rng.exponential(0.3)))
        if col.certain(col._arrivals[int(c)]):
            certain.add(int(c))
    col.close("all accounted for")
    kept = {res.client_id for res in col.outcome()[0].results}
    assert certain <= kept
    assert (certain == kept) == (k == 0)
    wall = RoundCollector(1, frozenset({1}), CloseRules(fastest_k=1), WallClock())
    feed(wall, 1, 0.1)
    assert wall.certain(wall._arrivals[1])
