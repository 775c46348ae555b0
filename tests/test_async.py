"""Asynchronous aggregation, in-process: staleness weights against their formulas, the event
order on both clocks, a server step's aggregate, and what the config refuses."""

import itertools
import math

import numpy as np
import pytest

from fedhpc.config import load_config, load_config_text
from fedhpc.errors import ConfigError
from fedhpc.ring import Ring
from fedhpc.runtime.asynchronous import Taken, Ticket, Timeline, staleness_summary, step_delta, task_seconds
from fedhpc.staleness import STALENESS, get_staleness
from fedhpc.types import ClientProfile, ClientResult

pytestmark = pytest.mark.unit

TAUS = [0, 1, 2, 3, 4, 5, 7, 10, 50, 1000]


@pytest.mark.parametrize("a", [0.1, 0.5, 1.0, 3.0])
def test_polynomial_weight_is_one_over_tau_plus_one_to_the_a(a):
    s = get_staleness("polynomial", a=a)
    assert [s.weight(t) for t in TAUS] == pytest.approx([(t + 1) ** -a for t in TAUS], rel=1e-15)


@pytest.mark.parametrize("a,b", [(10.0, 4), (0.5, 0), (2.0, 7)])
def test_hinge_weight_is_one_up_to_b_then_one_over_a_tau_minus_b_plus_one(a, b):
    s = get_staleness("hinge", a=a, b=b)
    expected = [1.0 if t <= b else 1 / (a * (t - b) + 1) for t in TAUS]
    assert [s.weight(t) for t in TAUS] == pytest.approx(expected, rel=1e-15)
    assert s.weight(b) == 1.0 and s.weight(b + 1) == pytest.approx(1 / (a + 1))


def test_every_weight_is_one_when_fresh_and_never_grows_with_staleness():
    assert get_staleness("constant").weight(10**6) == 1.0
    for name in STALENESS:
        w = [get_staleness(name).weight(t) for t in range(200)]
        assert w[0] == 1.0 and all(0 < y <= x for x, y in zip(w, w[1:])), name


@pytest.mark.parametrize("name,params,message", [
    ("polynomial", {"a": 0}, "a must be a number in (0, 100]"),
    ("polynomial", {"a": float("nan")}, "a must be"),
    ("hinge", {"b": -1}, "b must be an integer >= 0"),
    ("hinge", {"b": 1.5}, "b must be an integer"),
    ("constant", {"a": 1}, "unknown parameter(s) a"),
    ("exponential", {}, "unknown staleness 'exponential'; choose one of: constant, polynomial, hinge"),
])
def test_bad_staleness_parameters_are_refused_by_name(name, params, message):
    with pytest.raises(ValueError) as exc:
        get_staleness(name, **params)
    assert message in str(exc.value)


# -- the event order -------------------------------------------------------------------------

def tickets(finishes: list[float]) -> list[Ticket]:
    return [Ticket(i, client=100 - i, version=0, start_s=0.0, finish_s=f) for i, f in enumerate(finishes)]


def test_simulated_events_come_by_completion_time_then_client_whatever_the_arrival_order():
    ts = tickets([0.5, 0.2, 0.2, 0.9, 0.1, 0.5])  # ties at 0.2 and 0.5: the smaller client id first
    expected = [t.id for t in sorted(ts, key=lambda t: (t.finish_s, t.client))]
    rng = np.random.default_rng(0)
    for _ in range(50):
        tl: Timeline[str] = Timeline(live=False)
        for t in ts:
            tl.dispatch(t)
        order: list[int] = []
        for i in rng.permutation(len(ts)):
            assert tl.arrive(ts[i].id, ts[i].client, f"update {i}") is None
            while (event := tl.next()) is not None:
                ticket, update = event
                assert update == f"update {ticket.id}"
                order.append(ticket.id)
        assert order == expected and not tl.out and not tl.busy


