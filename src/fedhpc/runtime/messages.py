"""The control messages between rank 0 and the ranks that host clients.

Small, typed and frozen: what a rank may be told (:class:`RoundTask`,
:class:`SaveState`, :class:`RestoreState`, :class:`Stop`, broadcast by rank
0; :class:`Close`, sent to each rank) and what it answers (:class:`Done`;
:class:`Workers` from the gateway before the first round). They are pickled
by mpi4py; models and Updates never travel in them.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RoundTask:
    """Train round ``round``: ``assign`` maps each hosting rank to its selected clients;
    the global model follows as a buffer broadcast."""

    round: int
    assign: dict[int, tuple[int, ...]]
    mu: float  # FedProx proximal coefficient for the clients (0 = none)

    def clients_of(self, rank: int) -> tuple[int, ...]:
        return self.assign.get(rank, ())


@dataclass(frozen=True)
class SaveState:
    """Send rank 0 every hosted client's state (for a checkpoint)."""


@dataclass(frozen=True)
class RestoreState:
    """Receive your clients' state from rank 0 (resuming from a checkpoint)."""


@dataclass(frozen=True)
class Stop:
    """The job is over; leave with this exit status (rank 0 carries any other than 0)."""

    exit: int


@dataclass(frozen=True)
class Close:
    """Round ``round`` is closed: stop working on it and account for it with :class:`Done`."""

    round: int


@dataclass(frozen=True)
class RemoteProfile:
    """What a remote worker reported of itself when it registered (and in heartbeats)."""

    worker: str
    num_samples: int  # declared at registration; every Update of its client must claim exactly this
    samples_per_s: float = 0.0
    memory_gb: float = 0.0
    bandwidth_mbps: float = 0.0
    latency_ms: float = 0.0


@dataclass(frozen=True)
class Done:
    """A rank's accounting of a closed round: rank 0 drains exactly ``sent`` Updates from it."""

    round: int
    sent: int
    train_s: float = 0.0  # seconds this rank spent in local training
    relayed_bytes: int = 0  # model bytes streamed on to remote workers (the gateway)
    workers: dict[int, RemoteProfile] | None = None  # the gateway: client id -> its connected worker


@dataclass(frozen=True)
class Workers:
    """The gateway, before the first round: the workers connected so far."""

    connected: dict[int, RemoteProfile] = field(default_factory=dict)


Command = RoundTask | SaveState | RestoreState | Stop
