"""Time: the clock a run's deadlines are on, and what a client's round costs.

:class:`WallClock` and :class:`SimulatedClock` are the two clocks
(``clock = "wall" | "simulated"``). Rank 0's round collector
(:mod:`fedhpc.runtime.collector`) asks the clock when an Update arrived; the
client step (:mod:`fedhpc.runtime.step`) asks it how many epochs a straggler
may train and lets it spend a slow host's extra time.

Both the trainer (which stamps each Update with its simulated completion
time) and the adaptive selector (which estimates the time of clients it has
not measured yet) call :func:`client_round_seconds`, so the two can never
disagree about what a round costs.

A client's round is local training plus two messages over its link: the
global model down and the encoded update up. Each message costs the link's
one-way latency plus its bytes at the link's bandwidth::

    seconds = compute / speed
              + (latency + 8 * down_bytes / bandwidth)     # the model, down
              + (latency + 8 * up_bytes / bandwidth)       # the update, up

``compute`` is the training time on the reference host (``speed`` = 1);
``latency_ms`` is one-way (registration measures it as half a round trip).
"""

from __future__ import annotations

import math
import time
from abc import ABC, abstractmethod
from typing import ClassVar
from collections.abc import Callable

from fedhpc.types import ClientProfile

PARTIAL_WORK_MARGIN = 0.1  # share of the deadline kept for encoding and sending partial work (wall clock)


def client_round_seconds(profile: ClientProfile, compute_s: float, down_bytes: int, up_bytes: int) -> float:
    """Seconds of one client's round: ``compute_s`` (reference-host seconds of its
    local training) scaled by its speed, plus the model down and the update up
    over its link (see the module docstring). A non-positive speed or bandwidth
    (nothing measured) counts as the slowest possible host, not as an error."""
    compute = compute_s / max(profile.speed, 1e-9)
    transfer = (down_bytes + up_bytes) * 8 / (max(profile.bandwidth_mbps, 1e-9) * 1e6)
    return compute + transfer + 2 * profile.latency_ms / 1000


class Clock(ABC):
    """When things happen in a run, and what a deadline means."""

    name: ClassVar[str]
    #: Updates arrive in clock order, so deadline and fastest-k can close a round
    #: as they come; otherwise they are applied once every client is accounted for.
    live: ClassVar[bool]

    @abstractmethod
    def arrival(self, sim_s: float, wall_s: float) -> float:
        """The clock time of an Update stamped ``sim_s`` that rank 0 received ``wall_s`` after the round began."""

    @abstractmethod
    def planned_epochs(self, epochs: int, epoch_s: float, fixed_s: float, deadline_s: float) -> int:
        """Epochs a client trains under partial work: of ``epochs``, each of ``epoch_s`` clock
        seconds, those that fit in ``deadline_s`` after its ``fixed_s`` of transfers, at least one."""

    @abstractmethod
    def epoch_cutoff(self, round_start: float, deadline_s: float) -> float:
        """Monotonic time after which no epoch may end under partial work (``inf``: no such limit)."""

    @abstractmethod
    def spend(self, seconds: float, should_stop: Callable[[], bool]) -> bool:
        """Let a slow host's extra ``seconds`` pass; False if ``should_stop`` cut them short."""


class WallClock(Clock):
    """Real seconds: a round closes when its deadline passes; slow hosts really wait."""

    name = "wall"
    live = True

    def arrival(self, sim_s: float, wall_s: float) -> float:
        return wall_s

    def planned_epochs(self, epochs: int, epoch_s: float, fixed_s: float, deadline_s: float) -> int:
        return epochs  # decided epoch by epoch, against epoch_cutoff

    def epoch_cutoff(self, round_start: float, deadline_s: float) -> float:
        # keep a tenth of the deadline for encoding and sending, so the partial work arrives in time
        return round_start + (1 - PARTIAL_WORK_MARGIN) * deadline_s

    def spend(self, seconds: float, should_stop: Callable[[], bool]) -> bool:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if should_stop():
                return False
            time.sleep(min(0.01, max(0.0, end - time.monotonic())))
        return True


class SimulatedClock(Clock):
    """Seconds from :func:`client_round_seconds`: deterministic, whatever the host does."""

    name = "simulated"
    live = False

    def arrival(self, sim_s: float, wall_s: float) -> float:
        return sim_s

    def planned_epochs(self, epochs: int, epoch_s: float, fixed_s: float, deadline_s: float) -> int:
        if epoch_s <= 0:
            return epochs
        return int(min(epochs, max(1, (deadline_s - fixed_s) // epoch_s)))

    def epoch_cutoff(self, round_start: float, deadline_s: float) -> float:
        return math.inf

    def spend(self, seconds: float, should_stop: Callable[[], bool]) -> bool:
        return True  # the time is charged in the Update's simulated seconds instead


CLOCKS: dict[str, type[Clock]] = {cls.name: cls for cls in (WallClock, SimulatedClock)}


def make_clock(name: str) -> Clock:
    """The clock called ``name`` (``config.clock``, validated there)."""
    return CLOCKS[name]()
