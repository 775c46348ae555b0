"""Strategies: each rule against a plain NumPy computation, plus the contract every strategy keeps."""

import logging
import math

import numpy as np
import pytest

from fedhpc.strategy import STRATEGIES, get_strategy
from fedhpc.types import ClientFailure, ClientResult, RoundOutcome

pytestmark = pytest.mark.unit

N = 257  # model size: odd, so nothing lines up with a vector width by accident
ALL = sorted(STRATEGIES)


def make_result(cid, delta, num_samples=10, loss=1.0):
    return ClientResult(client_id=cid, num_samples=num_samples, loss=loss, delta=delta, seconds=1.0, nbytes=delta.nbytes)


def make_round(k=7, n=N, seed=0, rnd=0):
    """(weights, outcome) with k clients of varied sample counts and losses."""
    rng = np.random.default_rng(seed)
    weights = rng.standard_normal(n).astype(np.float32)
    results = [
        make_result(
            cid=3 * i + 1,
            delta=(rng.standard_normal(n) * (0.01 + 0.01 * i)).astype(np.float32),
            num_samples=int(rng.integers(1, 500)),
            loss=float(rng.uniform(0.1, 2.5)),
        )
        for i in range(k)
    ]
    return weights, RoundOutcome(round=rnd, results=results)


def deltas64(outcome):
    return np.array([r.delta for r in outcome.results], dtype=np.float64)


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a.view(np.uint32), b.view(np.uint32))


def close(got, want):
    np.testing.assert_allclose(got.astype(np.float64), want, rtol=1e-5, atol=1e-6)


# ---- each rule against NumPy ---------------------------------------------------------
def test_fedavg_is_sample_weighted_mean():
    w, out = make_round()
    n = np.array([r.num_samples for r in out.results], dtype=np.float64)
    got = get_strategy("fedavg").aggregate(w, out)
    assert got.dtype == np.float32 and got.shape == w.shape
    close(got, w + (n / n.sum()) @ deltas64(out))


def test_fedprox_aggregates_like_fedavg_and_tells_clients_mu():
    w, out = make_round()
    prox = get_strategy("fedprox", mu=0.05)
    assert same_bits(prox.aggregate(w, out), get_strategy("fedavg").aggregate(w, out))
    assert prox.client_mu() == 0.05
    assert get_strategy("fedprox").client_mu() == 0.01
    assert all(get_strategy(name).client_mu() == 0.0 for name in ALL if name != "fedprox")


def test_weighted_by_samples_is_fedavg():
    w, out = make_round()
    assert same_bits(get_strategy("weighted", by="samples").aggregate(w, out), get_strategy("fedavg").aggregate(w, out))


def test_weighted_by_loss():
    w, out = make_round()
    out.results[2].loss = math.nan  # diverged client: weight 0
    c = np.array([r.num_samples * r.loss for r in out.results])
    c[2] = 0.0
    close(get_strategy("weighted", by="loss").aggregate(w, out), w + (c / c.sum()) @ deltas64(out))


def test_weighted_by_variance():
    w, out = make_round()
    eps = 1e-9
    c = 1.0 / (np.var(deltas64(out), axis=1) + eps)
    close(get_strategy("weighted", by="variance", eps=eps).aggregate(w, out), w + (c / c.sum()) @ deltas64(out))


@pytest.mark.parametrize("name", ["fedadam", "fedyogi"])
def test_adaptive_server_optimizers_two_steps_by_hand(name):
    lr, b1, b2, tau = 0.05, 0.8, 0.95, 1e-2
    strategy = get_strategy(name, server_lr=lr, beta1=b1, beta2=b2, tau=tau)
    w, _ = make_round()
    want = w.astype(np.float64)
    m, v = np.zeros(N), np.full(N, tau**2)
    for rnd in range(2):
        _, out = make_round(seed=10 + rnd, rnd=rnd)
        n = np.array([r.num_samples for r in out.results], dtype=np.float64)
        d = (n / n.sum()) @ deltas64(out)
        m = b1 * m + (1 - b1) * d
        if name == "fedadam":
            v = b2 * v + (1 - b2) * d**2
        else:
            v = v - (1 - b2) * d**2 * np.sign(v - d**2)
        want = want + lr * m / (np.sqrt(v) + tau)
        w = strategy.aggregate(w, out)
        close(w, want)
    state = strategy.state_dict()
    assert state["steps"] == 2 and state["m"].dtype == state["v"].dtype == np.float32
    close(state["m"], m)
    close(state["v"], v)


@pytest.mark.parametrize("k", [1, 6, 7])
def test_median_matches_numpy(k):
    w, out = make_round(k=k)
    close(get_strategy("median").aggregate(w, out), w + np.median(deltas64(out), axis=0))


