"""Buffer transport between real ranks (run under mpiexec by tests/test_mpi_suite.py).

The launcher sets FEDHPC_MPI_CHUNK_BYTES=4096, so every transfer here of more
than 4 KiB exercises the chunked path. Each test gets its own duplicated
communicator (``comm``, over COMM_SELF and COMM_WORLD) and reduces its
verdict with :func:`agree`; every wait has a deadline.
"""

import numpy as np
import pytest
from mpi4py import MPI

from fedhpc import env
from fedhpc.runtime.transport import (
    Tag, bcast_array, bcast_object, isend_chunked, poll, recv_update, wait_with_deadline,
)
from fedhpc.update import BufferPool, Status, UpdateHeader, pack_update, unpack_update

pytestmark = pytest.mark.mpi
WAIT_S = 30


def agree(comm, ok: bool, what: str) -> None:
    """Fail on every rank of ``comm`` unless ``ok`` holds on all of them."""
    failed = comm.allgather(not ok)
    assert not any(failed), f"{what}: failed on rank(s) {[r for r, f in enumerate(failed) if f]}"


def probe(comm, st: MPI.Status) -> None:
    """Wait (with a deadline) for an Update from any rank; ``st`` describes it."""
    poll(lambda: comm.Iprobe(source=MPI.ANY_SOURCE, tag=Tag.UPDATE, status=st), WAIT_S, "an Update")


def test_chunk_size_comes_from_the_environment(comm):
    agree(comm, env.MPI_CHUNK_BYTES == 4096, "FEDHPC_MPI_CHUNK_BYTES")


def test_bcast_array_chunked_matches_root(comm):
    n = 10_000 + 3  # 40 KB: ten chunks and a short one
    arr = np.arange(n, dtype=np.float32) * 0.5 if comm.rank == 0 else np.zeros(n, np.float32)
    bcast_array(comm, arr, WAIT_S, "the model")
    agree(comm, np.array_equal(arr, np.arange(n, dtype=np.float32) * 0.5), "broadcast model")


def test_bcast_object_carries_typed_messages_with_a_deadline(comm):
    from fedhpc.runtime.messages import RoundTask

    task = RoundTask(7, {1: (3, 4), 2: (5,)}, 0.01) if comm.rank == 0 else None
    seen = []
    got = bcast_object(comm, task, WAIT_S, "a task", while_waiting=lambda: seen.append(1))
    agree(comm, got == RoundTask(7, {1: (3, 4), 2: (5,)}, 0.01), "the task every rank received")


def test_updates_of_many_chunks_arrive_intact_from_every_rank(comm):
    ok = True
    if comm.rank == 0:
        st = MPI.Status()
        seen = {}
        for _ in range(comm.size - 1):
            probe(comm, st)
            buf = recv_update(comm, st, max_bytes=1 << 20, timeout_s=WAIT_S)
            head, body = unpack_update(buf)
            seen[head.client] = bytes(body)
        for r in range(1, comm.size):
            ok &= seen.get(r) == bytes([r % 256]) * (20_000 + r)
    else:
        body = bytes([comm.rank % 256]) * (20_000 + comm.rank)
        head = UpdateHeader(Status.OK, 7, 0, comm.rank, 1, 0.5, 0.1, 0.2, 0)
        wait_with_deadline(isend_chunked(comm, pack_update(head, body), 0, Tag.UPDATE), WAIT_S, "send")
    agree(comm, ok, "Updates of many chunks")


def test_oversized_update_is_drained_and_refused(comm):
    ok = True
    if comm.rank == 0:
        st = MPI.Status()
        refused = 0
        for _ in range(comm.size - 1):
            probe(comm, st)
            try:
                recv_update(comm, st, max_bytes=10_000, timeout_s=WAIT_S)
            except ValueError as exc:
                refused += "more than the allowed" in str(exc)
        ok = refused == comm.size - 1
        # nothing left behind: the chunks were all drained
        ok &= not comm.Iprobe(source=MPI.ANY_SOURCE, tag=Tag.UPDATE)
    else:
        head = UpdateHeader(Status.OK, 7, 0, comm.rank, 1, 0.5, 0.1, 0.2, 0)
        wait_with_deadline(isend_chunked(comm, pack_update(head, b"x" * 50_000), 0, Tag.UPDATE), WAIT_S, "send")
    comm.Barrier()
    agree(comm, ok, "oversized Updates refused and drained")


