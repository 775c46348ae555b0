"""SIGTERM / SIGUSR1 handling: what SLURM sends before a time limit
(``--signal=B:USR1@120``, forwarded to the tasks) and on preemption.

Every rank installs the handler, so a signal never kills a rank mid-collective.
It only counts: the orchestrator acts at safe points (the first signal lets the
current round finish, a second one closes it at once), then checkpoints and
stops every rank; the job (rank 0, hence mpiexec and srun) exits with
:data:`EXIT_PREEMPTED`.
"""

from __future__ import annotations

import signal

#: Exit status of the job after a signal-triggered checkpoint (EX_TEMPFAIL):
#: job scripts requeue on it (``scontrol requeue``) and resume with ``--resume``.
EXIT_PREEMPTED = 75

_count = 0


def _handler(signum, frame) -> None:
    global _count
    _count += 1


def install() -> None:
    """Count SIGTERM and SIGUSR1 instead of dying."""
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, _handler)


def received() -> int:
    """How many stop signals this process has received."""
    return _count
