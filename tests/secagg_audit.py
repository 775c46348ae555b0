"""``fedhpc run`` (or ``fedhpc worker``) with secure aggregation instrumented, for the tests.

Run as ``mpiexec -n N python -m mpi4py tests/secagg_audit.py DIR run ARGS...`` or
``python tests/secagg_audit.py DIR worker ARGS...``: the command is ``fedhpc ARGS``, and
each process records under DIR what the audit needs. Rank 0 keeps everything it is handed
of a client: each Update buffer it receives (with ``aggregation.fold = "rank0"`` the masked
inputs themselves) and each Folded account. A hosting rank keeps every Update it hands on
(the gateway's: what its workers pushed) and, for the clients it trains, each ring vector
just before it is masked; a worker keeps the latter. That ring vector is the update that
rank 0 and the gateway must never hold. Patched in this process only, by wrapping the real
methods.
"""

import sys
from pathlib import Path

import numpy as np

from fedhpc.cli import main
from fedhpc.secagg import SecAggClient
from fedhpc.update import unpack_update

out, command = Path(sys.argv[1]), sys.argv[2:]
seen: dict[str, np.ndarray] = {}


def record(prefix: str, buf) -> None:
    head, body = unpack_update(buf)
    seen[f"{prefix}-r{head.round}-c{head.client}"] = np.frombuffer(bytes(body), dtype=np.uint8)


def record_plain() -> None:
    mask = SecAggClient.mask

    def plain(self, acc):
        seen[f"plain-r{self.round}-c{self.client}"] = acc.copy()
        return mask(self, acc)

    SecAggClient.mask = plain


if command[0] == "worker":  # no MPI in a worker
    who = f"worker-{command[command.index('--name') + 1]}"
    record_plain()
else:
    from mpi4py import MPI

    from fedhpc.runtime import orchestrator
    from fedhpc.runtime.rank import HostRank

    rank = MPI.COMM_WORLD.rank
    who = f"rank{rank}"
    if rank == 0:
        accept, file_folded = orchestrator.Orchestrator.accept, orchestrator.Orchestrator.file_folded

        def record_update(self, src, buf, col, elapsed):
            record("update", buf)
            return accept(self, src, buf, col, elapsed)

        def record_folded(self, src, folded, col, elapsed):
            seen[f"norm-r{folded.head.round}-c{folded.head.client}"] = np.array([folded.norm])
            return file_folded(self, src, folded, col, elapsed)

        orchestrator.Orchestrator.accept = record_update
        orchestrator.Orchestrator.file_folded = record_folded
    else:
        record_plain()
        deliver = HostRank.deliver

        def record_handed(self, buf, release=None):
            record("handed", buf)
            return deliver(self, buf, release)

        HostRank.deliver = record_handed

try:
    status = main(command)
finally:
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / f"{who}.npz", **seen)
sys.exit(status)