@pytest.mark.parametrize("trim,k", [(0.0, 5), (0.1, 10), (0.3, 7), (0.49, 9), (0.2, 3)])
def test_trimmed_mean_matches_sorted_slicing(trim, k):
    w, out = make_round(k=k)
    t = math.floor(trim * k)
    kept = np.sort(deltas64(out), axis=0)[t : k - t]
    close(get_strategy("trimmed-mean", trim=trim).aggregate(w, out), w + kept.mean(axis=0))


def krum_scores(d, f):
    k = len(d)
    sq = ((d[:, None, :] - d[None, :, :]) ** 2).sum(-1)
    return np.array([np.sort(np.delete(sq[i], i))[: k - f - 2].sum() for i in range(k)])


def test_krum_picks_the_min_score_update_of_the_honest_cluster():
    w, out = make_round(k=7)
    out.results[4].delta = np.full(N, 50.0, dtype=np.float32)  # an outlier far from the cluster
    d = deltas64(out)
    best = int(np.argmin(krum_scores(d, f=1)))
    assert best != 4
    assert same_bits(get_strategy("krum", f=1).aggregate(w, out), w + out.results[best].delta)


def test_multi_krum_averages_the_m_best():
    w, out = make_round(k=8)
    out.results[0].delta = np.full(N, -50.0, dtype=np.float32)
    d = deltas64(out)
    best = np.argsort(krum_scores(d, f=2), kind="stable")[:3]
    assert 0 not in best
    close(get_strategy("krum", f=2, m=3).aggregate(w, out), w + d[best].mean(axis=0))


def test_krum_score_ties_go_to_the_lower_client_id():
    # 1-D points -3, -1, 1, 3: the two middle ones tie; the client holding +1 has the lower id
    w = np.zeros(1, dtype=np.float32)
    points = {5: -3.0, 2: -1.0, 1: 1.0, 9: 3.0}
    out = RoundOutcome(0, [make_result(c, np.array([x], dtype=np.float32)) for c, x in points.items()])
    assert get_strategy("krum", f=0).aggregate(w, out)[0] == 1.0


def test_krum_falls_back_to_median_with_too_few_updates(caplog):
    w, out = make_round(k=4)  # 4 <= 2f + 2 for f = 1
    with caplog.at_level(logging.WARNING, logger="fedhpc.strategy.krum"):
        got = get_strategy("krum", f=1).aggregate(w, out)
    assert same_bits(got, get_strategy("median").aggregate(w, out))
    assert "coordinate median" in caplog.text


def bulyan_reference(d, f):
    """El Mhamdi et al.'s two stages in NumPy: iterated Krum picks K - 2f, then per coordinate the
    mean of the K - 4f picked values nearest their median."""
    left, picked = list(range(len(d))), []
    for _ in range(len(d) - 2 * f):
        sub = d[left]
        sq = ((sub[:, None, :] - sub[None, :, :]) ** 2).sum(-1)
        k = max(len(left) - f - 2, 1)
        scores = [np.sort(np.delete(sq[i], i))[:k].sum() for i in range(len(left))]
        picked.append(left.pop(int(np.argmin(scores))))
    chosen = d[sorted(picked)].astype(np.float32).astype(np.float64)
    med = np.median(chosen.astype(np.float32), axis=0).astype(np.float64)
    beta = len(picked) - 2 * f
    out = np.empty(d.shape[1])
    for c in range(d.shape[1]):
        col = chosen[:, c]
        out[c] = np.sort(col[np.lexsort((col, np.abs(col - med[c])))[:beta]]).sum() / beta
    return out


@pytest.mark.parametrize("f", [0, 1, 2])
def test_bulyan_matches_the_two_stage_reference(f):
    w, out = make_round(k=4 * f + 3 + 2, seed=f)
    out.results[1].delta = np.full(N, 30.0, dtype=np.float32)
    got = get_strategy("bulyan", f=f).aggregate(w, out)
    close(got, w + bulyan_reference(deltas64(out), f))


def test_bulyan_falls_back_to_median_with_too_few_updates(caplog):
    w, out = make_round(k=6)  # 6 < 4f + 3 for f = 1
    with caplog.at_level(logging.WARNING, logger="fedhpc.strategy.bulyan"):
        got = get_strategy("bulyan", f=1).aggregate(w, out)
    assert same_bits(got, get_strategy("median").aggregate(w, out)) and "coordinate median" in caplog.text


def weiszfeld(d, iterations=200, nu=1e-12):
    z = d.mean(axis=0)
    for _ in range(iterations):
        wts = 1 / np.maximum(np.linalg.norm(d - z, axis=1), nu)
        z = (wts[:, None] * d).sum(0) / wts.sum()
    return z