def test_buffer_pool_hands_the_same_memory_back_only_after_reclaim(comm):
    pool = BufferPool()
    a, b = pool.take(5000), pool.take(5000)
    ok = a.nbytes == b.nbytes == 5000 and not np.shares_memory(a, b)  # both lent: distinct
    c = pool.take(100)
    pool.reclaim()
    again = [pool.take(5000), pool.take(5000), pool.take(8000)]  # 5000 and 8000 round up to the same 2 pages
    ok &= {x.ctypes.data for x in again[:2]} == {a.ctypes.data, b.ctypes.data}
    ok &= all(x.nbytes == n for x, n in zip(again, (5000, 5000, 8000)))
    ok &= not any(np.shares_memory(again[2], x) for x in (a, b, c))  # a third 2-page buffer: new
    ok &= pool.take(1).ctypes.data == c.ctypes.data  # the 1-page one comes back for a smaller size
    agree(comm, ok, "buffer pool reuse")


def test_updates_received_into_a_pool_reuse_its_memory_round_after_round(comm):
    """Two rounds of chunked Updates into one pool: the second lands in the first's buffers, intact."""
    pool, ok, addresses = BufferPool(), True, []
    for rnd in range(2):
        if comm.rank == 0:
            st = MPI.Status()
            got = set()
            for _ in range(comm.size - 1):
                probe(comm, st)
                buf = recv_update(comm, st, max_bytes=1 << 20, timeout_s=WAIT_S, pool=pool)
                head, body = unpack_update(buf)
                ok &= head.round == rnd and bytes(body) == bytes([rnd + head.client]) * 9000
                got.add(buf.ctypes.data)
            addresses.append(got)
            pool.reclaim()
        else:
            head = UpdateHeader(Status.OK, 7, rnd, comm.rank, 1, 0.5, 0.1, 0.2, 0)
            body = bytes([rnd + comm.rank]) * 9000
            wait_with_deadline(isend_chunked(comm, pack_update(head, body), 0, Tag.UPDATE), WAIT_S, "send")
        comm.Barrier()
    if comm.rank == 0:
        ok &= addresses[0] == addresses[1]
    agree(comm, ok, "pooled receive buffers reused")


def test_the_hosting_ranks_reduce_scatter_their_ring_sums_and_rank_0_gathers_every_shard(comm):
    """The partial sums of ranks 1..size-1 meet modulo 2**64 (what the ring needs), each
    keeps its shard, and rank 0 gathers the shards into one vector at the right offsets."""
    from fedhpc.runtime.transport import gather_shards, hosts_comm, reduce_scatter_sum, shard_bounds

    if comm.size < 2:
        agree(comm, True, "needs a hosting rank")
        return
    n = 5003
    hosts = hosts_comm(comm, WAIT_S)
    ok = (hosts is None) == (comm.rank == 0)
    parts = [np.random.default_rng(r).integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, n, dtype=np.int64,
                                               endpoint=True) for r in range(1, comm.size)]
    with np.errstate(over="ignore"):
        want = np.sum(parts, axis=0, dtype=np.int64)  # numpy wraps int64 sums modulo 2**64 too
    bounds = shard_bounds(n, comm.size - 1)
    out = np.empty(n, np.float32) if comm.rank == 0 else None
    if hosts is not None:
        lo, hi = bounds[hosts.rank], bounds[hosts.rank + 1]
        shard = np.empty(hi - lo, np.int64)
        reduce_scatter_sum(hosts, parts[comm.rank - 1], shard, bounds, WAIT_S, "the reduction")
        ok = ok and np.array_equal(shard, want[lo:hi])
        gather_shards(comm, (shard % 1000).astype(np.float32), None, [0, *bounds], WAIT_S, "the gather")
        hosts.Free()
    else:
        gather_shards(comm, np.empty(0, np.float32), out, [0, *bounds], WAIT_S, "the gather")
        ok = ok and np.array_equal(out, (want % 1000).astype(np.float32))
    agree(comm, ok, "reduce-scatter and gather of the shards")


def test_a_released_buffer_is_handed_out_again_before_the_pool_is_reclaimed(comm):
    pool = BufferPool()
    a = pool.take(10_000)
    b = pool.take(10_000)
    pool.release(a)
    c = pool.take(9_000)
    agree(comm, c.base is a.base and c.base is not b.base and pool.take(10_000).base is not b.base,
          "release hands one buffer back")