def test_the_simulated_clock_waits_for_the_first_task_even_when_later_ones_came():
    tl: Timeline[str] = Timeline(live=False)
    first, later = tickets([0.1, 0.3])
    tl.dispatch(first)
    tl.dispatch(later)
    tl.arrive(later.id, later.client, "later")
    assert tl.next() is None and tl.blocking() == first
    tl.arrive(first.id, first.client, "first")
    assert tl.blocking() is None and tl.next() == (first, "first")
    # a task dispatched now that ends before the one that came is the next event
    early = Ticket(9, 3, 1, 0.15, 0.2)
    tl.dispatch(early)
    assert tl.next() is None and tl.blocking() == early


def test_the_wall_clock_takes_events_in_arrival_order():
    tl: Timeline[str] = Timeline(live=True)
    ts = tickets([math.inf] * 3)
    for t in ts:
        tl.dispatch(t)
    assert tl.next() is None and tl.blocking() is None
    for i in (2, 0, 1):
        tl.arrive(ts[i].id, ts[i].client, str(i))
    assert [tl.next()[1] for _ in range(3)] == ["2", "0", "1"]


def test_arrivals_that_are_not_a_task_out_are_refused_and_a_client_has_one_task_at_a_time():
    tl: Timeline[str] = Timeline(live=False)
    t = Ticket(4, 7, 0, 0.0, 1.0)
    tl.dispatch(t)
    assert "not out" in tl.arrive(5, 7, "x")
    assert "which is client 7's" in tl.arrive(4, 8, "x")
    assert tl.arrive(4, 7, "x") is None
    assert "second one" in tl.arrive(4, 7, "y")
    with pytest.raises(ValueError, match="already has task 4 out"):
        tl.dispatch(Ticket(5, 7, 0, 0.0, 1.0))
    tl.next()
    assert "not out" in tl.arrive(4, 7, "late")  # its event is past: a replay is not a task
    tl.dispatch(Ticket(5, 7, 1, 1.0, 2.0))  # now it may start again


def test_a_task_costs_what_a_synchronous_round_charges():
    p = ClientProfile(0, speed=0.5, bandwidth_mbps=100.0, latency_ms=2.0)
    seconds = task_seconds(p, samples=80, epochs=2, cost_per_sample_s=0.001, model_bytes=40_000, update_bytes=10_000)
    assert seconds == pytest.approx(80 * 2 * 0.001 / 0.5 + 50_000 * 8 / 100e6 + 2 * 0.002)


# -- a server step ---------------------------------------------------------------------------

RING = Ring(40, 8)


def taken(rng, k: int, n: int) -> list[Taken]:
    return [Taken(ClientResult(i, 10, 0.5, rng.normal(0, 0.1, n).astype(np.float32), 1.0, 0), int(rng.integers(0, 6)),
                  float(rng.uniform(0.5, 2.0))) for i in range(k)]


@pytest.mark.parametrize("name,alpha", [("constant", 1.0), ("polynomial", 1.0), ("hinge", 0.6)])
def test_a_step_is_alpha_times_the_staleness_weighted_mean_over_the_plain_coefficients(name, alpha):
    rng = np.random.default_rng(1)
    ts = taken(rng, 5, 257)
    weigh = get_staleness(name, **({"a": 1.0, "b": 2} if name == "hinge" else {}))
    got = step_delta(ts, 257, weigh, alpha, RING)
    want = alpha * sum(t.coef * weigh.weight(t.staleness) * t.result.delta.astype(np.float64) for t in ts) \
        / math.fsum(t.coef for t in ts)
    assert got.dtype == np.float32 and np.abs(got - want).max() < 1e-6
    for perm in itertools.islice(itertools.permutations(ts), 20):  # exact in the ring: any order, the same bits
        assert step_delta(list(perm), 257, weigh, alpha, RING).tobytes() == got.tobytes()