def test_geomedian_is_the_point_of_least_total_distance():
    w, out = make_round(k=9)
    d = deltas64(out)
    got = get_strategy("geomedian", iterations=100, tol=0.0).aggregate(w, out).astype(np.float64) - w
    want = weiszfeld(d)
    assert np.linalg.norm(got - want) <= 1e-4 * np.linalg.norm(want)
    cost = lambda z: np.linalg.norm(d - z, axis=1).sum()  # noqa: E731
    rng = np.random.default_rng(0)
    assert all(cost(got) <= cost(got + rng.standard_normal(N) * 1e-3) for _ in range(20))
    assert cost(got) < cost(d.mean(axis=0))


def test_centered_clipping_clips_around_the_last_aggregate():
    """Two rounds against NumPy: the first around zero, the second around the first's aggregate."""
    _, out1 = make_round(k=6, seed=1)
    _, out2 = make_round(k=6, seed=2, rnd=1)
    w = np.zeros(N, np.float32)
    cc = get_strategy("centered-clipping", tau=0.5, iterations=2)
    center = np.zeros(N)
    for out in (out1, out2):
        d = deltas64(out)
        for _ in range(2):
            diff = d - center
            center = center + (diff * np.minimum(1, 0.5 / np.linalg.norm(diff, axis=1))[:, None]).mean(0)
        got = cc.aggregate(w, out)
        close(got, center)
    assert np.array_equal(cc.state_dict()["center"], got)


@pytest.mark.parametrize("name,params", [("median", {}), ("trimmed-mean", {"trim": 0.1}), ("krum", {"f": 1}),
                                         ("bulyan", {"f": 1}), ("geomedian", {}), ("centered-clipping", {})])
def test_robust_rules_resist_one_byzantine_update_and_fedavg_does_not(name, params):
    w, out = make_round(k=10)
    out.results[3].delta = np.full(N, 1e6, dtype=np.float32)
    assert np.abs(get_strategy(name, **params).aggregate(w, out) - w).max() < 1.0
    assert np.abs(get_strategy("fedavg").aggregate(w, out) - w).max() > 1e3


# ---- the contract every strategy keeps ------------------------------------------------
@pytest.mark.parametrize("name", ALL)
def test_result_order_does_not_change_a_bit(name):
    w, out = make_round(k=9)
    want = get_strategy(name).aggregate(w, out)
    for seed in range(3):
        shuffled = list(out.results)
        np.random.default_rng(seed).shuffle(shuffled)
        assert same_bits(get_strategy(name).aggregate(w, RoundOutcome(0, shuffled)), want)


@pytest.mark.parametrize("name", ALL)
def test_no_results_leaves_the_weights_and_state_unchanged(name):
    w, _ = make_round()
    strategy = get_strategy(name)
    before = strategy.state_dict()
    got = strategy.aggregate(w, RoundOutcome(3, failures=[ClientFailure(1, "late"), ClientFailure(2, "dropout")]))
    assert same_bits(got, w) and got is not w
    assert strategy.state_dict().keys() == before.keys()


@pytest.mark.parametrize("name", ALL)
def test_failures_do_not_change_the_aggregate(name):
    w, out = make_round()
    failures = [ClientFailure(100, "late"), ClientFailure(101, "corrupt", "checksum"), ClientFailure(102, "timeout")]
    with_failures = RoundOutcome(0, out.results, failures)
    assert same_bits(get_strategy(name).aggregate(w, with_failures), get_strategy(name).aggregate(w, out))


@pytest.mark.parametrize("name", ALL)
def test_input_weights_are_not_modified(name):
    w, out = make_round()
    copy = w.copy()
    get_strategy(name).aggregate(w, out)
    assert same_bits(w, copy)


@pytest.mark.parametrize("name", ALL)
def test_state_dict_round_trip_gives_the_same_next_round(name):
    w, out1 = make_round(seed=1)
    _, out2 = make_round(seed=2, rnd=1)
    first = get_strategy(name)
    w1 = first.aggregate(w, out1)
    restored = get_strategy(name)
    restored.load_state_dict(first.state_dict())
    assert same_bits(restored.aggregate(w1, out2), first.aggregate(w1, out2))


def test_state_dict_is_a_snapshot_and_bad_state_is_refused():
    w, out = make_round()
    adam = get_strategy("fedadam")
    adam.aggregate(w, out)
    state = adam.state_dict()
    state["m"][:] = 7.0
    assert not np.any(adam.state_dict()["m"] == 7.0)
    with pytest.raises(ValueError, match="steps"):
        get_strategy("fedadam").load_state_dict({"m": state["m"]})
    with pytest.raises(ValueError, match="no server state"):
        get_strategy("fedavg").load_state_dict({"m": state["m"]})


