"""End-to-end federated jobs on real MPI ranks (mpiexec -n N fedhpc run)."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import numpy as np
import pytest

from conftest import MPIEXEC, fedhpc_run, final_weights, metrics, mpi_env

pytestmark = pytest.mark.e2e

SMALL = ["rounds=4", "clients.total=12", "clients.per_round=8", "local.epochs=1"]


def test_same_model_whatever_the_number_of_trainer_ranks(tmp_path):
    """1, 2 and 4 trainer ranks give bitwise the same model, with stochastic
    compression, error feedback, simulated dropouts and fastest-k all on."""
    sets = SMALL + ["clock=simulated", "faults.dropout_prob=0.2", "stragglers.fastest_k=5",
                    "profiles.speed_sigma=0.5", "codec.name=topk-int8", "codec.ratio=0.1",
                    "codec.stochastic=true", "selection.name=adaptive"]
    models = {}
    for n in (2, 3, 5):
        fedhpc_run(n, tmp_path / f"n{n}", *sets)
        models[n] = final_weights(tmp_path / f"n{n}")
        m = metrics(tmp_path / f"n{n}")
        assert all(r["clients_reported"] <= 5 for r in m)
    assert models[2].tobytes() == models[3].tobytes() == models[5].tobytes()
    assert not np.array_equal(models[2], np.zeros_like(models[2]))


@pytest.mark.parametrize("strategy, extra", [
    ("fedavg", ["codec.name=none"]),
    ("fedprox", ["codec.name=int8", "codec.stochastic=true"]),
    ("weighted", ["strategy.by=loss", "codec.name=topk", "codec.ratio=0.1", "codec.error_feedback=false"]),
    ("fedadam", ["codec.name=randk", "codec.ratio=0.2"]),
    ("fedyogi", ["fed_dropout.rate=0.3", "codec.name=fp16"]),
])
def test_sum_decomposable_strategies_give_the_same_bits_folded_on_1_2_4_ranks_or_at_rank_0(tmp_path, strategy,
                                                                                          extra):
    """Each rank folds its clients into the exact ring and the sums meet in a reduce-scatter:
    the model does not depend on how many ranks fold, nor on folding everything at rank 0,
    with fastest-k (clients folded, then excluded) and dropouts on."""
    sets = SMALL + ["clock=simulated", "faults.dropout_prob=0.2", "stragglers.fastest_k=5",
                    "profiles.speed_sigma=0.5", f"strategy.name={strategy}", *extra]
    models = []
    for n, fold in ((2, "ranks"), (3, "ranks"), (5, "ranks"), (3, "rank0")):
        fedhpc_run(n, tmp_path / f"{n}{fold}", *sets, f"aggregation.fold={fold}")
        models.append(final_weights(tmp_path / f"{n}{fold}").tobytes())
        m = metrics(tmp_path / f"{n}{fold}")
        assert all(r["clients_reported"] <= 5 for r in m) and any(r["clients_late"] for r in m)
    assert models.count(models[0]) == 4


def test_frames_let_go_on_early_verdicts_give_the_bits_of_frames_held_until_the_close(tmp_path):
    """Updates of 1.2 MB (above the size rank 0 sends early verdicts for): on the wall clock each
    folding rank lets a frame go as soon as rank 0 has decided on it (in the first round, by the
    least and greatest median the round can still reach); on the simulated clock with fastest-k
    (nothing is decided before the close) every frame is held until then. Everyone reports in
    both, so the sums must be the same bits."""
    sets = ["rounds=3", "clients.total=8", "clients.per_round=8", "local.epochs=1", "model.hidden=[512,512]"]
    fedhpc_run(3, tmp_path / "wall", *sets)
    fedhpc_run(3, tmp_path / "held", *sets, "clock=simulated", "stragglers.fastest_k=8")
    assert all(m["clients_reported"] == 8 for m in metrics(tmp_path / "wall") + metrics(tmp_path / "held"))
    assert final_weights(tmp_path / "wall").tobytes() == final_weights(tmp_path / "held").tobytes()


def test_default_job_reaches_85_percent_on_non_iid_digits(out):
    proc = fedhpc_run(5, out)
    m = metrics(out)
    cfg = tomllib.loads((out / "config.toml").read_text())
    assert len(m) == cfg["rounds"] and cfg["data"]["partition"] == "classes"
    assert m[-1]["accuracy"] >= 0.85, m[-1]
    assert set(m[0]) >= {"round", "accuracy", "loss", "clients_selected", "clients_reported", "clients_late",
                         "clients_failed", "bytes_up", "bytes_down", "round_seconds", "sim_seconds"}
    for r in m:  # the slowest rank's local training is part of the round; the rest is the framework's
        assert 0 < r["train_seconds"] < r["round_seconds"], r
        assert r["overhead_seconds"] == pytest.approx(r["round_seconds"] - r["train_seconds"])
    # rank 0 prints one progress line per round; the other ranks stay quiet
    assert proc.stderr.count("[rank 0] INFO round") == cfg["rounds"]
    assert "[rank 1]" not in proc.stderr
    assert (out / "run.log").read_text().count("round") >= cfg["rounds"]
    # and TensorBoard by default: one accuracy point per round, the same as metrics.jsonl
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    board.Reload()
    assert [(e.step, e.value) for e in board.Scalars("eval/accuracy")] == [
        (r["round"], pytest.approx(r["accuracy"])) for r in m]


def test_fedprox_converges(out):
    fedhpc_run(3, out, "strategy.name=fedprox", "strategy.mu=0.01", "rounds=30")
    assert metrics(out)[-1]["accuracy"] >= 0.8


def test_wall_clock_deadline_closes_rounds_on_time(out):
    """Two clients vastly slower (they would sleep for minutes): every round ends near the
    deadline, they are counted late, and their ranks abandon them at CLOSE."""
    fedhpc_run(3, out, "rounds=3", "clients.total=8", "clients.per_round=8", "profiles.slow_clients=[0, 1]",
               "profiles.slow_factor=1e6", "stragglers.deadline_s=1.5", "local.epochs=1")
    for r in metrics(out):
        assert r["round_seconds"] < 4.0, r
        assert r["clients_late"] >= 2 and r["clients_reported"] <= 6, r
        assert r["clients_reported"] + r["clients_late"] + r["clients_failed"] == 8


def test_wall_clock_fastest_k_aggregates_exactly_k(out):
    fedhpc_run(3, out, "rounds=2", "clients.total=8", "clients.per_round=8", "stragglers.fastest_k=3",
               "local.epochs=1")
    for r in metrics(out):
        assert r["clients_reported"] == 3 and r["clients_late"] == 5, r


def test_simulated_deadline_is_deterministic(tmp_path):
    sets = ["rounds=3", "clients.total=10", "clients.per_round=10", "clock=simulated",
            "profiles.slow_clients=[2, 7]", "profiles.slow_factor=50", "stragglers.deadline_s=0.5"]
    fedhpc_run(3, tmp_path / "a", *sets)
    fedhpc_run(3, tmp_path / "b", *sets)
    ma, mb = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    for r in ma:
        assert r["sim_seconds"] <= 0.5 and r["clients_late"] == 2 and r["clients_reported"] == 8, r
    assert final_weights(tmp_path / "a").tobytes() == final_weights(tmp_path / "b").tobytes()
    assert [r["accuracy"] for r in ma] == [r["accuracy"] for r in mb]


def test_partial_work_lets_stragglers_report_the_epochs_that_fit_before_the_deadline(tmp_path):
    """FedProx's systems-heterogeneity setting: a client 4x slower cannot do 4 epochs in
    the deadline; with partial work it does the one that fits and is aggregated."""
    sets = ["rounds=2", "clients.total=10", "clients.per_round=10", "clock=simulated", "local.epochs=4",
            "profiles.slow_clients=[2, 7]", "profiles.slow_factor=4", "stragglers.deadline_s=0.5"]
    fedhpc_run(3, tmp_path / "drop", *sets)
    fedhpc_run(3, tmp_path / "partial", *sets, "stragglers.partial_work=true")
    for r in metrics(tmp_path / "drop"):  # the round waits until the deadline for the two that never come
        assert r["clients_reported"] == 8 and r["clients_late"] == 2 and r["sim_seconds"] == 0.5, r
    for r in metrics(tmp_path / "partial"):
        # about 144 samples each: 4 epochs at full speed or 1 epoch at 1/4 speed, both about 0.29 s
        assert r["clients_reported"] == 10 and r["clients_late"] == 0 and 0.25 < r["sim_seconds"] < 0.35, r


def test_partial_work_on_the_wall_clock_sends_the_epochs_done_before_the_deadline(tmp_path):
    """Clients 0 and 2 (both on rank 1) run 40x slower. With partial work every client stops after
    the epochs that fit before the cutoff (a tenth of the deadline before it) and arrives in time;
    without, the slow ones are late.

    The margins come from the configuration, not from the host being fast: an epoch is one batch
    (the whole shard), so a slow client's epoch is 40 batches, and the cutoff's margin of
    ``PARTIAL_WORK_MARGIN * deadline_s`` seconds must absorb one such epoch mispredicted (the
    cutoff judges the next epoch by the last) plus client 2's single epoch after client 0 used up
    the rank's time. Even at 5 ms a batch on a loaded host that is 2 * 40 * 5 ms = 0.4 s, under
    the 0.6 s margin.
    """
    from fedhpc.clock import PARTIAL_WORK_MARGIN

    deadline, slow = 6.0, 40
    assert 2 * slow * 0.005 < PARTIAL_WORK_MARGIN * deadline
    sets = ["rounds=2", "clients.total=4", "clients.per_round=4", "data.partition=iid", "local.batch_size=512",
            "profiles.slow_clients=[0, 2]", f"stragglers.deadline_s={deadline}"]
    # without partial work: 5 epochs of a client slowed a million times never end (CLOSE interrupts the sleep)
    fedhpc_run(3, tmp_path / "drop", *sets, "local.epochs=5", "profiles.slow_factor=1e6")
    # with it: 10^6 epochs would take minutes even for the fast clients, who stop at the cutoff too
    fedhpc_run(3, tmp_path / "partial", *sets, "local.epochs=1000000", f"profiles.slow_factor={slow}",
               "stragglers.partial_work=true")
    for r in metrics(tmp_path / "drop"):
        assert r["clients_reported"] == 2 and r["clients_late"] == 2, r
    for r in metrics(tmp_path / "partial"):
        assert r["clients_reported"] == 4 and r["clients_late"] == 0 and r["round_seconds"] < deadline, r


def test_failing_and_corrupt_clients_are_counted_not_fatal(out):
    proc = fedhpc_run(3, out, "rounds=3", "clients.total=10", "clients.per_round=10",
                      "faults.error_clients=[3]", "faults.corrupt_clients=[5]", "codec.name=int8")
    m = metrics(out)
    assert len(m) == 3
    for r in m:
        assert r["failures"] == {"error": 1, "corrupt": 1} and r["clients_reported"] == 8, r
    assert "checksum mismatch" in proc.stderr and "injected fault: client 3" in proc.stderr
    assert m[-1]["accuracy"] > m[0]["accuracy"] + 0.05  # the healthy clients still train the model


def test_dropouts_are_counted_and_the_run_completes(out):
    fedhpc_run(3, out, "rounds=5", "clients.total=10", "clients.per_round=10", "faults.dropout_prob=0.2")
    m = metrics(out)
    assert len(m) == 5
    for r in m:
        assert r["clients_reported"] + r["clients_failed"] == 10 and r["clients_late"] == 0, r
        assert r["clients_failed"] == r["failures"].get("dropout", 0)
    assert 3 <= sum(r["clients_failed"] for r in m) <= 20  # about 20% of 50 selections


def test_a_crashing_trainer_rank_aborts_the_job_with_a_message(out):
    proc = fedhpc_run(3, out, "rounds=3", "faults.crash_ranks=[2]", check=False, timeout=120)
    assert proc.returncode != 0
    assert "rank 2 failed" in proc.stderr and "injected fault: trainer rank 2" in proc.stderr


def test_bad_config_is_refused_before_anything_runs_and_said_once(out):
    proc = fedhpc_run(4, out, "local.lrr=0.1", check=False, timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("unknown config key 'local.lrr'") == 1, proc.stderr
    assert "fedhpc: error (every rank): unknown config key 'local.lrr'" in proc.stderr
    assert not (out / "metrics.jsonl").exists()


def test_a_setup_error_found_on_every_rank_is_printed_once(out, tmp_path):
    proc = fedhpc_run(3, out, "data.name=cifar10", f"data.root={tmp_path}", "model.name=cnn-cifar", check=False,
                      timeout=120)
    assert proc.returncode == 2 and proc.stderr.count("fedhpc: error") == 1, proc.stderr
    assert "every rank" in proc.stderr and "Traceback" not in proc.stderr


def test_gateway_files_and_address_that_cannot_be_used_are_config_errors(out, tmp_path):
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("w1 " + "t" * 32 + "\n")
    gw = ["gateway.enabled=true", f"gateway.token_file='{tokens}'", "clients.per_round=4"]
    cases = [([f"gateway.tls_cert='{tmp_path}/none.pem'", f"gateway.tls_key='{tmp_path}/none.key'"],
              "config key 'gateway.tls_key': cannot read"),
             ([f"gateway.tls_cert='{tokens}'", f"gateway.tls_key='{tokens}'"], "is not a PEM file"),
             ]
    with socket.socket() as taken:  # a port another process listens on
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cases.append(([f"gateway.listen='127.0.0.1:{port}'"], f"'gateway.listen': cannot listen on 127.0.0.1:{port}"))
        for sets, message in cases:
            proc = fedhpc_run(3, out, *gw, *sets, check=False, timeout=120)
            assert proc.returncode == 2 and proc.stderr.count(message) == 1, proc.stderr[-3000:]
            assert "Traceback" not in proc.stderr


def test_federated_dropout_sends_sub_models_and_still_learns(out):
    fedhpc_run(3, out, "fed_dropout.rate=0.5", "model.hidden=[128]")
    m = metrics(out)
    full_bytes = 4 * (64 * 128 + 128 + 128 * 10 + 10)
    for r in m:
        # half of the hidden units: about half of the model up, per client ...
        assert r["bytes_up"] < 0.6 * full_bytes * r["clients_reported"] + 200 * r["clients_reported"], r
        # ... while down, what is really sent: the broadcast of the whole model to each of the 2 other ranks
        assert r["bytes_down"] == 2 * full_bytes, r
    assert m[-1]["accuracy"] >= 0.85


def test_adaptive_selection_shortens_rounds_with_heterogeneous_clients(tmp_path):
    sets = ["rounds=12", "clock=simulated", "profiles.speed_sigma=1.0", "clients.per_round=5", "local.epochs=1"]
    fedhpc_run(3, tmp_path / "random", *sets)
    fedhpc_run(3, tmp_path / "adaptive", *sets, "selection.name=adaptive")
    t_random = sum(r["sim_seconds"] for r in metrics(tmp_path / "random"))
    t_adaptive = sum(r["sim_seconds"] for r in metrics(tmp_path / "adaptive"))
    assert t_adaptive < 0.8 * t_random, (t_adaptive, t_random)
    # the decisions and their reasons are in the run log
    assert "selection:" in (tmp_path / "adaptive" / "run.log").read_text()


def test_a_run_whose_clients_all_fail_stops_and_keeps_the_last_good_checkpoint(out):
    proc = fedhpc_run(3, out, "rounds=6", "clients.total=4", "clients.per_round=4", "data.partition=iid",
                      "faults.error_clients=[0, 1, 2, 3]", "guard.idle_rounds=2", "checkpoint.every=1",
                      check=False, timeout=120)
    assert proc.returncode == 4, proc.stderr[-3000:]
    assert proc.stderr.count("no client contributed an update for 2 rounds in a row") == 1
    assert [p.name for p in (out / "checkpoints").glob("ckpt-*.h5")] == ["ckpt-000001.h5"]
    assert [r["clients_failed"] for r in metrics(out)] == [4, 4]
    assert not (out / "final_weights.npy").exists()


def rank_pid(root: int, rank: int) -> int:
    """The pid of MPI rank ``rank`` among the descendants of process ``root`` (MPICH sets PMI_RANK)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            pid, ppid = int(stat.parent.name), int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(pid)
    todo, found = [root], []
    while todo:
        for child in children.get(todo.pop(), []):
            todo.append(child)
            try:
                env = (Path("/proc") / str(child) / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"PMI_RANK={rank}".encode() in env:
                found.append(child)
    assert len(found) == 1, found
    return found[0]


def test_a_stopped_trainer_rank_ends_the_job_within_its_deadlines(tmp_path):
    """SIGSTOP a trainer rank between rounds: the next round's broadcast or accounting runs into
    its deadline and rank 0 aborts the job with a message, within timeout_s + close_grace_s of
    the round's start (twice that as a bound, plus start-up and teardown slack), never hanging."""
    timeout, grace = 4.0, 2.0
    out = tmp_path / "run"
    cmd = [MPIEXEC, "-n", "3", sys.executable, "-m", "mpi4py", "-m", "fedhpc", "run", "--out", str(out),
           "--set", "rounds=100000", "--set", f"stragglers.timeout_s={timeout}",
           "--set", f"stragglers.close_grace_s={grace}"]
    job = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=mpi_env())
    pid = None
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").exists() or len((out / "metrics.jsonl").read_text().splitlines()) < 2:
            assert job.poll() is None and time.monotonic() < deadline, job.communicate()
            time.sleep(0.05)
        pid = rank_pid(job.pid, 2)
        os.kill(pid, signal.SIGSTOP)
        t0 = time.monotonic()
        _, err = job.communicate(timeout=120)
        elapsed = time.monotonic() - t0
    finally:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if job.poll() is None:
            job.kill()
    assert job.returncode != 0 and "a rank is stopped, hung or dead" in err, err[-3000:]
    assert elapsed < 2 * (timeout + grace) + 10, elapsed


