"""Differential privacy: the accountant is dp-accounting's, clipping bounds, noise has its std, bad configs say why."""

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld, rdp

from fedhpc.config import load_config
from fedhpc.errors import ConfigError
from fedhpc.privacy import Accountant, client_noise, clip, gaussian_noise
from fedhpc.privacy.adaptive import count_noise, next_clip, unclipped_fraction, vector_noise_multiplier
from fedhpc.selection import get_selector

pytestmark = pytest.mark.unit

DP = ["dp.enabled=true", "selection.name=poisson", "codec.error_feedback=false", "guard.norm_multiple=0",
      "dp.delta=1e-3"]


def library_epsilon(rates, sigma, delta, accountant):
    """What dp-accounting itself says, round after round, for Poisson-sampled Gaussian rounds."""
    acc = accountant()
    for q in rates:
        acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)))
    return acc.get_epsilon(delta)


def test_the_accountant_gives_the_platform_reference_values():
    acc = Accountant(1.1, 1e-5)
    rates = [0.25] * 6
    assert round(acc.epsilon(rates), 2) == 4.78 and round(acc.epsilon(rates, pld=True), 2) == 4.15
    assert acc.epsilon([]) == 0.0


def test_the_accountant_is_dp_accountings_for_the_rates_a_run_really_had():
    rates = [0.05, 0.05, 0.1, 0.05, 0.2, 0.1]
    acc = Accountant(0.9, 1e-5)
    assert acc.epsilon(rates) == pytest.approx(library_epsilon(rates, 0.9, 1e-5, rdp.RdpAccountant), rel=1e-9)
    assert acc.epsilon(rates, pld=True) == pytest.approx(library_epsilon(rates, 0.9, 1e-5, pld.PLDAccountant),
                                                         rel=1e-3)
    assert acc.epsilon(rates) == acc.epsilon(rates[::-1])  # a function of the rates, not of their order
    assert acc.epsilon(rates[:3]) < acc.epsilon(rates)


def test_clipping_bounds_every_update_and_leaves_small_ones_alone():
    rng = np.random.default_rng(0)
    for scale in (1e-3, 0.5, 1.0, 3.0, 1e4):
        for n in (1, 7, 10_000):
            x = (rng.standard_normal(n) * scale).astype(np.float32)
            before = x.copy()
            norm = clip(x, 1.0)
            assert np.linalg.norm(x.astype(np.float64)) <= 1.0
            assert norm == pytest.approx(np.linalg.norm(before.astype(np.float64)), rel=1e-5)
            if norm <= 1.0:
                assert x.tobytes() == before.tobytes()
            else:  # scaled, direction kept
                assert np.allclose(x * (norm / np.linalg.norm(x.astype(np.float64))), before, rtol=1e-4, atol=1e-6)


def test_the_noise_has_the_configured_std_and_is_seeded():
    """200,000 draws: the sample std is within 6 of its standard errors (0.16 %) of the target."""
    n, std = 200_000, 0.37
    z = gaussian_noise(5, 3, n, std).astype(np.float64)
    assert abs(z.std() / std - 1) < 6 / np.sqrt(2 * n) and abs(z.mean()) < 6 * std / np.sqrt(n)
    assert gaussian_noise(5, 3, n, std).tobytes() == z.astype(np.float32).tobytes()
    assert gaussian_noise(5, 4, n, std).tobytes() != z.astype(np.float32).tobytes()
    assert not gaussian_noise(5, 3, 10, 0.0).any()


def test_poisson_sampling_takes_each_client_with_probability_k_over_n():
    """Over 400 rounds, how often each of 50 clients is in (expected 0.2 each) and how many a round."""
    sel = get_selector("poisson")
    counts, sizes = np.zeros(50), []
    for r in range(400):
        chosen, _ = sel.select(r, list(range(50)), 10, {}, {}, np.random.default_rng(r))
        counts[chosen] += 1
        sizes.append(len(chosen))
    # binomial(400, 0.2) per client: sd 8; the round size binomial(50, 0.2): sd 2.8
    assert np.all(np.abs(counts - 80) < 6 * 8) and abs(np.mean(sizes) - 10) < 6 * 2.83 / np.sqrt(400)
    assert len(set(sizes)) > 3 and not sel.exact and get_selector("random").exact


def test_the_clip_and_its_count_together_cost_the_configured_noise_multiplier():
    """dp-accounting composes the two Gaussian releases of a round (the vector at z_delta, the
    centred count, sensitivity 1/2 under std count_std, i.e. multiplier 2 * count_std) into
    exactly what one Gaussian of the configured multiplier costs, which is what the run accounts."""
    for z, count_std in ((0.8, 1.0), (1.1, 5.0), (3.0, 1.6)):
        z_delta = vector_noise_multiplier(z, count_std)
        assert z < z_delta
        pair, one = rdp.RdpAccountant(), rdp.RdpAccountant()
        pair.compose(dp_accounting.ComposedDpEvent([dp_accounting.GaussianDpEvent(z_delta),
                                                    dp_accounting.GaussianDpEvent(2 * count_std)]))
        one.compose(dp_accounting.GaussianDpEvent(z))
        assert pair.get_epsilon(1e-5) == pytest.approx(one.get_epsilon(1e-5), rel=1e-9)
    assert vector_noise_multiplier(0.0, 0.1) == 0.0
    with pytest.raises(ValueError, match="above noise_multiplier / 2"):
        vector_noise_multiplier(1.0, 0.5)


