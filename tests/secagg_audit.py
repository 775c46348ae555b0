"""``fedhpc run`` with secure aggregation instrumented, for tests/test_secagg_run.py.

Run as ``mpiexec -n N python -m mpi4py tests/secagg_audit.py DIR ARGS...``: the job is
``fedhpc run ARGS``, and every rank records under DIR what the audit needs. Rank 0 keeps
everything it is handed of a client: each Update buffer it receives (with ``aggregation.fold
= "rank0"`` the masked inputs themselves) and each Folded account; the hosting ranks keep
each client's ring vector just before it is masked, which is the update rank 0 must never
hold. Patched in this process only, by wrapping the real methods.
"""

import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

from fedhpc.cli import main
from fedhpc.runtime import orchestrator
from fedhpc.secagg import SecAggClient
from fedhpc.update import unpack_update

out = Path(sys.argv[1])
rank = MPI.COMM_WORLD.rank
seen: dict[str, np.ndarray] = {}

if rank == 0:
    accept, file_folded = orchestrator.Orchestrator.accept, orchestrator.Orchestrator.file_folded

    def record_update(self, src, buf, col, elapsed):
        head, body = unpack_update(buf)
        seen[f"update-r{head.round}-c{head.client}"] = np.frombuffer(bytes(body), dtype=np.uint8)
        return accept(self, src, buf, col, elapsed)

    def record_folded(self, src, folded, col, elapsed):
        seen[f"norm-r{folded.head.round}-c{folded.head.client}"] = np.array([folded.norm])
        return file_folded(self, src, folded, col, elapsed)

    orchestrator.Orchestrator.accept = record_update
    orchestrator.Orchestrator.file_folded = record_folded
else:
    mask = SecAggClient.mask

    def record_plain(self, acc):
        seen[f"plain-r{self.round}-c{self.client}"] = acc.copy()
        return mask(self, acc)

    SecAggClient.mask = record_plain

try:
    status = main(sys.argv[2:])
finally:
    out.mkdir(parents=True, exist_ok=True)
    np.savez(out / f"rank{rank}.npz", **seen)
sys.exit(status)
