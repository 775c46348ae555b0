"""Plain data passed between the runtime, strategies and selectors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np


class Frame(Protocol):
    """An update kept as it came, compressed (:class:`fedhpc.compress.base.Opened`)."""

    n: int
    norm: float

    def range(self, lo: int, hi: int) -> np.ndarray: ...

    def dense(self) -> np.ndarray: ...


@dataclass
class ClientProfile:
    """What is known of a client's host: measured at registration, scaled by any
    simulated heterogeneity from the config."""

    client_id: int
    speed: float = 1.0  # relative training throughput (1.0 = reference host)
    samples_per_s: float = 0.0  # measured training throughput of the host
    memory_gb: float = 0.0
    bandwidth_mbps: float = 1000.0  # link to the orchestrator, megabits per second
    latency_ms: float = 0.1
    dropout_prob: float = 0.0  # simulated probability of vanishing in a round
    remote: bool = False  # joined through the gateway rather than as an MPI rank


@dataclass
class ClientHistory:
    """What the orchestrator has seen of a client over past rounds."""

    selected: int = 0
    reported: int = 0
    late: int = 0
    failed: int = 0
    last_selected: int = -1  # round index, -1 = never
    ema_seconds: float | None = None  # EMA of completion time (clock seconds)
    ema_quality: float | None = None  # EMA of a quality score in [0, 1] (1 = loss fell most)
    last_loss: float | None = None  # training loss of its last report, the reference for "fell"
    consecutive_misses: int = 0  # late or failed in a row
    excluded_until: int = -1  # not selected before this round
    # its trust (fedhpc.selection.base.reputation): updates the defenses took as they were, and
    # updates they refused (the norm guard), set aside (Krum, Bulyan) or clipped (centered clipping)
    kept: int = 0
    flagged: int = 0


@dataclass
class ClientResult:
    """A validated update from one client in one round."""

    client_id: int
    num_samples: int
    loss: float
    delta: np.ndarray | None  # dense float32, w_local - w_global; None when folded or kept as a frame
    seconds: float  # completion time on the run's clock
    nbytes: int  # bytes on the wire
    # federated dropout: ascending flat indices the client trained (None = all);
    # delta is zero elsewhere, and averaging rules divide by per-coordinate coverage
    kept: np.ndarray | None = None
    norm: float | None = None  # L2 norm of delta (None = not yet computed)
    frame: Frame | None = None  # the update kept compressed, instead of delta
    clipped: bool = False  # differential privacy: its norm was above the round's clip (before clipping)

    @property
    def size(self) -> int:
        """How many values the delta has."""
        return self.frame.n if self.frame is not None else self.dense().size

    def dense(self) -> np.ndarray:
        """The delta (decoded from the frame when kept as one); raises ValueError if it was folded."""
        if self.delta is not None:
            return self.delta
        if self.frame is None:
            raise ValueError(f"client {self.client_id}'s update was folded into a ring sum: it has no delta")
        return self.frame.dense()

    def row(self, lo: int, hi: int) -> np.ndarray:
        """Values ``[lo, hi)`` of the delta, decoded from the frame when kept as one."""
        return self.dense()[lo:hi] if self.frame is None else self.frame.range(lo, hi)


@dataclass
class ClientFailure:
    """A selected client that did not contribute to the aggregate, and why."""

    client_id: int
    reason: str  # "late", "dropout", "error", "corrupt", "stale", "timeout"
    detail: str = ""


@dataclass
class RoundOutcome:
    """Everything the strategy and the selector learn from one round."""

    round: int
    results: list[ClientResult] = field(default_factory=list)
    failures: list[ClientFailure] = field(default_factory=list)
