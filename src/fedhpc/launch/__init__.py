"""Launchers: how a fedhpc run gets onto machines (the paper's "scheduler adapter";
in FL "scheduler" means when to aggregate, so this package is named for what it does).

* :mod:`fedhpc.launch.slurm` renders sbatch scripts from a run config and
  submits, watches and cancels them with the SLURM client commands.
* :mod:`fedhpc.launch.k8s` renders Kubernetes manifests for ``fedhpc worker``
  pods that join a running job through its gateway.
* :mod:`fedhpc.launch.local` launches a run with the virtual environment's
  own ``mpiexec`` on a workstation.

The commands (``fedhpc slurm ...``, ``fedhpc k8s render``, ``fedhpc local run``)
are registered by :func:`fedhpc.launch.cli.add_launch_commands`. The
ready-to-copy scripts in ``jobs/`` share their launch code with what
``fedhpc slurm render`` writes (the tests keep the two identical).
"""

from fedhpc.errors import FedHPCError


class LaunchError(FedHPCError):
    """A batch-system command (sbatch, squeue, kubectl, mpiexec) is missing, failed or timed out, or the request cannot be rendered;
    the message says what to do."""