@pytest.mark.parametrize(
    "name,params,match",
    [
        ("fedprox", {"mu": 0.0}, "mu must be a number > 0"),
        ("fedprox", {"mu": "big"}, "mu must be"),
        ("weighted", {"by": "size"}, "by must be one of 'samples', 'loss', 'variance'"),
        ("weighted", {"eps": -1.0}, "eps must be"),
        ("fedadam", {"server_lr": 0}, "server_lr must be"),
        ("fedadam", {"beta1": 1.0}, r"beta1 must be a number in \[0.0, 1.0\)"),
        ("fedyogi", {"beta2": -0.1}, "strategy 'fedyogi': beta2"),
        ("fedyogi", {"tau": 0.0}, "tau must be"),
        ("trimmed-mean", {"trim": 0.5}, r"trim must be a number in \[0.0, 0.5\)"),
        ("krum", {"f": -1}, "f must be an integer >= 0"),
        ("krum", {"f": 1.5}, "f must be an integer"),
        ("krum", {"m": 0}, "m must be an integer >= 1"),
        ("fedavg", {"mu": 0.1}, r"unknown parameter\(s\) mu; allowed: \(none\)"),
        ("median", {"trim": 0.1}, "unknown parameter"),
        ("krum", {"k": 3}, "unknown parameter.*allowed: f, m"),
        ("bulyan", {"f": -1}, "f must be an integer >= 0"),
        ("geomedian", {"nu": 0}, "nu must be a number > 0"),
        ("geomedian", {"iterations": 0}, "iterations must be an integer >= 1"),
        ("centered-clipping", {"tau": 0}, "tau must be a number > 0"),
    ],
)
def test_bad_params_raise_naming_the_param(name, params, match):
    with pytest.raises(ValueError, match=match):
        get_strategy(name, **params)


def test_unknown_strategy_lists_the_names():
    with pytest.raises(ValueError, match="unknown strategy 'fedsgd'.*fedavg.*krum"):
        get_strategy("fedsgd")


def test_bad_results_are_refused():
    w, out = make_round()
    out.results[1].delta = out.results[1].delta[:-1]
    with pytest.raises(ValueError, match=f"client {out.results[1].client_id}"):
        get_strategy("fedavg").aggregate(w, out)
    w, out = make_round()
    out.results.append(out.results[0])
    with pytest.raises(ValueError, match="two results"):
        get_strategy("fedavg").aggregate(w, out)


def test_clients_of_zero_weight_do_not_count_and_alone_leave_the_model_unchanged():
    w, out = make_round()
    out.results[0].num_samples = 0
    rest = RoundOutcome(out.round, out.results[1:])
    assert get_strategy("fedavg").aggregate(w, out).tobytes() == get_strategy("fedavg").aggregate(w, rest).tobytes()
    for r in out.results:
        r.num_samples = 0
    assert get_strategy("fedavg").aggregate(w, out).tobytes() == w.tobytes()


@pytest.mark.parametrize("name", ["median", "trimmed-mean", "krum", "weighted", "bulyan", "geomedian",
                                  "centered-clipping"])
@pytest.mark.parametrize("codec_name", ["none", "int8", "topk-int8"])
def test_rules_that_need_every_update_read_compressed_frames_block_by_block(name, codec_name):
    """The same bits from frames kept compressed as from their dense decodes, over several blocks."""
    from fedhpc.compress import get_codec
    from fedhpc.strategy.base import BLOCK

    codec = get_codec(codec_name, **({"ratio": 0.05} if codec_name == "topk-int8" else {}))
    n = 2 * BLOCK + 123
    w, out = make_round(k=7, n=n, seed=5)
    frames = [codec.encode(r.delta) for r in out.results]
    dense = RoundOutcome(0, [make_result(r.client_id, codec.decode(f), r.num_samples, r.loss)
                             for r, f in zip(out.results, frames)])
    kept = RoundOutcome(0, [ClientResult(r.client_id, r.num_samples, r.loss, None, 1.0, 0, frame=codec.open(f))
                            for r, f in zip(out.results, frames)])
    params = {"by": "variance"} if name == "weighted" else {}
    assert same_bits(get_strategy(name, **params).aggregate(w, kept), get_strategy(name, **params).aggregate(w, dense))


@pytest.mark.parametrize("name,params,count", [("krum", {"f": 2, "m": 3}, 2), ("bulyan", {"f": 1}, 2),
                                               ("centered-clipping", {"tau": 2.0}, 1), ("median", {}, 0),
                                               ("fedavg", {}, 0)])
def test_what_a_rule_sets_aside_is_flagged_and_the_outlier_among_it(name, params, count):
    w, out = make_round(k=9)
    out.results[4].delta = np.full(N, 50.0, dtype=np.float32)
    strategy = get_strategy(name, **params)
    strategy.aggregate(w, out)
    assert len(strategy.flagged) == count and (not count or out.results[4].client_id in strategy.flagged)
    strategy.aggregate(w, RoundOutcome(1))
    assert strategy.flagged == frozenset()  # a round without results flags nobody
