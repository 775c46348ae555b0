"""When a round closes: the one place that decides it.

A :class:`RoundCollector` is fed the round's arrivals (results and failures,
in whatever order they come, duplicates, stale and late ones included) and
is asked, as often as its owner likes, whether the round should close: every
selected client accounted for, the deadline, the fastest k, the safety
timeout, or a second stop signal. It knows nothing of MPI, gRPC or how an
Update is decoded; rank 0's receive loop only feeds it, and tests drive it
in-process.

Deadline and fastest-k are one rule (:meth:`CloseRules.due`) for both
clocks. On the wall clock arrivals come in clock order, so the rule closes
the round as they come. On the simulated clock an Update carries its
completion time, and arrivals come in whatever order the ranks finish:
the round runs until everyone is accounted for, then the same rule is
replayed over the arrivals in clock order to find when the round closed
and who was late.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from fedhpc.clock import Clock
from fedhpc.types import ClientFailure, ClientResult, RoundOutcome


@dataclass(frozen=True)
class CloseRules:
    """When a round closes, besides "every selected client accounted for"."""

    deadline_s: float = 0.0  # clock seconds after the round began; 0 = none
    fastest_k: int = 0  # close once k results arrived; 0 = wait for all
    timeout_s: float = float("inf")  # wall seconds: the safety net of every clock

    def due(self, t: float, arrived: int) -> str | None:
        """Why a round at clock time ``t`` with ``arrived`` results is over, or None:
        an arrival at ``t`` after ``arrived`` others is in time exactly when this is None."""
        if self.deadline_s and t > self.deadline_s:
            return f"deadline {self.deadline_s}s"
        if self.fastest_k and arrived >= self.fastest_k:
            return f"fastest {self.fastest_k} arrived"
        return None


class Admission(enum.Enum):
    """What :meth:`RoundCollector.admit` made of an arrival."""

    OPEN = "open"  # the caller decodes it and files a result or a failure
    LATE = "late"  # the round had closed: the client is counted late
    STALE = "stale"  # of an earlier round: dropped and counted
    REJECTED = "rejected"  # not for this round's accounting (the reason is logged): ignored


@dataclass
class RoundCollector:
    """Arrivals of round ``round`` from the clients in ``expected``, on ``clock``."""

    round: int
    expected: frozenset[int]
    rules: CloseRules
    clock: Clock
    closed_because: str | None = None
    stale: int = 0
    client_bytes: dict[int, int] = field(default_factory=dict)  # bytes received per expected client
    _arrivals: dict[int, ClientResult] = field(default_factory=dict)
    _failures: dict[int, ClientFailure] = field(default_factory=dict)
    _late: set[int] = field(default_factory=set)

    @property
    def closed(self) -> bool:
        return self.closed_because is not None

    def accounted(self) -> int:
        """How many expected clients have a result, a failure or are late."""
        return len(self._arrivals) + len(self._failures) + len(self._late)

    def admit(self, round_: int, client: int, nbytes: int = 0, problem: str | None = None) -> tuple[Admission, str]:
        """Decide what an arrival for ``client`` claiming ``round_`` is, before it is decoded.

        ``problem``: what the caller found wrong with it that the collector
        cannot know (the sending rank does not host that client, a wrong
        sample count); it rejects the arrival unless it is stale. Returns the
        admission and, for REJECTED, why ("it ...").
        """
        if round_ == self.round and client in self.expected:
            self.client_bytes[client] = self.client_bytes.get(client, 0) + nbytes
        if round_ < self.round:
            self.stale += 1
            return Admission.STALE, ""
        if round_ != self.round:
            return Admission.REJECTED, f"is for round {round_}"
        if client not in self.expected:
            return Admission.REJECTED, f"is from client {client}, which was not selected"
        if client in self._arrivals or client in self._failures or client in self._late:
            return Admission.REJECTED, f"is a duplicate for client {client}"
        if problem:
            return Admission.REJECTED, problem
        if self.closed:
            self._late.add(client)
            return Admission.LATE, ""
        return Admission.OPEN, ""

    def arrival_time(self, sim_s: float, wall_s: float) -> float:
        """The clock time of an Update stamped ``sim_s`` and taken up ``wall_s`` into the round.

        On the wall clock, ``wall_s`` must be the time of the last
        :meth:`close_reason` that kept the round open, so that the replay in
        :meth:`outcome` finds every admitted arrival in time.
        """
        return self.clock.arrival(sim_s, wall_s)

    def certain(self, result: ClientResult) -> bool:
        """Whether an admitted result is sure to be in the round's :meth:`outcome`, whatever
        else arrives: always on the wall clock (arrivals come in clock order); on the
        simulated clock only without fastest-k (a faster arrival may still push it out)
        and within any deadline."""
        if self.clock.live:
            return True
        return not self.rules.fastest_k and not (self.rules.deadline_s and result.seconds > self.rules.deadline_s)

    def norms(self) -> list[float]:
        """The norms of the results filed so far (what a first round's guard bound is made of)."""
        return [float(res.norm) for res in self._arrivals.values() if res.norm is not None]

    def add_result(self, result: ClientResult) -> None:
        """File an admitted (OPEN) client's result; ``result.seconds`` is its :meth:`arrival_time`."""
        self._arrivals[result.client_id] = result

    def add_failure(self, failure: ClientFailure) -> None:
        """File an admitted (OPEN) client's failure."""
        self._failures[failure.client_id] = failure

    def close_reason(self, wall_s: float, stop_signals: int = 0) -> str | None:
        """Why the round should close now, ``wall_s`` seconds after it began, or None.

        ``stop_signals``: how many stop signals the job has seen; a second
        one closes the round at once (the first lets it finish).
        """
        if self.accounted() == len(self.expected):
            return "all accounted for"
        if self.clock.live:
            reason = self.rules.due(wall_s, len(self._arrivals))
            if reason:
                return reason
        if wall_s >= self.rules.timeout_s:
            return f"timeout {self.rules.timeout_s}s"
        if stop_signals >= 2:
            return "a second stop signal"
        return None

    def close(self, reason: str) -> None:
        """Close the round: whatever arrives from now on is late."""
        if not self.closed:
            self.closed_because = reason

    def outcome(self) -> tuple[RoundOutcome, float, set[int]]:
        """(results and failures in client-id order, the clock time the round closed, the late clients).

        The close rule is replayed over the arrivals in clock order (client id
        breaks ties): those past the deadline or beyond the fastest k are late,
        and so is every expected client not accounted for.
        """
        order = sorted(self._arrivals.values(), key=lambda res: (res.seconds, res.client_id))
        kept: list[ClientResult] = []
        for res in order:
            if self.rules.due(res.seconds, len(kept)):  # the round was over before this arrival
                break
            kept.append(res)
        if self.rules.fastest_k and len(kept) >= self.rules.fastest_k:
            closed_at = kept[-1].seconds  # closed when the k-th result arrived
        elif self.rules.deadline_s and (len(kept) < len(order) or self._failures):
            closed_at = self.rules.deadline_s  # someone never made it: the round waited until the deadline
        else:
            closed_at = max((res.seconds for res in order), default=0.0)
        late = self._late | {res.client_id for res in order[len(kept):]}
        late |= self.expected - self._arrivals.keys() - self._failures.keys()
        failures = list(self._failures.values()) + [ClientFailure(c, "late") for c in late]
        results = sorted(kept, key=lambda res: res.client_id)
        return RoundOutcome(self.round, results, sorted(failures, key=lambda f: f.client_id)), closed_at, late