def test_the_released_fraction_is_centred_and_its_noise_seeded():
    # without noise and with as many clients as expected, it is the plain fraction
    assert unclipped_fraction(3, 8, 0.0, 8) == pytest.approx(3 / 8)
    # centred: one more client moves it by at most 1/2 over the denominator, whatever its bit
    for k, n in ((0, 5), (5, 5), (2, 5)):
        base = unclipped_fraction(k, n, 0.0, 10)
        assert abs(unclipped_fraction(k + 1, n + 1, 0.0, 10) - base) == pytest.approx(0.05)
        assert abs(unclipped_fraction(k, n + 1, 0.0, 10) - base) == pytest.approx(0.05)
    draws = np.array([count_noise(7, r, 2.0) for r in range(20_000)])
    assert abs(draws.std() / 2.0 - 1) < 6 / np.sqrt(2 * draws.size) and count_noise(7, 3, 2.0) == draws[3]
    assert count_noise(7, 3, 2.0) != count_noise(8, 3, 2.0)
    # a stream of its own: not the first value of the vector's noise of the same round
    assert np.float32(count_noise(7, 3, 1.0)) != gaussian_noise(7, 3, 1, 1.0)[0]


@pytest.mark.parametrize("quantile", [0.2, 0.5, 0.9])
def test_the_clip_converges_to_the_target_quantile_of_the_norms(quantile):
    """Andrew et al.'s geometric rule with exact counts: from 100x too high or too low, within
    300 rounds the clip sits at the quantile of log-normal norms (within 5 % of its value)."""
    rng = np.random.default_rng(1)
    norms = np.exp(rng.standard_normal(2000))
    want = np.quantile(norms, quantile)
    for start in (want * 100, want / 100):
        c = start
        for _ in range(300):
            c = next_clip(c, float(np.mean(norms <= c)), quantile, 0.2)
        assert c == pytest.approx(want, rel=0.05)


@pytest.mark.parametrize(("sets", "match"), [
    (["dp.clip=0"], "dp.clip' must be > 0"),
    (["dp.clip=-1"], "dp.clip' must be > 0"),
    (["dp.delta=0.1"], "dp.delta' must be below 1 / clients.total"),
    (["dp.target_epsilon=0.01"], "one round already costs epsilon"),
    (["selection.name=random"], "must be 'poisson'"),
    (["strategy.name=weighted"], "weighted, robust"),
    (["strategy.name=median"], "weighted, robust"),
    (["codec.name=int8"], "quantized update"),
    (["codec.name=topk", "codec.ratio=0.1", "codec.error_feedback=true"], "residual would carry"),
    (["stragglers.fastest_k=3"], "fastest_k must be 0"),
    (["guard.norm_multiple=10"], "guard.norm_multiple"),
    (["dp.placement=client"], "needs secagg.enabled"),
    (["dp.placement=client", "secagg.enabled=true", "codec.name=none", "dp.min_clients=1"], "min_clients' must be in"),
    (["dp.min_clients=3"], "placement = 'client' only"),
    (["dp.adaptive_clip=true", "secagg.enabled=true", "codec.name=none"], "clipped bit would reach rank 0"),
    (["fed_dropout.rate=0.5"], "fed_dropout.rate"),
    # 10 clients a round: the default count std is 10 / 20 = 0.5, no room beside a multiplier of 1
    (["dp.adaptive_clip=true", "clients.per_round=10", "dp.noise_multiplier=1"], "clipped_count_stddev' is too small"),
    (["dp.target_quantile=1"], "target_quantile' must be in"),
    (["dp.clip_learning_rate=0"], "clip_learning_rate' must be > 0"),
    (["selection.trust=0.3"], "selection.trust' must be 0 with dp.enabled"),
])
def test_configurations_that_break_the_guarantee_are_refused(sets, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, DP + sets)
    load_config(None, DP)  # and the base is fine


def test_a_clients_noise_share_has_its_std_and_is_its_own():
    a = client_noise(7, 3, 11, 200_000, 0.25)
    assert a.dtype == np.float32 and abs(a.std() / 0.25 - 1) < 0.01 and abs(a.mean()) < 0.01 * 0.25
    assert np.array_equal(a, client_noise(7, 3, 11, 200_000, 0.25))  # reproducible from the seed ...
    assert not np.array_equal(a[:100], client_noise(7, 3, 12, 100, 0.25))  # ... per client
    assert not np.array_equal(a[:100], client_noise(7, 4, 11, 100, 0.25))  # ... and round
    assert not np.array_equal(a[:100], gaussian_noise(7, 3, 100, 0.25))  # not rank 0's stream
    fresh = client_noise(None, 3, 11, 100, 0.25)  # secret: the OS's, never the same
    assert not np.array_equal(fresh, client_noise(None, 3, 11, 100, 0.25))
