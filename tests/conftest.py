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
import subprocess
import sys
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
