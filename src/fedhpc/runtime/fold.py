"""Folding Updates into the round's ring sum where they are, instead of holding them.

With a sum-decomposable strategy (:attr:`fedhpc.strategy.Strategy.decomposable`)
every rank that hosts clients keeps a :class:`Folder`: each Update its
clients produce (a trainer) or its workers push (the gateway) is validated and
folded into the rank's :class:`~fedhpc.ring.Accumulator` in one pass, and rank
0 only receives a :class:`~fedhpc.runtime.messages.Folded` account of it
(header, bytes, norm, or why it was refused). Rank 0 decides, with the same
close rules and guard as ever, who is in the round; each folder then takes
out exactly what it folded for anyone else (:meth:`Folder.settle`), and the
partial sums meet in an MPI reduce-scatter. With ``aggregation.fold =
"rank0"`` rank 0 keeps the one folder and is sent the Updates.

A folder keeps each folded client's frame until the round is settled, so that
a client it folded and rank 0 then excluded (late at rank 0, beyond the
fastest k, refused by the guard, a claim rank 0 rejects) is subtracted
exactly. The frames are the Updates the rank made or received anyway (their
buffers live until the next round); nothing dense is kept per client.

This module imports no MPI: the folding ranks and rank 0 both use it, and
tests drive it in-process.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

import numpy as np

from fedhpc.compress import Codec
from fedhpc.compress.base import Decoded
from fedhpc.config import RunConfig
from fedhpc.errors import CorruptUpdateError
from fedhpc.ring import Accumulator, FoldError, Ring
from fedhpc.runtime.messages import Folded
from fedhpc.runtime.submodels import FULL, Submodels
from fedhpc.secagg import frame as masked_frame
from fedhpc.strategy import Strategy
from fedhpc.update import Status, UpdateHeader, unpack_update

log = logging.getLogger("fedhpc.fold")


def run_ring(cfg: RunConfig) -> Ring:
    """The ring of a run: ``aggregation.scale_bits``, at most ``clients.per_round`` terms a round."""
    return Ring(cfg.aggregation.scale_bits, cfg.clients.per_round)


def coefficient_scale(parts: list[np.ndarray]) -> float:
    """What clients' weights are divided by before they enter the ring: the power of two
    nearest to the mean shard inside the job, so a typical client's coefficient is about 1
    and the ring's resolution (2**-scale_bits) is spent where the values are. A run
    constant, the same on every rank and for any ``clients.per_round``: a client's
    contribution depends on nobody else's, not even on who else was selected."""
    mean = float(np.mean([len(p) for p in parts])) if parts else 0.0
    return float(2.0 ** round(math.log2(mean))) if mean >= 1 else 1.0


def coefficient(strategy: Strategy, num_samples: int, loss: float, scale: float, uniform: bool = False) -> float:
    """A client's coefficient in the round's sum: the strategy's weight over the run's
    :func:`coefficient_scale`, or 1 for every client when ``uniform`` (differential
    privacy: a sample-count weight would break the sensitivity bound). Every rank
    computes it the same way, to the bit."""
    return 1.0 if uniform else strategy.coefficient(num_samples, loss) / scale


def round_total(coefs: Collection[float]) -> float:
    """What the sum is divided by: the accepted clients' coefficients added up exactly
    rounded (``math.fsum``), so the same for any order."""
    return math.fsum(c for c in coefs if c > 0)


@dataclass
class _Held:
    body: memoryview  # the client's codec frame (or masked input), until the round is settled
    codec: Codec | None  # None: a masked input of secure aggregation
    coef: float
    kept: np.ndarray | None  # a sub-model's coordinates of the client
    release: Callable[[], None]  # gives the frame's buffer back to its pool


