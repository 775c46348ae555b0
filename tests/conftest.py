"""Shared helpers: launching real MPI jobs from pytest; the test tiers.

Every test belongs to exactly one tier, by its marker (``make test-unit`` and
friends select them; collection fails for a test without one):

* ``unit``: in-process (real gRPC over loopback included), no MPI job: the whole tier runs in well under a minute;
* ``mpi``: the multi-rank unit tests of ``tests/mpi`` under a real ``mpiexec``;
* ``e2e``: real jobs: ``mpiexec ... fedhpc run``, gateways with worker processes, the benchmark scripts;
* ``slurm``: jobs on the real one-node SLURM cluster the tests start (``tests/slurm_cluster.py``).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

BIN = Path(sys.executable).parent
MPIEXEC = str(BIN / "mpiexec")


def mpi_env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def mpirun(nprocs: int, args: list[str], timeout: float = 300, **env) -> subprocess.CompletedProcess:
    """Run ``python -m mpi4py ARGS`` on ``nprocs`` real MPI ranks (a failing rank aborts the job)."""
    cmd = [MPIEXEC, "-n", str(nprocs), sys.executable, "-m", "mpi4py", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=mpi_env(**env))


def fedhpc_run(nprocs: int, out: Path, *sets: str, timeout: float = 300, check: bool = True,
               resume: bool = False) -> subprocess.CompletedProcess:
    """``mpiexec -n N python -m mpi4py -m fedhpc run --out OUT --set ...`` (``--resume OUT`` with ``resume``);
    a set starting with ``--`` is passed as an option."""
    args = ["-m", "fedhpc", "run", "--resume" if resume else "--out", str(out)]
    for s in sets:
        args += [s] if s.startswith("--") else ["--set", s]
    proc = mpirun(nprocs, args, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT\n{proc.stdout}\nSTDERR\n{proc.stderr[-6000:]}"
    return proc


def start_run(out: Path, sets: list[str]) -> subprocess.Popen:
    """``mpiexec -n 3 python -m fedhpc run --out OUT --set ...`` in the background, to be signalled."""
    cmd = [MPIEXEC, "-n", "3", sys.executable, "-m", "fedhpc", "run", "--out", str(out)]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=mpi_env())


def wait_until(proc: subprocess.Popen, ready, timeout: float = 120, nap: float = 0.05) -> None:
    """Poll ``ready()`` until it is true, while ``proc`` runs (its output if it ends or time runs out)."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(nap)


def started(out: Path) -> bool:
    """Whether the job in ``out`` registered its ranks (rank 2, the last of a 3-rank job, logged)."""
    return (out / "run.log").exists() and "rank 2 on" in (out / "run.log").read_text()


def lines_at_least(out: Path, n: int) -> bool:
    """Whether ``out/metrics.jsonl`` has ``n`` lines."""
    return (out / "metrics.jsonl").exists() and len((out / "metrics.jsonl").read_text().splitlines()) >= n


def signal_twice(proc: subprocess.Popen) -> float:
    """SIGUSR1, a check that the job goes on, a second SIGUSR1; return when the second was sent."""
    time.sleep(1.0)
    proc.send_signal(signal.SIGUSR1)
    time.sleep(1.0)
    assert proc.poll() is None  # one signal: the round (or step) goes on
    proc.send_signal(signal.SIGUSR1)
    return time.monotonic()


def metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def final_weights(out: Path) -> np.ndarray:
    return np.load(out / "final_weights.npy")


@pytest.fixture
def out(tmp_path):
    return tmp_path / "run"


TIERS = ("unit", "mpi", "e2e", "slurm")


def pytest_collection_modifyitems(config, items):
    """Refuse a test whose tier is missing or ambiguous, so the tiers stay true."""
    wrong = [f"{item.nodeid}: {tiers or 'no tier'}" for item in items
             if len(tiers := sorted({m.name for m in item.iter_markers() if m.name in TIERS})) != 1]
    if wrong:
        raise pytest.UsageError("every test needs exactly one of the markers " + ", ".join(TIERS) + ":\n  "
                                + "\n  ".join(wrong))