def test_a_stale_update_shrinks_the_step_instead_of_being_renormalised():
    rng = np.random.default_rng(2)
    (t,) = taken(rng, 1, 64)
    t.staleness = 3
    weigh = get_staleness("polynomial", a=0.5)
    got = step_delta([t], 64, weigh, 1.0, RING)
    assert np.abs(got - t.result.delta / 2).max() < 1e-6  # (3 + 1)^-0.5 = 1/2


def test_a_step_without_an_update_that_counts_is_none():
    rng = np.random.default_rng(3)
    ts = taken(rng, 2, 16)
    for t in ts:
        t.coef = 0.0
    assert step_delta(ts, 16, get_staleness("constant"), 1.0, RING) is None
    assert step_delta([], 16, get_staleness("constant"), 1.0, RING) is None


def test_the_staleness_summary_counts_every_applied_update():
    s = staleness_summary([0, 2, 2, 5])
    assert s == {"staleness_mean": 2.25, "staleness_max": 5, "staleness": {"0": 1, "2": 2, "5": 1}}
    assert staleness_summary([]) == {"staleness_mean": None, "staleness_max": None, "staleness": {}}


# -- the config --------------------------------------------------------------------------------

def test_the_async_section_and_a_staleness_given_by_name_round_trip():
    cfg = load_config_text('[async]\nmode = "fedbuff"\nbuffer = 4\nstaleness = "hinge"\n')
    a = cfg.asynchronous
    assert a.mode == "fedbuff" and a.step_updates == 4 and a.staleness.name == "hinge" and a.step_size == 1.0
    assert cfg.concurrency == cfg.clients.per_round
    again = load_config_text(cfg.to_toml())
    assert again == cfg and "[async.staleness]" in cfg.to_toml()
    fa = load_config(None, ["async.mode=fedasync", "async.staleness.name=polynomial", "async.staleness.a=1.5"])
    assert fa.asynchronous.step_updates == 1 and fa.asynchronous.step_size == 0.6
    assert fa.asynchronous.staleness.params == {"a": 1.5}


@pytest.mark.parametrize("sets,message", [
    (["async.mode=fedbuff", "stragglers.deadline_s=2"], "'stragglers.deadline_s' and stragglers.fastest_k"),
    (["async.mode=fedasync", "stragglers.fastest_k=3"], "there are no rounds to close"),
    (["async.mode=fedbuff", "dp.enabled=true"],
     "'dp.enabled' must be false with async.mode = 'fedbuff': DP-FedAvg's accountant assumes Poisson"),
    (["async.mode=fedbuff", "secagg.enabled=true"],
     "'secagg.enabled' must be false with async.mode = 'fedbuff': secure aggregation unmasks the sum of a fixed"),
    (["async.mode=fedbuff", "strategy.name=krum"], "'krum' needs every update of a round"),
    (["async.mode=fedbuff", "selection.name=poisson"], "'poisson' draws a random number of clients"),
    (["async.mode=fedbuff", "async.concurrency=21"], "'async.concurrency' is 21, more than the 20 clients"),
    (["async.mode=fedbuff", "fed_dropout.rate=0.5"], "'fed_dropout.rate' must be off with async.mode"),
    (["async.mode=fedbuff", "attack.kind=alie", "attack.fraction=0.1"], "'alie' forges from a whole round's"),
    (["async.mode=fedsgd"], "'async.mode' is 'fedsgd'; allowed values: 'sync', 'fedasync', 'fedbuff'"),
    (["async.buffer=0"], "'async.buffer' must be >= 1"),
    (["async.alpha=1.5"], "'async.alpha' must be in (0, 1]"),
    (["async.max_staleness=-1"], "'async.max_staleness' must be >= 0"),
    (["async.staleness.name=hinge", "async.staleness.a=-2"], "[async.staleness]: staleness 'hinge': a must be"),
    (["async.stale=3"], "unknown config key 'async.stale'"),
])
def test_what_the_asynchronous_modes_cannot_do_is_refused_by_key(sets, message):
    with pytest.raises(ConfigError) as exc:
        load_config(None, sets)
    assert message in str(exc.value)
