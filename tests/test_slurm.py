"""jobs/slurm and `fedhpc slurm`: rendering without SLURM, then real jobs on a one-node SLURM cluster
that this module starts (tests/slurm_cluster.py installs SLURM when it is missing). If the cluster
cannot be started, every cluster test fails with the reason: they never skip."""

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import fedhpc_run, final_weights, metrics
from fedhpc.errors import ConfigError
from fedhpc.launch import LaunchError, slurm
from slurm_cluster import ClusterError, SlurmCluster

ROOT = Path(__file__).resolve().parents[1]
JOBS = ROOT / "jobs"
# the default digits job with rounds of about 0.1 s: a few clients, one epoch, a small model, simulated time
FAST = ["clock=simulated", "clients.total=6", "clients.per_round=4", "local.epochs=1", "data.partition=iid",
        "model.name=logreg"]
SCRIPT_KINDS = {"cpu": {}, "gpu": {"gpus": True}, "hybrid": {"gateway": True}, "preemptible": {"preemptible": True}}


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run ``fedhpc ARGS`` in this process (the parser imports torch: seconds per subprocess);
    ``env`` replaces the environment the SLURM commands see. Returns (exit status, stdout, stderr)."""
    from fedhpc.cli import main

    def run(*args: str, env: dict | None = None) -> tuple[int, str, str]:
        capsys.readouterr()
        with monkeypatch.context() as m:
            if env is not None:
                for k in list(os.environ):
                    m.delenv(k)
                for k, v in env.items():
                    m.setenv(k, v)
            try:
                code = main(list(args))
            except SystemExit as exc:  # --help and argparse errors
                code = exc.code
        out, err = capsys.readouterr()
        return code, out, err

    return run


def lines_of(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def wait_until(ready, timeout: float, what: str, on_fail=lambda: "") -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert time.monotonic() < deadline, f"{what} within {timeout} s\n{on_fail()}"
        time.sleep(0.2)


# ---------------------------------------------------------------------------------------------------------------
# Without SLURM: the scripts and what `fedhpc slurm` renders

@pytest.mark.unit
@pytest.mark.parametrize("name", sorted(SCRIPT_KINDS))
def test_job_scripts_share_the_rendered_launch_code_and_document_every_knob(name):
    text = (JOBS / "slurm" / f"{name}.sbatch").read_text()
    head, marker, launch = text.partition(slurm.LAUNCH_MARKER)
    assert marker, f"{name}.sbatch lost its launch marker line"
    assert marker + launch == slurm.launch_code(**SCRIPT_KINDS[name]), \
        f"jobs/slurm/{name}.sbatch differs from `fedhpc slurm render`'s launch code: change both together"
    comments = "\n".join(line for line in head.splitlines() if line.startswith("#"))
    for knob in sorted(set(re.findall(r"\bFEDHPC_[A-Z_]+\b", text))):
        assert re.search(rf"#\s+{knob}\b", comments), f"{name}.sbatch uses {knob} without explaining it"
    assert "srun" in launch and '--mpi="$FEDHPC_MPI"' in launch
    assert subprocess.run(["bash", "-n", str(JOBS / "slurm" / f"{name}.sbatch")]).returncode == 0
    assert os.access(JOBS / "slurm" / f"{name}.sbatch", os.X_OK)


@pytest.mark.unit
def test_render_turns_options_into_directives_and_knobs(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text("rounds = 7\n")
    req = slurm.SlurmRequest(config=config, out=tmp_path / "out", nodes=2, ntasks=9, cpus_per_task=4,
                             time="02:00:00", partition="big", account="proj", preemptible=True, overcommit=True,
                             sets=["codec.name=topk", 'clock="simulated"'], venv="/opt/venv",
                             sbatch_options=["--qos=high"])
    text = slurm.render(req)
    directives = re.findall(r"^#SBATCH (\S+)$", text, re.M)
    for d in ("--nodes=2", "--ntasks=9", "--cpus-per-task=4", "--time=02:00:00", "--partition=big", "--account=proj",
              "--requeue", "--signal=B:USR1@120", "--open-mode=append", "--overcommit", "--qos=high",
              f"--output={tmp_path}/out/slurm-%j.out", f"--comment=fedhpc-out:{tmp_path}/out"):
        assert d in directives, d
    assert f'FEDHPC_CONFIG="{config}"' in text and 'FEDHPC_VENV="/opt/venv"' in text
    assert 'FEDHPC_SET="codec.name=topk clock=\\"simulated\\""' in text  # quoted for bash
    assert text.endswith(slurm.launch_code(preemptible=True))
    script = tmp_path / "job.sbatch"
    script.write_text(text)
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    assert slurm.render(req) == text  # deterministic

    per_job = slurm.render(slurm.SlurmRequest(config=None, out=tmp_path / "runs" / "slurm-%j"))
    assert f"#SBATCH --output={tmp_path}/runs/slurm-%j.out\n" in per_job  # OUT does not exist yet when SLURM opens it
    assert f'FEDHPC_OUT="{tmp_path}/runs/slurm-${{SLURM_JOB_ID}}"\n' in per_job
    assert f"#SBATCH --comment=fedhpc-out:{tmp_path}/runs/slurm-%j\n" in per_job

    gpu = slurm.render(slurm.SlurmRequest(config=None, out=tmp_path, nodes=2, gpus_per_node=4, gateway_port=6000))
    assert "#SBATCH --ntasks=9\n" in gpu and "#SBATCH --gpus-per-node=4\n" in gpu and "#SBATCH --exclusive\n" in gpu
    assert 'FEDHPC_GATEWAY_PORT="6000"' in gpu and gpu.endswith(slurm.launch_code(gpus=True, gateway=True))
    assert "--distribution=block" not in gpu  # the GPU host list already ends on the last node


@pytest.mark.parametrize("change, error", [
    ({"ntasks": 1}, "--ntasks must be >= 2"),
    ({"gpus_per_node": 2, "ntasks": 5}, "does not fit --gpus 2"),
    ({"sets": ["data.root=/my data"]}, "cannot contain spaces"),
    ({"nodes": 0}, "--nodes must be >= 1"),
])
@pytest.mark.unit
def test_render_refuses_what_cannot_run(tmp_path, change, error):
    with pytest.raises(LaunchError, match=error):
        slurm.render(slurm.SlurmRequest(config=None, out=tmp_path, **change))


@pytest.mark.unit
def test_render_checks_the_config_before_anything_is_queued(tmp_path, cli):
    with pytest.raises(ConfigError, match="local.lrr"):
        slurm.render(slurm.SlurmRequest(config=None, out=tmp_path, sets=["local.lrr=0.1"]))
    code, _, err = cli("slurm", "render", str(tmp_path / "missing.toml"))
    assert code == 2 and "fedhpc slurm render: error: config file" in err


@pytest.mark.unit
def test_gpu_layout_puts_rank_0_on_the_cpu_and_one_rank_per_gpu(tmp_path):
    """The host list and the per-rank GPU choice of gpu.sbatch, run with a stand-in scontrol."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\nprintf 'n1\\nn2\\n'\n")
    (bin_dir / "scontrol").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", FEDHPC_GPUS_PER_NODE="2",
               FEDHPC_OUT=str(tmp_path), SLURM_JOB_ID="7", SLURM_JOB_NODELIST="n[1-2]")
    script = "srun_args=()\n" + slurm._GPU + 'printf "%s\\n" "${srun_args[@]}"\n'
    out = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "hosts-7").read_text().split() == ["n1", "n1", "n1", "n2", "n2"]
    assert out.stdout.split() == ["--distribution=arbitrary", "--ntasks=5", "--gpu-bind=none"]

    rank_setup = re.search(r"launcher=\(bash -c '(.*)' fedhpc-rank\)", slurm._GPU, re.S).group(1)

    def gpu_of(procid, nodeid, localid, visible="0,1"):
        env = dict(os.environ, SLURM_PROCID=str(procid), SLURM_NODEID=str(nodeid), SLURM_LOCALID=str(localid),
                   CUDA_VISIBLE_DEVICES=visible)
        cmd = ["bash", "-c", rank_setup, "fedhpc-rank", "sh", "-c", 'echo "[$CUDA_VISIBLE_DEVICES]"']
        return subprocess.run(cmd, capture_output=True, text=True, env=env).stdout.strip()

    assert gpu_of(0, 0, 0) == "[]"  # rank 0: no GPU
    assert [gpu_of(1, 0, 1), gpu_of(2, 0, 2)] == ["[0]", "[1]"]  # node 0 after rank 0
    assert [gpu_of(3, 1, 0), gpu_of(4, 1, 1)] == ["[0]", "[1]"]
    assert gpu_of(4, 1, 1, visible="4,5") == "[5]"  # an index into the GPUs SLURM gave the node


