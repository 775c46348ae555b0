"""The only place fedhpc reads environment variables; all carry the FEDHPC_ prefix.

* ``FEDHPC_MPI_CHUNK_BYTES``: largest single MPI message (default 1 GiB); bigger
  buffers travel in chunks, because single messages over 2 GiB break many MPI stacks.
* ``FEDHPC_LOG_LEVEL``: log level of every rank (default INFO on rank 0, WARNING elsewhere).

One variable is read by the compiled kernels themselves, because it must hold
from the first kernel call: ``FEDHPC_DISABLE_SIMD=1`` forces the portable code
paths instead of AVX2/F16C/SSE4.2 (the tests compare both).
"""

from __future__ import annotations

import os

MPI_CHUNK_BYTES = int(os.environ.get("FEDHPC_MPI_CHUNK_BYTES", 1 << 30))
LOG_LEVEL = os.environ.get("FEDHPC_LOG_LEVEL")

if MPI_CHUNK_BYTES < 4:
    raise ValueError(f"FEDHPC_MPI_CHUNK_BYTES must be >= 4, got {MPI_CHUNK_BYTES}")
