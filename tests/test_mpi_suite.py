"""Run the multi-rank unit tests in tests/mpi/ under a real mpiexec.

As in mpi4py's own test suite, they run as ``python -m mpi4py -m pytest`` so a
failing rank aborts the job instead of leaving the others hanging, and each
test reduces its verdict across ranks.
"""

from pathlib import Path

import pytest

from conftest import mpirun

pytestmark = pytest.mark.mpi

MPI_DIR = Path(__file__).with_name("mpi")


@pytest.mark.parametrize("nprocs", [2, 4])
def test_mpi_unit_tests(nprocs):
    proc = mpirun(nprocs, ["-m", "pytest", "-q", "-p", "no:cacheprovider", str(MPI_DIR)], timeout=300,
                  FEDHPC_MPI_CHUNK_BYTES="4096")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}"
    assert " passed" in proc.stdout and "failed" not in proc.stdout
