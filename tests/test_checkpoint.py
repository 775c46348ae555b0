"""Checkpoints, exact resume, preemption by signal, the run record, inspect and report."""

import signal
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from conftest import (
    MPIEXEC, fedhpc_run, final_weights, lines_at_least, metrics, mpi_env, signal_twice, start_run, started, wait_until,
)
from fedhpc.checkpoint import Checkpoint, CheckpointError, list_checkpoints

pytestmark = pytest.mark.e2e

# everything that draws random numbers or keeps state is on
FULL = ["clock=simulated", "faults.dropout_prob=0.2", "stragglers.fastest_k=6", "profiles.speed_sigma=0.5",
        "codec.name=topk-int8", "codec.ratio=0.1", "codec.stochastic=true", "selection.name=adaptive",
        "strategy.name=fedadam", "clients.total=12", "clients.per_round=8", "local.epochs=1"]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 6-round run."""
    out = tmp_path_factory.mktemp("straight") / "run"
    fedhpc_run(3, out, *FULL, "rounds=6")
    return out


def resume(nprocs, target, *sets, check=True):
    return fedhpc_run(nprocs, target, *sets, check=check, resume=True)


def test_stopped_and_resumed_run_ends_with_the_same_model(straight, tmp_path):
    out = tmp_path / "run"
    fedhpc_run(3, out, *FULL, "rounds=3")
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["ckpt-000003.h5"]
    assert "checkpoint written:" in (out / "run.log").read_text() and " MB in " in (out / "run.log").read_text()
    resume(4, out, "rounds=6")  # also on a different number of ranks
    assert final_weights(out).tobytes() == final_weights(straight).tobytes()
    assert [m["round"] for m in metrics(out)] == list(range(1, 7))
    assert [m["accuracy"] for m in metrics(out)] == [m["accuracy"] for m in metrics(straight)]
    with h5py.File(out / "run.h5") as f:
        assert list(f["rounds/round"][()]) == list(range(1, 7))
        assert f["clients/status"].shape == (6, 12)
        assert np.array_equal(f["clients/status"][()], h5py.File(straight / "run.h5")["clients/status"][()])


def test_a_second_signal_closes_a_round_that_would_not_end(tmp_path):
    """The first signal lets the round finish; a second one (SLURM's last warning) closes it now."""
    out = tmp_path / "run"
    # every client sleeps ~forever (until CLOSE) in round 1
    proc = start_run(out, ["rounds=5", "clients.total=6", "clients.per_round=6",
                           "profiles.slow_clients=[0, 1, 2, 3, 4, 5]", "profiles.slow_factor=1e6"])
    wait_until(proc, lambda: started(out))
    t0 = signal_twice(proc)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75 and time.monotonic() - t0 < 30, stderr[-3000:]
    assert "closed after" in (log := (out / "run.log").read_text()) and "a second stop signal" in log
    (first,) = metrics(out)
    assert first["clients_reported"] == 0 and first["clients_late"] == 6
    assert list_checkpoints(out / "checkpoints")[0].name == "ckpt-000001.h5"


def test_a_signal_checkpoints_exits_75_and_the_resumed_run_matches(tmp_path):
    out = tmp_path / "run"
    sets = FULL + ["rounds=400", "clients.total=6", "clients.per_round=6", "stragglers.fastest_k=4"]
    proc = start_run(out, sets)
    wait_until(proc, lambda: lines_at_least(out, 3), nap=0.02)
    proc.send_signal(signal.SIGUSR1)  # what SLURM sends before the time limit (mpiexec forwards it)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 75, stderr[-3000:]
    stopped = len(metrics(out))
    assert 3 <= stopped < 400 and "stop signal received" in stderr
    assert list_checkpoints(out / "checkpoints")[0].name == f"ckpt-{stopped:06d}.h5"
    resume(3, out)
    straight = tmp_path / "straight"
    fedhpc_run(3, straight, *sets)
    assert final_weights(out).tobytes() == final_weights(straight).tobytes()


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(straight, tmp_path):
    out = tmp_path / "run"
    fedhpc_run(3, out, *FULL, "rounds=4", "checkpoint.every=1", "checkpoint.keep=2")
    ckpts = list_checkpoints(out / "checkpoints")
    assert [p.name for p in ckpts] == ["ckpt-000004.h5", "ckpt-000003.h5"]  # keep=2
    data = ckpts[0].read_bytes()
    ckpts[0].write_bytes(data[: len(data) // 2])  # truncated, as by a node crash mid-write
    proc = resume(3, out, "rounds=6")
    assert "refusing checkpoint" in proc.stderr and "truncated" in proc.stderr
    assert "resumed from" in proc.stderr and "ckpt-000003.h5" in proc.stderr
    assert final_weights(out).tobytes() == final_weights(straight).tobytes()


def test_checkpoint_refusals_say_why(straight, tmp_path):
    from fedhpc.config import load_config
    from fedhpc.models import Layout, build_model

    path = list_checkpoints(straight / "checkpoints")[0]
    cfg = load_config(straight / "config.toml")
    with Checkpoint(path, cfg) as ck:
        assert ck.round == 6 and ck.config() == cfg
    with pytest.raises(CheckpointError, match="different configuration"):
        Checkpoint(path, load_config(straight / "config.toml", ["codec.ratio=0.2"]))
    layout = Layout(build_model(load_config(None, ["model.name=logreg"]).model, (64,), 10, 0))
    with pytest.raises(CheckpointError, match="parameters"):
        Checkpoint(path, None, layout)
    bad = tmp_path / "ckpt-000001.h5"
    bad.write_bytes(path.read_bytes())
    with h5py.File(bad, "a") as f:
        f.attrs["schema_version"] = 99
    with pytest.raises(CheckpointError, match="schema version 99"):
        Checkpoint(bad)
    bad.write_bytes(path.read_bytes())
    with h5py.File(bad, "a") as f:
        ds = next(iter(f["model"].values()))
        ds[0] = ds[0] + 1  # silent corruption of the weights
    with pytest.raises(CheckpointError, match="content digest mismatch"):
        Checkpoint(bad)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(CheckpointError, match="truncated or not an HDF5 file"):
        Checkpoint(tmp_path / "junk.h5")


def test_resume_with_a_changed_config_is_refused(straight, tmp_path):
    proc = fedhpc_run(2, tmp_path / "x", f"--resume={straight}", "codec.ratio=0.3", check=False, timeout=120)
    assert proc.returncode == 2 and "different configuration" in proc.stderr


def test_inspect_and_report(straight):
    run = [sys.executable, "-m", "fedhpc"]
    ck = subprocess.run(run + ["inspect", str(list_checkpoints(straight / "checkpoints")[0])],
                        capture_output=True, text=True)
    assert ck.returncode == 0 and "round 6 of 6" in ck.stdout and "strategy fedadam" in ck.stdout
    rec = subprocess.run(run + ["inspect", str(straight / "run.h5")], capture_output=True, text=True)
    assert rec.returncode == 0 and "6 rounds, 12 clients" in rec.stdout
    rep = subprocess.run(run + ["report", str(straight)], capture_output=True, text=True)
    assert rep.returncode == 0, rep.stderr
    for name in ("accuracy_loss.png", "bytes.png", "round_time.png", "participation.png"):
        assert (straight / "report" / name).read_bytes()[:4] == b"\x89PNG"
    assert "final accuracy" in (straight / "report" / "README.md").read_text()
    page = (straight / "report" / "index.html").read_text()
    assert "http://" not in page and "https://" not in page  # self-contained: nothing to fetch
    assert page.count('src="data:image/png;base64,') == 4 and page.count("<tr>") == 1 + 6  # head + 6 rounds
    # a real browser renders it, every plot decodes
    from system import apt_install

    problem = apt_install(["chromium"], ["chromium"])
    assert problem is None, problem
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                          (straight / "report" / "index.html").as_uri()], capture_output=True, text=True, timeout=120)
    assert dom.returncode == 0 and 'data-plots="ok"' in dom.stdout, dom.stderr[-2000:]
    assert "fedhpc run report" in dom.stdout and '<p id="plots-status"></p>' in dom.stdout
    bad = subprocess.run(run + ["inspect", str(straight / "metrics.jsonl")], capture_output=True, text=True)
    assert bad.returncode == 2 and "not a readable HDF5 file" in bad.stderr


@pytest.mark.parametrize("edit", ["round attribute", "history", "metrics line", "residual", "shard index",
                                  "shard missing", "manifest", "no digest", "strategy key", "profile"])
def test_any_edit_of_what_resume_reads_is_refused_and_falls_back(straight, tmp_path, edit):
    """The newest checkpoint edited in any way resume relies on is refused naming why, and the
    previous one is used: the resumed run ends with the uninterrupted run's model."""
    import json as _json

    from fedhpc.checkpoint import DIGEST_ATTR, content_digest, shard_directory

    out = tmp_path / "run"
    fedhpc_run(3, out, *FULL, "rounds=4", "checkpoint.every=1", "checkpoint.keep=2")
    newest = list_checkpoints(out / "checkpoints")[0]
    shard = shard_directory(newest) / "rank-0002.h5"
    with h5py.File(newest if edit not in ("residual", "shard index") else shard, "a") as f:
        if edit == "round attribute":
            f.attrs["round"] = 5
        elif edit == "history":
            f["clients/history/reported"][3] += 1
        elif edit == "metrics line":
            lines = str(f["metrics"].attrs["jsonl"]).split("\n")
            lines[-1] = _json.dumps(_json.loads(lines[-1]) | {"accuracy": 0.99})
            f["metrics"].attrs["jsonl"] = "\n".join(lines)
        elif edit == "residual":  # found by the rank that restores that client
            f["residual"][1, 0] = np.float32(f["residual"][1, 0]) + np.float32(1e-3)
        elif edit == "shard index":  # a client's state given to another client
            f["ids"][0] = f["ids"][0] + 100
        elif edit == "shard missing":
            shard.unlink()
        elif edit == "manifest":
            f["states/clients"][0] += 1
        elif edit == "no digest":
            del f.attrs[DIGEST_ATTR]
        else:  # self-consistent, digest recomputed: what only a full validation catches
            if edit == "strategy key":
                f["strategy"].attrs["mystery"] = 1
            else:
                f["clients/profile/speed"][0] = np.nan
            f.attrs[DIGEST_ATTR] = content_digest(f)
    expected = {"no digest": "has no content_sha256", "strategy key": "strategy state refused",
                "profile": "profile", "residual": "does not match its digest",
                "shard index": "does not match its checkpoint's manifest",
                "shard missing": "rank-0002.h5 is missing"}.get(edit, "content digest mismatch")
    proc = resume(3, out, "rounds=6")
    assert "refusing checkpoint" in proc.stderr and expected in proc.stderr, proc.stderr[-3000:]
    assert "resumed from" in proc.stderr and "ckpt-000003.h5" in proc.stderr
    assert final_weights(out).tobytes() == final_weights(straight).tobytes()


def test_a_run_directory_that_cannot_be_written_fails_cleanly(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "checkpoints").write_text("a file where the checkpoints should go")
    proc = fedhpc_run(3, out, "rounds=2", check=False, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("is not writable") == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and not (out / "metrics.jsonl").exists()
    # writable at the start, not any more at the first checkpoint: a clean stop, what was saved is kept
    out2 = tmp_path / "run2"
    job = subprocess.Popen([MPIEXEC, "-n", "3", sys.executable, "-m", "fedhpc", "run", "--out", str(out2), "--set",
                            "rounds=40", "--set", "checkpoint.every=20"], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=mpi_env())
    deadline = time.monotonic() + 120
    while not (out2 / "metrics.jsonl").exists() or len((out2 / "metrics.jsonl").read_text().splitlines()) < 2:
        assert job.poll() is None and time.monotonic() < deadline, job.communicate()
        time.sleep(0.05)
    (out2 / "checkpoints").rmdir()
    (out2 / "checkpoints").write_text("no longer a directory")
    _, err = job.communicate(timeout=120)
    assert job.returncode == 2 and err.count("cannot write the checkpoint of round 20") == 1, err[-3000:]
    assert "Traceback" not in err and "checkpoints already there are kept" in err


def test_spilling_client_state_changes_no_bit_and_resumes_on_other_rank_counts(straight, tmp_path):
    """Room for two clients' state per rank: states spill to disk and come back every round,
    the run stops and resumes on 4 ranks (the clients change hosts), and the model is bit
    for bit the uninterrupted run's that kept every state in RAM."""
    out = tmp_path / "run"
    budget = ["clients.state_memory_mb=0.04", f"clients.state_dir={tmp_path / 'scratch'}"]  # 2 x 19 kB
    fedhpc_run(3, out, *FULL, *budget, "rounds=3")
    first = metrics(out)
    assert sum(m["state_spills"] for m in first) > 0 and sum(m["state_loads"] for m in first) > 0
    assert all(m["state_ram_mb"] <= 2 * 0.04 for m in first)  # two trainer ranks, each within its budget
    assert not any((tmp_path / "scratch").iterdir())  # the spill files go with the job
    resume(4, out, *budget, "rounds=6")
    assert final_weights(out).tobytes() == final_weights(straight).tobytes()
    proc = fedhpc_run(3, tmp_path / "small", *FULL, "clients.state_memory_mb=0.001", check=False, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("less than one client's error-feedback state") == 1
    (tmp_path / "a-file").write_text("not a directory")
    proc = fedhpc_run(3, tmp_path / "unwritable", *FULL, budget[0], f"clients.state_dir={tmp_path / 'a-file'}",
                      check=False, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("cannot be created") == 1, proc.stderr[-3000:]
    assert not (tmp_path / "unwritable" / "metrics.jsonl").exists()  # said before the first round
