"""Scheduler adapters: how a fedhpc run gets onto machines.

* :mod:`fedhpc.scheduler.slurm` renders sbatch scripts from a run config and
  submits, watches and cancels them with the SLURM client commands.
* :mod:`fedhpc.scheduler.k8s` renders Kubernetes manifests for ``fedhpc worker``
  pods that join a running job through its gateway.
* :mod:`fedhpc.scheduler.local` launches a run with the virtual environment's
  own ``mpiexec`` on a workstation.

The commands (``fedhpc slurm ...``, ``fedhpc k8s render``, ``fedhpc local run``)
are registered by :func:`fedhpc.scheduler.cli.add_scheduler_commands`. The
ready-to-copy scripts in ``jobs/`` share their launch code with what
``fedhpc slurm render`` writes (the tests keep the two identical).
"""

from fedhpc.errors import FedHPCError


class SchedulerError(FedHPCError):
    """A scheduler command is missing, failed or timed out, or the request cannot be rendered;
    the message says what to do."""
