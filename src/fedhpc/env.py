"""The only place fedhpc reads environment variables; all carry the FEDHPC_ prefix.

* ``FEDHPC_MPI_CHUNK_BYTES``: largest single MPI message (default 1 GiB); bigger
  buffers travel in chunks, because single messages over 2 GiB break many MPI stacks.
* ``FEDHPC_LOG_LEVEL``: log level of every rank (default INFO on rank 0, WARNING elsewhere).
* ``FEDHPC_MPIEXEC``: the ``mpiexec`` that ``fedhpc run`` started without a launcher
  uses (default: the one next to the Python interpreter, else the first on ``PATH``).

Two standard variables name the node-local scratch directory where a rank
spills client state by default (``clients.state_dir``): ``SLURM_TMPDIR``
(the job-local directory some SLURM sites create), else ``TMPDIR``.

The MPI launchers' own variables (``PMI_*``, ``PMIX_*``, ``OMPI_COMM_WORLD_*``)
are read too, only to tell whether this process is a rank of a launched job
(:func:`launched`).

One variable is read by the compiled kernels themselves, because it must hold
from the first kernel call: ``FEDHPC_DISABLE_SIMD=1`` forces the portable code
paths instead of AVX2/F16C/SSE4.2 (the tests compare both).
"""

from __future__ import annotations

import os

MPI_CHUNK_BYTES = int(os.environ.get("FEDHPC_MPI_CHUNK_BYTES", 1 << 30))
LOG_LEVEL = os.environ.get("FEDHPC_LOG_LEVEL")
MPIEXEC = os.environ.get("FEDHPC_MPIEXEC")
NODE_SCRATCH = os.environ.get("SLURM_TMPDIR") or os.environ.get("TMPDIR") or None


def launched() -> bool:
    """Whether an MPI launcher (mpiexec, mpirun, srun with PMI/PMIx) started this process as a rank."""
    return any(k.startswith(("PMI_", "PMIX_", "OMPI_COMM_WORLD_")) for k in os.environ)

if MPI_CHUNK_BYTES < 4:
    raise ValueError(f"FEDHPC_MPI_CHUNK_BYTES must be >= 4, got {MPI_CHUNK_BYTES}")