@pytest.mark.unit
def test_add_workers_gives_each_task_its_own_slot_shard_and_credentials(tmp_path, cli):
    from fedhpc.gateway import certs

    run = tmp_path / "run"
    run.mkdir()
    (run / "gateway.address").write_text("node07:50051\n")
    (run / "config.toml").write_text("[clients]\ntotal = 10\nper_round = 5\n[gateway]\nclients = 3\n")
    pki = tmp_path / "pki"
    certs.init(pki, ["node07"])
    certs.issue_slots(pki, "hpc", 3)
    code, text, err = cli("slurm", "add-workers", "--run", str(run), "--count", "3", "--pki", str(pki), "--worker",
                          "hpc", "--after", "41", "--dry-run")
    assert code == 0, err
    for d in ("--ntasks=3", "--dependency=after:41", "--job-name=fedhpc-workers"):
        assert f"#SBATCH {d}\n" in text
    assert "FEDHPC_FIRST_CLIENT=10\n" in text  # remote slots follow the 10 MPI clients
    assert f'FEDHPC_PKI="{pki}"\n' in text and 'FEDHPC_WORKER="hpc"\n' in text
    assert "--client-id $((FEDHPC_FIRST_CLIENT + SLURM_PROCID))" in text
    assert '--shard "$SLURM_PROCID/$SLURM_NTASKS"' in text
    assert '--token-file "$FEDHPC_PKI/$FEDHPC_WORKER-$SLURM_PROCID.token"' in text  # task K's own token ...
    assert '--cert "$FEDHPC_PKI/$FEDHPC_WORKER-$SLURM_PROCID.pem"' in text  # ... and certificate
    assert f'"--connect" "node07:50051" "--data" "digits" "--ca" "{pki}/ca.pem"' in text
    (tmp_path / "w.sbatch").write_text(text)
    assert subprocess.run(["bash", "-n", str(tmp_path / "w.sbatch")]).returncode == 0

    token = pki / "hpc-0.token"
    code, text, err = cli("slurm", "add-workers", "--run", str(run), "--token-file", str(token), "--dry-run")
    assert code == 0 and f'"--token-file" "{token}"' in text, err  # one worker: its own token file will do
    for args, error in ((["--run", str(run), "--count", "4", "--pki", str(pki), "--worker", "hpc"], "slots 10..12"),
                        (["--run", str(run), "--count", "2", "--token-file", str(token)],
                         "2 workers cannot share one --token-file"),
                        (["--run", str(run), "--count", "3", "--pki", str(pki), "--worker", "cloud"],
                         "cloud-0.token"),
                        (["--run", str(tmp_path), "--token-file", str(token)], "gateway.address does not exist"),
                        (["--connect", "node07", "--token-file", str(token)], "--connect must be HOST:PORT"),
                        (["--run", str(run)], "give one worker's --token-file, or --pki")):
        code, _, err = cli("slurm", "add-workers", *args, "--dry-run")
        assert code == 2 and error in err, err
    code, _, err = cli("slurm", "add-workers", "--run", str(run), "--token-file", str(tmp_path / "nope"), "--dry-run")
    assert code == 2 and "no such file" in err


