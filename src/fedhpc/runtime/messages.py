"""The control messages between rank 0 and the ranks that host clients.

Small, typed and frozen: what a rank may be told (:class:`RoundTask`,
:class:`Reduce`, :class:`Unmask`, :class:`SaveState`, :class:`RestoreState`,
:class:`Stop`, :class:`Serve`, broadcast by rank 0; :class:`Close`, :class:`Verdict`,
:class:`Train` and :class:`Pause`, sent to each rank) and what it answers (:class:`Folded` for each Update it folded,
:class:`Done`; a :class:`~fedhpc.checkpoint.Shard` or :class:`Restored` for a
checkpoint; :class:`Workers` from the gateway before the first round), and the
steps of secure aggregation (``SecAgg*``). They are pickled by mpi4py; models
and Updates never travel in them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fedhpc.checkpoint import Shard
from fedhpc.secagg import PublicKeys, Reveal, SealedShare
from fedhpc.update import UpdateHeader


@dataclass(frozen=True)
class RoundTask:
    """Train round ``round``: ``assign`` maps each hosting rank to its selected clients;
    the global model follows as a buffer broadcast."""

    round: int
    assign: dict[int, tuple[int, ...]]
    mu: float  # FedProx proximal coefficient for the clients (0 = none)
    clip: float = 0.0  # differential privacy: the round's L2 bound on each update (0 = no DP)
    widths: dict[int, float] = field(default_factory=dict)  # sub-models: each client's width (absent = 1)

    def clients_of(self, rank: int) -> tuple[int, ...]:
        return self.assign.get(rank, ())


@dataclass(frozen=True)
class SaveState:
    """Write every hosted client's state to your shard in ``directory`` (a checkpoint's
    ``.states`` directory) and tell rank 0 with a :class:`~fedhpc.checkpoint.Shard`."""

    directory: str


@dataclass(frozen=True)
class RestoreState:
    """Take the state of the clients you host from the ``shards`` in ``directory``
    (resuming from a checkpoint, on any number of ranks) and tell rank 0 with :class:`Restored`."""

    directory: str
    shards: tuple[Shard, ...]


@dataclass(frozen=True)
class Restored:
    """A rank took back ``clients`` clients' state; ``error``: why it could not."""

    clients: int
    error: str = ""


@dataclass(frozen=True)
class Stop:
    """The job is over; leave with this exit status (rank 0 carries any other than 0)."""

    exit: int


@dataclass(frozen=True)
class Close:
    """Round ``round`` is closed: stop working on it, take the ``verdicts`` rank 0 sent you
    in it, and account for it with :class:`Done`."""

    round: int
    verdicts: int = 0


@dataclass(frozen=True)
class Verdict:
    """Rank 0's final word on a client a rank folded, given as soon as nothing that arrives
    later can change it: ``keep`` it in the round's sum, or take it out now. Either way
    the rank can let the client's frame go before the round closes."""

    round: int
    client: int
    keep: bool


@dataclass(frozen=True)
class Reduce:
    """Round ``round`` is decided: keep exactly the ``accepted`` clients in your sum, take
    part in the reduce-scatter, and send rank 0 your shard of the mean (the sum over
    ``total``, the accepted clients' coefficients added up)."""

    round: int
    accepted: tuple[int, ...]
    total: float


@dataclass(frozen=True)
class Folded:
    """A hosting rank's account of one Update it folded into its sum instead of sending it:
    the client's header, the Update's bytes, the norm of the decoded delta, or why the rank
    refused it (``refused``: a failure reason; ``detail``: the message, or a failed
    client's own reason)."""

    head: UpdateHeader
    nbytes: int
    norm: float = float("nan")
    refused: str = ""
    detail: str = ""


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
    state_bytes: int = 0  # client state this rank holds in RAM at the round's end
    state_spills: int = 0  # client states it spilled to disk in the round
    state_loads: int = 0  # and read back
    workers: dict[int, RemoteProfile] | None = None  # the gateway: client id -> its connected worker


@dataclass(frozen=True)
class Workers:
    """The gateway, before the first round: the workers connected so far."""

    connected: dict[int, RemoteProfile] = field(default_factory=dict)


# -- secure aggregation (fedhpc.secagg): its steps, each a message per hosting rank ---------------

@dataclass(frozen=True)
class SecAggKeys:
    """A hosting rank's clients' public keys for round ``round`` (step 1)."""

    round: int
    keys: tuple[PublicKeys, ...]


@dataclass(frozen=True)
class SecAggNeighbours:
    """Rank 0 to a hosting rank: each of its clients' neighbours' keys, and how many of
    them must reveal to recover a client's secrets."""

    round: int
    threshold: int
    neighbours: dict[int, tuple[PublicKeys, ...]]


@dataclass(frozen=True)
class SecAggShares:
    """A hosting rank's clients' sealed shares (step 2)."""

    round: int
    shares: tuple[SealedShare, ...]


@dataclass(frozen=True)
class SecAggRouted:
    """Rank 0 to a hosting rank: the shares sealed for its clients, and every client that
    shared (the protocol's U2): only they train, and they mask with each other."""

    round: int
    sharers: frozenset[int]
    inbox: dict[int, tuple[SealedShare, ...]]


@dataclass(frozen=True)
class Unmask:
    """Round ``round``'s sum holds exactly the ``survivors``' masked inputs; the other
    clients that shared ``dropped``: reveal what unmasks that sum (step 4)."""

    round: int
    survivors: tuple[int, ...]
    dropped: tuple[int, ...]


@dataclass(frozen=True)
class SecAggReveals:
    """A hosting rank's clients' reveals, or why one of them refused (``errors``)."""

    round: int
    reveals: tuple[Reveal, ...]
    errors: tuple[str, ...] = ()


# -- the asynchronous modes (fedhpc.runtime.asynchronous): tasks one by one, point to point -------

@dataclass(frozen=True)
class Serve:
    """Broadcast: take rank 0's :class:`Train` tasks one by one until it says :class:`Pause`."""

    round: int  # the server step rank 0 is in (for the logs)


@dataclass(frozen=True)
class Train:
    """Rank 0 to the rank hosting ``client``: train it from model ``version`` as task
    ``ticket`` (its Update's round). With ``model`` that version's weights follow on
    ``Tag.MODEL``; otherwise the rank has them from an earlier task."""

    ticket: int
    client: int
    version: int
    mu: float = 0.0
    model: bool = False


@dataclass(frozen=True)
class Pause:
    """Rank 0 to each hosting rank: finish the tasks you were given, send their Updates,
    account for them with :class:`Done` and take broadcast commands again. With ``abandon``
    (a second stop signal) fail every task not started yet instead of training it."""

    abandon: bool = False


Command = RoundTask | Reduce | SaveState | RestoreState | Stop | Unmask | Serve
