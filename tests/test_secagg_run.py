"""Secure aggregation in real jobs: the same bits as without it (dropouts, late and refused
clients, a quantizing codec with error feedback, any rank count, a resume), every protocol step's
dropouts recovered, a round below the threshold failing without touching the model, and rank 0
never holding one client's update (instrumented)."""

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from conftest import fedhpc_run, final_weights, metrics, mpirun

pytestmark = pytest.mark.e2e

AUDIT = Path(__file__).with_name("secagg_audit.py")
# 16 clients, 8 a round, on the simulated clock: 10 % dropouts, client 3 ten times slower than
# the deadline allows (late, after sharing), client 6's update corrupted in transit, client 11
# failing in training; int8 with error feedback (on by default), so the values beneath the masks
# are quantized and carry residuals from round to round
BASE = ["clients.total=16", "clients.per_round=8", "rounds=5", "local.epochs=1", "guard.norm_multiple=0",
        "clock=simulated", "seed=11", "faults.dropout_prob=0.1", "codec.name=int8", "profiles.slow_clients=[3]",
        "profiles.slow_factor=20", "stragglers.deadline_s=0.2", "faults.corrupt_clients=[6]",
        "faults.error_clients=[11]", "eval.every=1"]
ON = ["secagg.enabled=true"]


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    out = tmp_path_factory.mktemp("secagg") / "plain"
    fedhpc_run(3, out, *BASE)
    return out


@pytest.fixture(scope="module")
def secure(tmp_path_factory):
    out = tmp_path_factory.mktemp("secagg") / "secure"
    fedhpc_run(3, out, *BASE, *ON, "checkpoint.every=2")
    return out


def same_outcomes(a, b):
    """The rounds had the same clients in them, for the same reasons."""
    keys = ("clients_selected", "clients_reported", "clients_late", "clients_failed", "accuracy", "loss")
    assert [[r[k] for k in keys] for r in metrics(a)] == [[r[k] for k in keys] for r in metrics(b)]


def test_a_secure_run_gives_the_same_bits_as_a_plain_one(plain, secure):
    m = metrics(secure)
    assert all(r["secagg_error"] is None for r in m)
    assert sum(r["clients_late"] for r in m) and sum(r["clients_failed"] for r in m)  # the faults happened
    assert sum(r["secagg_dropped"] for r in m) == sum(r["clients_late"] + r["clients_failed"] for r in m)
    assert all(r["secagg_bytes"] > 0 and r["secagg_seconds"] > 0 for r in m)
    same_outcomes(plain, secure)
    assert final_weights(secure).tobytes() == final_weights(plain).tobytes()
    # each masked input is the model's n values at 8 bytes, beyond what int8 sends
    n = final_weights(plain).size
    assert metrics(secure)[0]["bytes_up"] > 8 * n * metrics(secure)[0]["clients_reported"]
    with h5py.File(secure / "run.h5") as f:
        assert list(f["rounds/secagg_bytes"][()]) == [r["secagg_bytes"] for r in m]


def test_the_sparse_graph_on_two_ranks_folding_at_rank0_gives_the_same_bits(plain, tmp_path):
    """SecAgg+ (6 neighbours each, of the 7 other clients a round selects), every masked input sent whole to rank 0, which folds it."""
    out = tmp_path / "run"
    fedhpc_run(2, out, *BASE, *ON, "secagg.neighbors=6", "secagg.threshold=0.4", "aggregation.fold=rank0")
    assert all(r["secagg_error"] is None for r in metrics(out))
    same_outcomes(plain, out)
    assert final_weights(out).tobytes() == final_weights(plain).tobytes()