@pytest.mark.unit
def test_missing_or_hung_slurm_commands_say_what_to_do(tmp_path, cli):
    env = dict(os.environ, PATH=str(tmp_path))  # no SLURM client commands at all
    for args in (["status", "12"], ["cancel", "12"], ["submit", "--out", str(tmp_path / "o")]):
        code, _, err = cli("slurm", *args, env=env)
        assert code == 2 and "is not on PATH" in err and "apt-get install slurm-client" in err, err
    with pytest.raises(LaunchError, match="did not answer within 0 s.*scontrol ping"):
        slurm.run_tool(["sleep", "5"], timeout=0.2)


@pytest.mark.unit
def test_every_launch_command_has_help(cli):
    for args in (["slurm"], ["slurm", "render"], ["slurm", "submit"], ["slurm", "status"], ["slurm", "cancel"],
                 ["slurm", "add-workers"], ["k8s"], ["k8s", "render"], ["local"], ["local", "run"]):
        code, out, _ = cli(*args, "--help")
        assert code == 0 and "usage: fedhpc" in out, args


# ---------------------------------------------------------------------------------------------------------------
# A workstation run

@pytest.mark.e2e
def test_local_mpirun_script_runs_a_job(tmp_path, cli):
    out = tmp_path / "run"
    env = dict(os.environ, NP="2", FEDHPC_VENV=sys.prefix, FEDHPC_SET=" ".join(FAST + ["rounds=2"]))
    proc = subprocess.run([str(JOBS / "local" / "mpirun.sh"), "--out", str(out)], capture_output=True, text=True,
                          env=env, timeout=180, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [m["round"] for m in metrics(out)] == [1, 2] and final_weights(out).dtype == np.float32
    code, dry, _ = cli("local", "run", "-n", "3", "--out", str(out), "--set", "rounds=2", "--dry-run")
    assert code == 0 and dry.split()[1:] == ["-n", "3", sys.executable, "-m", "mpi4py", "-m", "fedhpc", "run",
                                             "--out", str(out), "--set", "rounds=2"]
    assert dry.split()[0] == str(Path(sys.executable).parent / "mpiexec")  # the environment's own


# ---------------------------------------------------------------------------------------------------------------
# On a real SLURM

@pytest.fixture(scope="module")
def running_cluster(tmp_path_factory):
    c = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        c.start()
    except ClusterError as exc:
        pytest.fail(f"the SLURM tests need a one-node SLURM cluster and it could not be started: {exc}",
                    pytrace=False)
    yield c
    c.stop()


@pytest.fixture
def cluster(running_cluster):
    """The cluster, emptied after the test: a job a failed test leaves behind would hold the CPUs
    that the next test's job needs."""
    cluster = running_cluster
    yield cluster
    jobs = cluster.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
    if jobs:
        cluster.run("scancel", *jobs, check=False)
        wait_until(lambda: not cluster.run("squeue", "-h", "-o", "%i", check=False).stdout.strip(), 30,
                   "the queue to empty after the test")


def job_env(cluster, **knobs) -> dict:
    """The cluster's client environment with job-script knobs; sbatch hands it to the job."""
    env = dict(cluster.env, FEDHPC_VENV=sys.prefix, OMP_NUM_THREADS="1")
    env.update(knobs)
    return env


def sbatch(cluster, script: Path, workdir: Path, *options: str, **knobs) -> str:
    cmd = ["sbatch", "--parsable", f"--chdir={workdir}", f"--output={workdir}/slurm-%j.out", *options, str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=job_env(cluster, **knobs), timeout=30)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip().split(";")[0]


def release(cluster, job_id: str) -> None:
    """Start a requeued job early: SLURM holds one for about two minutes (BeginTime) after a requeue.
    Not at once: slurmd refuses a launch whose credential dates from the same second as the
    revocation of the killed incarnation's ("Job credential revoked") and the job fails."""
    wait_until(lambda: cluster.job(job_id).get("Reason") == "BeginTime", 60, f"job {job_id} pending after requeue",
               lambda: cluster.job(job_id))
    time.sleep(3)
    cluster.run("scontrol", "update", f"JobId={job_id}", "StartTime=now")


@pytest.mark.slurm
def test_cpu_sbatch_runs_to_completed_with_its_metrics(cluster, tmp_path, cli):
    job = sbatch(cluster, JOBS / "slurm" / "cpu.sbatch", tmp_path, "--ntasks=2",
                 FEDHPC_SET=" ".join(FAST + ["rounds=3"]))
    info = cluster.wait_for(job, slurm.ENDED, timeout=150)
    log = (tmp_path / f"slurm-{job}.out").read_text()
    assert info["JobState"] == "COMPLETED", log[-4000:]
    out = tmp_path / "runs" / f"slurm-{job}"  # the script's default run directory
    assert [m["round"] for m in metrics(out)] == [1, 2, 3] and (out / "final_weights.npy").exists()
    assert "1 trainer ranks" in log  # one 2-rank MPI world (a 1-rank job would refuse to run)
    code, status, err = cli("slurm", "status", job, env=cluster.env)  # finds runs/slurm-JOBID by itself
    assert code == 0, err
    assert f"job {job}: COMPLETED" in status and "round 3 of 3" in status and "final_weights.npy written" in status


@pytest.mark.slurm
def test_preemptible_job_signalled_and_requeued_ends_with_the_uninterrupted_model(cluster, tmp_path):
    sets = FAST + ["rounds=250", "seed=3"]
    straight = tmp_path / "straight"
    failed = []

    def uninterrupted():  # under plain mpiexec, meanwhile
        try:
            fedhpc_run(2, straight, *sets, timeout=240)
        except BaseException as exc:  # reported below, in the test's own thread
            failed.append(exc)

    reference = threading.Thread(target=uninterrupted, daemon=True)
    reference.start()

    out = tmp_path / "run"
    job = sbatch(cluster, JOBS / "slurm" / "preemptible.sbatch", tmp_path, "--ntasks=2",
                 FEDHPC_SET=" ".join(sets), FEDHPC_OUT=str(out))
    log = tmp_path / f"slurm-{job}.out"

    def tail():
        return log.read_text()[-4000:] if log.exists() else "(no job output yet)"

    # 1) what the time limit does: USR1 to the batch shell, which forwards it; the job checkpoints and requeues
    wait_until(lambda: lines_of(out / "metrics.jsonl") >= 3, 120, "3 rounds", tail)
    cluster.run("scancel", "--signal=USR1", "--batch", job)
    release(cluster, job)
    assert "requeueing to resume" in log.read_text()
    stopped = lines_of(out / "metrics.jsonl")
    assert 3 <= stopped < 250

    # 2) what an administrator or a preemption does: requeue the running job from outside
    wait_until(lambda: "resuming from the newest checkpoint" in log.read_text()
               and lines_of(out / "metrics.jsonl") >= stopped + 3, 120, "rounds after the first restart", tail)
    cluster.run("scontrol", "requeue", job)
    release(cluster, job)

    info = cluster.wait_for(job, slurm.ENDED, timeout=150)
    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "2", tail()
    assert log.read_text().count("resuming from the newest checkpoint") == 2
    assert [m["round"] for m in metrics(out)] == list(range(1, 251))
    reference.join(timeout=240)
    assert not failed, failed
    assert final_weights(out).tobytes() == final_weights(straight).tobytes()


@pytest.mark.slurm
def test_submit_status_cancel(cluster, tmp_path, cli):
    config = tmp_path / "run.toml"
    config.write_text("rounds = 100000\nclock = \"simulated\"\n")
    code, job, err = cli("slurm", "submit", str(config), "--ntasks", "2", "--overcommit",
                         "--out", str(tmp_path / "runs" / "exp-%j"), *[a for s in FAST for a in ("--set", s)],
                         env=job_env(cluster))
    assert code == 0, err
    job = job.strip()
    out, log = tmp_path / "runs" / f"exp-{job}", tmp_path / "runs" / f"exp-{job}.out"
    assert job.isdigit() and f"fedhpc slurm status {job}" in err and str(log) in err
    assert (out / "job.sbatch").read_text().startswith("#!/bin/bash")
    wait_until(lambda: lines_of(out / "metrics.jsonl") >= 2, 120, "rounds of the submitted job",
               lambda: log.read_text() if log.exists() else "")

    code, running, err = cli("slurm", "status", job, "--json", env=cluster.env)
    assert code == 0, err
    info = json.loads(running)
    assert info["state"] == "RUNNING" and info["restarts"] == 0 and info["reason"] == "None"
    assert info["progress"]["out"] == str(out) and info["progress"]["rounds"] == 100000
    assert info["progress"]["round"] >= 2 and info["progress"]["finished"] is False
    _, text, _ = cli("slurm", "status", job, env=cluster.env)
    assert f"job {job}: RUNNING" in text and "of 100000" in text and "elapsed 00:00:" in text

    code, out_text, err = cli("slurm", "cancel", job, env=cluster.env)
    assert code == 0 and f"cancelled job {job}" in out_text, err
    cluster.wait_for(job, {"CANCELLED"}, timeout=30)
    code, done, _ = cli("slurm", "status", job, env=cluster.env)
    assert code == 0 and f"job {job}: CANCELLED" in done and "run progress: round" in done

    # SLURM forgets finished jobs (MinJobAge) and has no accounting here: still a clear answer
    code, forgotten, _ = cli("slurm", "status", "999999", "--out", str(out), env=cluster.env)
    assert code == 0 and "UNKNOWN" in forgotten and "run progress: round" in forgotten
    code, unknown, _ = cli("slurm", "status", "999999", env=cluster.env)
    assert code == 1 and "pass --out OUT" in unknown
    code, again, _ = cli("slurm", "cancel", job, env=cluster.env)
    assert code == 0 and "already ended: CANCELLED" in again
    code, _, err = cli("slurm", "cancel", "999999", env=cluster.env)
    assert code == 2 and "SLURM does not know job 999999" in err