class Folder:
    """Folds the Updates of one rank's clients (or of every client, at rank 0) into one
    ring sum over the model's ``n`` values.

    ``codec_of(client)`` is the codec the client's frames are in (the WAN
    codec for remote clients); ``subs`` maps sub-model frames back to the
    model's coordinates and turns on the per-coordinate coverage.
    """

    def __init__(self, cfg: RunConfig, strategy: Strategy, n: int, job_id: int, codec_of: Callable[[int], Codec],
                 subs: Submodels | None, scale: float):
        self.strategy, self.n, self.job_id, self.codec_of, self.subs = strategy, n, job_id, codec_of, subs
        self.scale = scale  # the run's coefficient_scale
        self.uniform = cfg.dp.enabled
        self.masked = cfg.secagg.enabled  # every Update is a masked input, and no other is taken
        self.acc = Accumulator(run_ring(cfg), n, coverage=subs is not None)
        self.widths: Mapping[int, float] = {}  # sub-models: the round's width of each client
        self.round = -1
        self.expected: frozenset[int] = frozenset()
        self.held: dict[int, _Held] = {}  # folded clients without a verdict yet
        self.held_bytes = 0  # their frames' bytes (kept up to date: it is read after every Update)
        self.folded: set[int] = set()  # every client folded this round

    def begin(self, round_: int, expected: Collection[int], widths: Mapping[int, float] | None = None) -> None:
        """Start round ``round_``: an empty sum, to which only the ``expected`` clients'
        Updates of this round and job are folded (sub-models: of the ``widths`` rank 0 gave them)."""
        self.widths = widths or {}
        self.acc.clear()
        self.held.clear()
        self.held_bytes = 0
        self.folded.clear()
        self.round, self.expected = round_, frozenset(expected)

    def take(self, buf: np.ndarray, release: Callable[[], None] | None = None) -> Folded:
        """Validate one sealed Update and fold it in; return its account for rank 0.
        ``release()``, when given, is called once the frame is no longer needed (its
        buffer can be reused): at once unless it was folded, else at its verdict.

        Raises :class:`~fedhpc.errors.CorruptUpdateError` when not even its
        header can be read (nobody can be named for it). An Update of another
        round or job, of a client not expected here, or a second one of a
        client, is not folded: rank 0 drops or refuses it from its account.
        """
        release = release or _keep_nothing
        account, held = self._take(buf, release)
        if not held:
            release()
        return account

    def _take(self, buf: np.ndarray, release: Callable[[], None]) -> tuple[Folded, bool]:
        """(the account, whether the frame is held)."""
        head, body = unpack_update(buf)
        if head.status != Status.OK:
            return Folded(head, buf.nbytes, detail=bytes(body).decode("utf-8", "replace")), False
        cid = head.client
        if head.job != self.job_id or head.round != self.round or cid not in self.expected or cid in self.folded:
            return Folded(head, buf.nbytes), False
        if head.masked != self.masked:
            why = ("is not masked: secure aggregation is on" if self.masked else
                   "is masked, but secure aggregation is off")
            return Folded(head, buf.nbytes, refused="corrupt", detail=f"client {cid}'s update {why}"), False
        if self.masked:
            return self._take_masked(head, body, buf.nbytes, release)
        kept = None if self.subs is None else self.subs.kept(head.round, cid, self.widths.get(cid, FULL))
        coef = coefficient(self.strategy, head.num_samples, head.loss, self.scale, self.uniform)
        codec = self.codec_of(cid)
        try:
            part = codec.decode_parts(body, self.n if kept is None else kept.size, check_finite=False)
            if not coef > 0:  # it does not count: nothing to fold, but the guard still wants its norm
                return Folded(head, buf.nbytes, norm=part.norm()), False
            sumsq = self.acc.fold(part.vals, coef, _positions(part, kept))
        except CorruptUpdateError as exc:
            return Folded(head, buf.nbytes, refused="corrupt", detail=str(exc)), False
        except FoldError as exc:
            return Folded(head, buf.nbytes, refused=exc.reason, detail=str(exc)), False
        self._hold(cid, _Held(body, codec, coef, kept, release))
        return Folded(head, buf.nbytes, norm=math.sqrt(sumsq)), True

    def _take_masked(self, head: UpdateHeader, body: memoryview, nbytes: int, release: Callable[[], None]
                     ) -> tuple[Folded, bool]:
        """Fold a masked input as it is: its values are already in the ring, and its norm is
        nobody's to know (NaN)."""
        try:
            self.acc.add(masked_frame.read(body, self.n))
        except CorruptUpdateError as exc:
            return Folded(head, nbytes, refused="corrupt", detail=str(exc)), False
        self._hold(head.client, _Held(body, None, 1.0, None, release))
        return Folded(head, nbytes), True

    def _hold(self, cid: int, held: _Held) -> None:
        """Keep a folded client's frame until its verdict."""
        self.held[cid] = held
        self.held_bytes += held.body.nbytes
        self.folded.add(cid)

    def verdict(self, round_: int, client: int, keep: bool) -> None:
        """Rank 0's final word on a folded client: keep it, or take it out now; its frame
        is let go either way."""
        h = self.held.pop(client, None) if round_ == self.round else None
        if h is None:
            return
        self.held_bytes -= h.body.nbytes
        if not keep:
            self._take_out(h)
        h.release()

    def settle(self, accepted: Collection[int]) -> None:
        """Take out exactly every client still held here that is not in ``accepted`` (rank
        0's verdict on the round); the sum is then the round's, and the frames are let go."""
        keep = set(accepted)
        for cid, h in sorted(self.held.items()):
            if cid not in keep:
                self._take_out(h)
            h.release()
        self.held.clear()
        self.held_bytes = 0

    def _take_out(self, h: _Held) -> None:
        """Subtract exactly what folding ``h`` added."""
        if h.codec is None:
            self.acc.add(masked_frame.read(h.body, self.n), subtract=True)
            return
        part = h.codec.decode_parts(h.body, self.n if h.kept is None else h.kept.size, check_finite=False)
        self.acc.fold(part.vals, h.coef, _positions(part, h.kept), subtract=True)


def _keep_nothing() -> None:
    """The release of a frame whose buffer belongs to no pool."""


def _positions(part: Decoded, kept: np.ndarray | None) -> np.ndarray | None:
    """The model coordinates of a decoded frame's values (None: all, in order)."""
    if kept is None:
        return part.idx
    return kept if part.idx is None else kept[part.idx]

