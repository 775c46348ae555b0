"""fedhpc: federated learning as one MPI job, for heterogeneous HPC and cloud."""

__version__ = "0.1.0"
