"""Run the fedhpc command line in this MPI rank and record the rank's peak resident memory.

    mpiexec -n 3 python benchmarks/_peak.py DIR run --out OUT --set ...

writes ``DIR/peak_rss.<rank>`` (bytes, ``getrusage``'s ``ru_maxrss``) and
``DIR/end_rss.<rank>`` (bytes resident as it leaves, ``VmRSS``: what it still holds,
where a peak at start-up would hide it) when the rank leaves, however it leaves. It imports only ``fedhpc.cli``, so it measures
any fedhpc checkout the interpreter imports (the "before" of a comparison).
"""

import resource
import sys
from pathlib import Path


def main() -> None:
    out = Path(sys.argv[1])
    sys.argv = ["fedhpc", *sys.argv[2:]]
    from mpi4py import MPI

    from fedhpc.cli import main as fedhpc_main

    rank = MPI.COMM_WORLD.rank
    try:
        sys.exit(fedhpc_main())
    finally:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"peak_rss.{rank}").write_text(str(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024))
        vm = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith("VmRSS:"))
        (out / f"end_rss.{rank}").write_text(str(int(vm.split()[1]) * 1024))


if __name__ == "__main__":
    main()
