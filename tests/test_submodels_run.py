"""Budget sub-models in real jobs: each client gets the widest width that fits the deadline, the
widths are recorded per client, narrow clients send less and make the deadline, and the run is the
same bits on 1, 2 and 4 trainer ranks and after a resume."""

import shutil

import h5py
import numpy as np
import pytest

from conftest import fedhpc_run, final_weights, metrics

pytestmark = pytest.mark.e2e

# lognormal speeds (sigma 1); 2 epochs of about 72 samples at 0.5 ms cost 0.072 s at speed 1, so
# with a 0.07 s deadline only the fastest clients can afford the full model
BUDGET = ["clients.total=20", "clients.per_round=10", "rounds=4", "local.epochs=2", "clock=simulated", "seed=3",
          "profiles.speed_sigma=1.0", "stragglers.deadline_s=0.07", "submodels.mode=budget", "codec.name=int8",
          "model.hidden=[64,32]"]


@pytest.fixture(scope="module")
def budget(tmp_path_factory):
    out = tmp_path_factory.mktemp("budget") / "run"
    fedhpc_run(3, out, *BUDGET, "checkpoint.every=2")
    return out


def test_each_client_gets_a_width_it_can_afford_and_makes_the_deadline(budget, tmp_path):
    with h5py.File(budget / "run.h5") as f:
        width, status, up = f["clients/width"][()], f["clients/status"][()], f["clients/bytes_up"][()]
        mean = f["rounds/width_mean"][()]
    selected = status > 0
    assert np.isnan(width[~selected]).all() and not np.isnan(width[selected]).any()
    assert set(np.unique(width[selected])) <= {1.0, 0.75, 0.5, 0.25} and len(np.unique(width[selected])) >= 3
    assert (status[selected] == 1).all()  # every client made the deadline at the width it was given
    full, quarter = up[width == 1.0], up[width == 0.25]
    assert quarter.max() < 0.25 * full.min()  # a quarter of every hidden layer: under a quarter of the bytes
    assert np.allclose(mean, [np.mean(row[~np.isnan(row)]) for row in width])
    assert [m["width_mean"] for m in metrics(budget)] == pytest.approx(list(mean))
    # the same job with every client at full width: the slow ones miss the deadline
    fixed = tmp_path / "fixed"
    fedhpc_run(3, fixed, *[s for s in BUDGET if not s.startswith("submodels")])
    assert sum(m["clients_late"] for m in metrics(fixed)) > 0
    assert sum(m["clients_late"] for m in metrics(budget)) == 0


@pytest.mark.parametrize("ranks", [2, 5])
def test_a_budget_run_is_the_same_bits_on_any_number_of_ranks(budget, tmp_path, ranks):
    out = tmp_path / "run"
    fedhpc_run(ranks, out, *BUDGET)
    assert final_weights(out).tobytes() == final_weights(budget).tobytes()


def test_a_resumed_budget_run_is_the_same_run(budget, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(budget, out)
    (out / "checkpoints" / "ckpt-000004.h5").unlink()
    shutil.rmtree(out / "checkpoints" / "ckpt-000004.states")
    fedhpc_run(3, out, *BUDGET, "checkpoint.every=2", resume=True)
    assert final_weights(out).tobytes() == final_weights(budget).tobytes()
    with h5py.File(out / "run.h5") as f, h5py.File(budget / "run.h5") as g:
        assert np.array_equal(f["clients/width"][()], g["clients/width"][()], equal_nan=True)
