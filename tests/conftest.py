"""Shared helpers: launching real MPI jobs from pytest."""

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