def test_fedhpc_run_without_a_launcher_starts_itself_under_mpiexec(out):
    """A newcomer's `fedhpc run`: no mpiexec in front, yet a whole job, its status the job's."""
    plain = {k: v for k, v in mpi_env().items() if not k.startswith(("PMI_", "PMIX_", "OMPI_COMM_WORLD_"))}
    proc = subprocess.run([sys.executable, "-m", "fedhpc", "run", "--np", "3", "--out", str(out), "--set", "rounds=2"],
                          capture_output=True, text=True, timeout=180, env=plain)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.splitlines()[0].startswith("fedhpc run: not started by mpiexec or srun: running 3 ranks")
    assert len(metrics(out)) == 2 and "2 trainer ranks" in (out / "run.log").read_text()
    bad = subprocess.run([sys.executable, "-m", "fedhpc", "run", "--np", "3", "--out", str(out), "--set",
                          "local.lrr=1"], capture_output=True, text=True, timeout=120, env=plain)
    assert bad.returncode == 2 and bad.stderr.count("unknown config key 'local.lrr'") == 1, bad.stderr
    for args, env, message in ((["--np", "1"], {}, "needs at least 2 MPI ranks"),
                               ([], {"FEDHPC_MPIEXEC": "/nonexistent/mpiexec"}, "FEDHPC_MPIEXEC=/nonexistent")):
        proc = subprocess.run([sys.executable, "-m", "fedhpc", "run", *args, "--out", str(out)], capture_output=True,
                              text=True, timeout=60, env=plain | env)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    under = fedhpc_run(2, out, "--np=3", check=False, timeout=60)
    assert under.returncode == 2 and "--np is for a run started without mpiexec" in under.stderr
