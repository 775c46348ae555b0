"""DP-FedAvg in real jobs: the epsilon a run reports is dp-accounting's for the sampling it did,
updates leave clipped, a resumed run is the same run, and the budget stops it."""

import shutil

import dp_accounting
import h5py
import numpy as np
import pytest
from dp_accounting import pld, rdp

from conftest import fedhpc_run, final_weights, metrics

pytestmark = pytest.mark.e2e

DP = ["dp.enabled=true", "selection.name=poisson", "codec.error_feedback=false", "guard.norm_multiple=0",
      "dp.delta=1e-3", "dp.clip=0.5", "dp.noise_multiplier=0.8", "clients.total=20", "clients.per_round=8",
      "local.epochs=1", "eval.every=3"]


def library_epsilon(rates, accountant, sigma=0.8):
    acc = accountant()
    for q in rates:
        acc.compose(dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)))
    return acc.get_epsilon(1e-3)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    out = tmp_path_factory.mktemp("dp") / "run"
    fedhpc_run(3, out, *DP, "rounds=6", "checkpoint.every=3", "checkpoint.keep=2")
    return out


def test_epsilon_is_dp_accountings_and_updates_leave_clipped(straight):
    m = metrics(straight)
    rates = [r["dp_sampling_rate"] for r in m]
    assert rates == [8 / 20] * 6
    for i, r in enumerate(m, 1):
        assert r["epsilon"] == pytest.approx(library_epsilon(rates[:i], rdp.RdpAccountant), rel=1e-9)
        assert r["update_norm_median"] is None or r["update_norm_median"] <= 0.5
    assert m[-1]["epsilon_pld"] == pytest.approx(library_epsilon(rates, pld.PLDAccountant), rel=1e-3)
    assert all(r["epsilon_pld"] is None for r in m[:-1])
    assert len({r["clients_selected"] for r in m}) > 1  # Poisson: the round size varies
    with h5py.File(straight / "run.h5") as f:
        assert np.allclose(f["rounds/epsilon"][()], [r["epsilon"] for r in m])
    assert "| epsilon " in (straight / "run.log").read_text()


def test_a_resumed_dp_run_is_the_same_run_and_its_noise_is_not_the_seeds(straight, tmp_path):
    """The noise comes from a secret kept in the checkpoint: resuming from round 3 (on 4 ranks)
    ends with the uninterrupted run's model, while a fresh run of the same config does not."""
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    (out / "checkpoints" / "ckpt-000006.h5").unlink()
    shutil.rmtree(out / "checkpoints" / "ckpt-000006.states")
    fedhpc_run(4, out, *DP, "rounds=6", resume=True)
    assert final_weights(out).tobytes() == final_weights(straight).tobytes()
    assert [r["epsilon"] for r in metrics(out)] == [r["epsilon"] for r in metrics(straight)]
    again = tmp_path / "again"
    fedhpc_run(3, again, *DP, "rounds=6")
    assert [r["clients_selected"] for r in metrics(again)] == [r["clients_selected"] for r in metrics(straight)]
    assert final_weights(again).tobytes() != final_weights(straight).tobytes()  # same seed, other noise


def test_the_budget_stops_the_run_before_the_round_that_would_exceed_it(straight, tmp_path):
    eps = [r["epsilon"] for r in metrics(straight)]
    target = (eps[3] + eps[4]) / 2  # 4 rounds fit, the fifth would not
    out = tmp_path / "run"
    proc = fedhpc_run(3, out, *DP, "rounds=6", f"dp.target_epsilon={target}")
    m = metrics(out)
    assert len(m) == 4 and m[-1]["epsilon"] <= target and m[-1]["accuracy"] is not None
    assert "stopping before round 5 of 6" in proc.stderr and "past dp.target_epsilon" in proc.stderr
    assert (out / "checkpoints" / "ckpt-000004.h5").exists()
    assert [r["epsilon"] for r in m] == eps[:4]


# little noise on the model (multiplier 0.3: the noise scales with the clip, and more would make the
# updates as large as any clip), the count's noise of std 1 on 8 clients a round, both seeded from the
# run seed (secret_noise = false), so the run is the same every time
ADAPTIVE = [*DP, "dp.noise_multiplier=0.3", "dp.adaptive_clip=true", "dp.clipped_count_stddev=1.0",
            "dp.secret_noise=false", "rounds=6"]


@pytest.fixture(scope="module")
def adaptive(tmp_path_factory):
    out = tmp_path_factory.mktemp("adaptive") / "run"
    fedhpc_run(3, out, *ADAPTIVE, "dp.clip=3", "checkpoint.every=3", "checkpoint.keep=2")
    return out


def test_the_adaptive_clip_follows_the_clients_bits_within_the_same_budget(adaptive, tmp_path):
    """From 3 (above most updates' norms: the released fraction is above 1/2) the clip falls round
    after round by the geometric rule; from 1e-4 (every client over it) it rises. The
    accountant's epsilon is the non-adaptive run's: the count's cost is inside the multiplier."""
    m = metrics(adaptive)
    clips, fractions = [r["dp_clip"] for r in m], [r["dp_unclipped"] for r in m]
    assert clips[0] == 3.0 and all(f > 0.5 for f in fractions)
    for i in range(len(m) - 1):
        assert clips[i + 1] == pytest.approx(clips[i] * np.exp(-0.2 * (fractions[i] - 0.5)), rel=1e-12)
    assert all(r["update_norm_median"] is None or r["update_norm_median"] <= r["dp_clip"] for r in m)
    assert [r["epsilon"] for r in m] == pytest.approx([library_epsilon([0.4] * i, rdp.RdpAccountant, 0.3)
                                                      for i in range(1, 7)], rel=1e-9)
    assert ", clip " in (adaptive / "run.log").read_text()
    low = tmp_path / "low"
    fedhpc_run(3, low, *ADAPTIVE, "dp.clip=1e-4", "rounds=3")
    m = metrics(low)
    assert all(r["dp_unclipped"] < 0.5 for r in m) and m[0]["dp_clip"] < m[1]["dp_clip"] < m[2]["dp_clip"]


def test_a_resumed_adaptive_run_continues_with_the_clip_it_had(adaptive, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(adaptive, out)
    (out / "checkpoints" / "ckpt-000006.h5").unlink()
    shutil.rmtree(out / "checkpoints" / "ckpt-000006.states")
    fedhpc_run(2, out, *ADAPTIVE, "dp.clip=3", resume=True)
    assert [r["dp_clip"] for r in metrics(out)] == [r["dp_clip"] for r in metrics(adaptive)]
    assert final_weights(out).tobytes() == final_weights(adaptive).tobytes()
