"""Secure aggregation: the server learns the sum of the survivors' updates, never one of them.

SecAgg (Bonawitz et al. 2017) on the complete graph, or SecAgg+ (Bell et al.
2020) on a sparse random graph (``secagg.neighbors``). Each client masks its
update's ring vector (:mod:`fedhpc.ring`, the one fixed point of every sum)
with a self-mask and pairwise masks that cancel in the sum; Shamir shares of
its secrets, sealed for its neighbours, let the server remove what is left of
the masks of clients that dropped at any step. Because the masks live in the
same exact integer ring, a round with secure aggregation gives the same bits
as without it. :class:`SecAggClient` is one client's side, :class:`SecAggServer`
the server's; both are pure, MPI-free and driven by the runtime.
"""

from fedhpc.secagg.client import SecAggClient, SecAggError
from fedhpc.secagg.graph import neighbours, share_threshold
from fedhpc.secagg.messages import PublicKeys, Reveal, SealedShare, Secret, view_digest
from fedhpc.secagg.server import SecAggServer

__all__ = ["PublicKeys", "Reveal", "SealedShare", "SecAggClient", "SecAggError", "SecAggServer", "Secret",
           "neighbours", "share_threshold", "view_digest"]
