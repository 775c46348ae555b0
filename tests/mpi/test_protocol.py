"""Buffer transport between real ranks (run under mpiexec by tests/test_mpi_suite.py).

The launcher sets FEDHPC_MPI_CHUNK_BYTES=4096, so every transfer here of more
than 4 KiB exercises the chunked path.
"""

import numpy as np
from mpi4py import MPI

from fedhpc import env
from fedhpc.runtime.protocol import (
    Status, Tag, UpdateHeader, bcast_array, isend_chunked, pack_update, recv_update, unpack_update,
    wait_with_deadline,
)

comm = MPI.COMM_WORLD


def all_ranks(ok: bool) -> bool:
    return comm.allreduce(bool(ok), op=MPI.LAND)


def test_chunk_size_comes_from_the_environment():
    assert all_ranks(env.MPI_CHUNK_BYTES == 4096)


def test_bcast_array_chunked_matches_root():
    n = 10_000 + 3  # 40 KB: ten chunks and a short one
    arr = np.arange(n, dtype=np.float32) * 0.5 if comm.rank == 0 else np.zeros(n, np.float32)
    bcast_array(comm, arr)
    assert all_ranks(np.array_equal(arr, np.arange(n, dtype=np.float32) * 0.5))


def test_updates_of_many_chunks_arrive_intact_from_every_rank():
    ok = True
    if comm.rank == 0:
        st = MPI.Status()
        seen = {}
        for _ in range(comm.size - 1):
            comm.Probe(source=MPI.ANY_SOURCE, tag=Tag.UPDATE, status=st)
            buf = recv_update(comm, st, max_bytes=1 << 20, timeout_s=30)
            head, body = unpack_update(buf)
            seen[head.client] = bytes(body)
        for r in range(1, comm.size):
            ok &= seen.get(r) == bytes([r % 256]) * (20_000 + r)
    else:
        body = bytes([comm.rank % 256]) * (20_000 + comm.rank)
        head = UpdateHeader(Status.OK, 7, 0, comm.rank, 1, 0.5, 0.1, 0.2, 0)
        wait_with_deadline(isend_chunked(comm, pack_update(head, body), 0, Tag.UPDATE), 30, "send")
    assert all_ranks(ok)


def test_oversized_update_is_drained_and_refused():
    ok = True
    if comm.rank == 0:
        st = MPI.Status()
        refused = 0
        for _ in range(comm.size - 1):
            comm.Probe(source=MPI.ANY_SOURCE, tag=Tag.UPDATE, status=st)
            try:
                recv_update(comm, st, max_bytes=10_000, timeout_s=30)
            except ValueError as exc:
                refused += "more than the allowed" in str(exc)
        ok = refused == comm.size - 1
        # nothing left behind: the chunks were all drained
        ok &= not comm.Iprobe(source=MPI.ANY_SOURCE, tag=Tag.UPDATE)
    else:
        head = UpdateHeader(Status.OK, 7, 0, comm.rank, 1, 0.5, 0.1, 0.2, 0)
        wait_with_deadline(isend_chunked(comm, pack_update(head, b"x" * 50_000), 0, Tag.UPDATE), 30, "send")
    comm.Barrier()
    assert all_ranks(ok)
