"""Buffer transport between real ranks (run under mpiexec by tests/test_mpi_suite.py).

The launcher sets FEDHPC_MPI_CHUNK_BYTES=4096, so every transfer here of more
than 4 KiB exercises the chunked path.
"""

import numpy as np
from mpi4py import MPI

from fedhpc import env
from fedhpc.runtime.transport import Tag, bcast_array, isend_chunked, recv_update, wait_with_deadline
from fedhpc.update import BufferPool, Status, UpdateHeader, pack_update, unpack_update

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


def test_buffer_pool_hands_the_same_memory_back_only_after_reclaim():
    pool = BufferPool()
    a, b = pool.take(5000), pool.take(5000)
    assert a.nbytes == b.nbytes == 5000 and not np.shares_memory(a, b)  # both lent: distinct
    c = pool.take(100)
    pool.reclaim()
    again = [pool.take(5000), pool.take(5000), pool.take(8000)]  # 5000 and 8000 round up to the same 2 pages
    assert {x.ctypes.data for x in again[:2]} == {a.ctypes.data, b.ctypes.data}
    assert all(x.nbytes == n for x, n in zip(again, (5000, 5000, 8000)))
    assert not any(np.shares_memory(again[2], x) for x in (a, b, c))  # a third 2-page buffer: new
    assert all_ranks(pool.take(1).ctypes.data == c.ctypes.data)  # the 1-page one comes back for a smaller size


def test_updates_received_into_a_pool_reuse_its_memory_round_after_round():
    """Two rounds of chunked Updates into one pool: the second lands in the first's buffers, intact."""
    pool, ok, addresses = BufferPool(), True, []
    for rnd in range(2):
        if comm.rank == 0:
            st = MPI.Status()
            got = set()
            for _ in range(comm.size - 1):
                comm.Probe(source=MPI.ANY_SOURCE, tag=Tag.UPDATE, status=st)
                buf = recv_update(comm, st, max_bytes=1 << 20, timeout_s=30, pool=pool)
                head, body = unpack_update(buf)
                ok &= head.round == rnd and bytes(body) == bytes([rnd + head.client]) * 9000
                got.add(buf.ctypes.data)
            addresses.append(got)
            pool.reclaim()
        else:
            head = UpdateHeader(Status.OK, 7, rnd, comm.rank, 1, 0.5, 0.1, 0.2, 0)
            body = bytes([rnd + comm.rank]) * 9000
            wait_with_deadline(isend_chunked(comm, pack_update(head, body), 0, Tag.UPDATE), 30, "send")
        comm.Barrier()
    if comm.rank == 0:
        ok &= addresses[0] == addresses[1]
    assert all_ranks(ok)
