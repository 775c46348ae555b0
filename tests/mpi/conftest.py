"""Fixtures of the multi-rank tests (run under mpiexec by tests/test_mpi_suite.py).

As in mpi4py's own suite, every test runs on a duplicate of COMM_SELF and of
COMM_WORLD, its own communicator, so no message of one test can match a
receive of another; and every verdict is reduced across the ranks
(``agree`` in the test modules) before any rank can fail the test.
"""

import pytest
from mpi4py import MPI


@pytest.fixture(params=["self", "world"])
def comm(request):
    base = MPI.COMM_SELF if request.param == "self" else MPI.COMM_WORLD
    dup = base.Dup()
    yield dup
    dup.Free()