def test_a_resumed_secure_run_is_the_same_run(secure, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(secure, out)
    for late in ("ckpt-000004.h5", "ckpt-000005.h5"):
        (out / "checkpoints" / late).unlink()
        shutil.rmtree(out / "checkpoints" / late.replace(".h5", ".states"))
    fedhpc_run(4, out, *BASE, *ON, "checkpoint.every=2", resume=True)
    assert final_weights(out).tobytes() == final_weights(secure).tobytes()


def test_dropouts_at_every_protocol_step_are_recovered(tmp_path):
    """Client 1 never sends its keys and client 5 never its shares (both then count out, as a
    client failing in training would); client 9 sends its input but is silent when the sum is
    unmasked (its neighbours' shares recover its seed). Against the plain run in which clients
    1 and 5 fail: the same bits. A threshold of 0.3, as with this many faults a round of 8 keeps
    as few as 3."""
    secure, plain = tmp_path / "secure", tmp_path / "plain"
    common = [s for s in BASE if not s.startswith("faults.error_clients")]
    fedhpc_run(3, secure, *common, *ON, "secagg.threshold=0.3", "faults.error_clients=[11]", "faults.drop_at_keys=[1]",
               "faults.drop_at_shares=[5]", "faults.drop_at_unmask=[9]")
    fedhpc_run(3, plain, *common, "faults.error_clients=[1, 5, 11]")
    m = metrics(secure)
    assert all(r["secagg_error"] is None for r in m)
    with h5py.File(secure / "run.h5") as f:
        selected = f["clients/status"][()] > 0
    for c in (1, 5, 9):
        assert selected[:, c].any(), f"client {c} was never selected: the test proves nothing of it"
    assert sum(r["failures"].get("secagg", 0) for r in m) == selected[:, 1].sum() + selected[:, 5].sum()
    same_outcomes(plain, secure)
    assert final_weights(secure).tobytes() == final_weights(plain).tobytes()


def test_below_the_threshold_a_round_fails_and_the_model_stays(tmp_path):
    """threshold 1: every share holder must reveal, so each round that selects client 2 (silent
    when unmasking, the only fault) fails; the others go on, and the run ends normally."""
    out = tmp_path / "run"
    quiet = [s for s in BASE if not s.startswith(("faults.", "profiles.", "stragglers."))]
    proc = fedhpc_run(2, out, *quiet, *ON, "secagg.threshold=1.0", "faults.drop_at_unmask=[2]", "rounds=4")
    m = metrics(out)
    with h5py.File(out / "run.h5") as f:
        status = f["clients/status"][()]
    failed = [r["secagg_error"] is not None for r in m]
    assert failed == [bool(row[2] == 1) for row in status]  # exactly the rounds client 2 reported in
    assert any(failed) and not all(failed)
    for i, r in enumerate(m):
        if failed[i]:
            assert "cannot be recovered" in r["secagg_error"]
            before = m[i - 1] if i else None
            if before is not None:  # the model did not move: the same evaluation as the round before
                assert (r["accuracy"], r["loss"]) == (before["accuracy"], before["loss"])
    assert "secure aggregation failed, the model stays as it was" in proc.stderr


def test_with_differential_privacy_the_same_bits_as_central_noise_alone(tmp_path):
    dp = ["dp.enabled=true", "selection.name=poisson", "codec.name=none", "dp.clip=0.5", "dp.noise_multiplier=0.7",
          "dp.secret_noise=false", "dp.delta=1e-3", "clients.total=16", "clients.per_round=8", "rounds=3",
          "local.epochs=1", "guard.norm_multiple=0", "clock=simulated", "seed=4"]
    secure, plain = tmp_path / "secure", tmp_path / "plain"
    fedhpc_run(3, secure, *dp, *ON)
    fedhpc_run(3, plain, *dp)
    assert [r["epsilon"] for r in metrics(secure)] == [r["epsilon"] for r in metrics(plain)]
    assert final_weights(secure).tobytes() == final_weights(plain).tobytes()


@pytest.mark.parametrize("fold", ["rank0", "ranks"])
def test_rank0_never_holds_one_clients_update(tmp_path, fold):
    """Instrumented (tests/secagg_audit.py): every buffer rank 0 receives, against every
    client's update as its host had it before masking."""
    audit, out = tmp_path / "audit", tmp_path / "run"
    args = [str(AUDIT), str(audit), "run", "--out", str(out)]
    for s in [*BASE, *ON, f"aggregation.fold={fold}", "rounds=3"]:
        args += ["--set", s]
    proc = mpirun(3, args, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    at0 = dict(np.load(audit / "rank0.npz"))
    plain_inputs = {k: v for r in (1, 2) for k, v in np.load(audit / f"rank{r}.npz").items() if k.startswith("plain-")}
    assert len(plain_inputs) >= 3 * 5  # most of 8 clients a round, 3 rounds
    norms = [v[0] for k, v in at0.items() if k.startswith("norm-")]
    updates = {k: v for k, v in at0.items() if k.startswith("update-")}
    assert not any(np.isfinite(norms)), "a folding rank told rank 0 a client's norm"
    if fold == "ranks":
        assert not updates  # rank 0 is sent accounts only, and the reduced sum
        return
    ok = {k: v for k, v in updates.items() if v.nbytes > 8 * 100}  # masked inputs (failures' reasons are short)
    assert len(ok) >= len(plain_inputs) - 3
    for key, body in ok.items():
        y = body[:-4].view("<i8")  # the masked values, before their CRC
        q = plain_inputs[key.replace("update-", "plain-")]
        assert not np.array_equal(y, q)
        assert np.mean(np.abs(y.astype(np.float64)) > 2.0**62) > 0.4  # uniform over the ring: half beyond 2**62
        assert np.mean(np.abs(q.astype(np.float64)) > 2.0**62) == 0  # where an honest update always lies
        for other in plain_inputs.values():
            assert np.count_nonzero(y == other) < 5  # no value of any update shows through


def test_a_secure_run_shows_its_protocol_cost_in_the_report(secure):
    line = json.loads((secure / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(line) >= {"secagg_seconds", "secagg_bytes", "secagg_dropped", "secagg_error"}
    proc = mpirun(1, ["-m", "fedhpc", "report", str(secure)], timeout=120)
    assert proc.returncode == 0, proc.stderr
    page = (secure / "report" / "index.html").read_text()
    assert "<th>SecAgg s</th>" in page and f"<td>{line['secagg_seconds']:.3f}</td>" in page




def test_client_placed_noise_has_the_std_of_the_guarantee(tmp_path):
    """dp.placement = "client": each client adds its share, std z * clip / sqrt(min_clients).
    Against the same run without noise (same seeds: the same clipped updates), one round's
    model moves by the mean of k shares: std z * clip * sqrt(k / min_clients) / per_round. And
    the epsilon is the one central noise of the same multiplier would cost."""
    z, clip, per_round, least = 0.8, 0.5, 8, 3
    dp = ["dp.enabled=true", "selection.name=poisson", "codec.name=none", f"dp.clip={clip}", "dp.secret_noise=false",
          "dp.delta=1e-3", "clients.total=16", f"clients.per_round={per_round}", "rounds=1", "local.epochs=1",
          "guard.norm_multiple=0", "clock=simulated", "seed=4", "dp.placement=client", f"dp.min_clients={least}", *ON]
    noisy, quiet, central = tmp_path / "noisy", tmp_path / "quiet", tmp_path / "central"
    fedhpc_run(3, noisy, *dp, f"dp.noise_multiplier={z}")
    fedhpc_run(3, quiet, *dp, "dp.noise_multiplier=0")
    k = metrics(noisy)[0]["clients_reported"]
    assert k >= least and metrics(noisy)[0]["secagg_error"] is None
    moved = final_weights(noisy).astype(np.float64) - final_weights(quiet)
    expected = z * clip * np.sqrt(k / least) / per_round
    # the std of n normal values is off by 1/sqrt(2n) (1 % at the model's 4,810 values): 5 % is 5 sigma
    assert moved.size > 4000 and abs(moved.std() / expected - 1) < 0.05, moved.std() / expected
    fedhpc_run(3, central, *[s for s in dp if not s.startswith(("dp.placement", "dp.min_clients"))],
               f"dp.noise_multiplier={z}")
    assert metrics(noisy)[0]["epsilon"] == metrics(central)[0]["epsilon"]


def test_below_dp_min_clients_no_sum_is_released(tmp_path):
    out = tmp_path / "run"
    fedhpc_run(2, out, "dp.enabled=true", "selection.name=poisson", "codec.name=none", "dp.secret_noise=false",
               "dp.delta=1e-3", "clients.total=16", "clients.per_round=8", "rounds=2", "local.epochs=1",
               "guard.norm_multiple=0", "clock=simulated", "dp.placement=client", "dp.min_clients=8",
               "faults.dropout_prob=0.5", *ON)
    m = metrics(out)
    assert all(r["clients_reported"] < 8 for r in m)
    assert all("fewer than dp.min_clients = 8" in r["secagg_error"] for r in m)
    assert m[1]["loss"] == m[0]["loss"]  # the model never moved
