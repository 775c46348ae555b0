"""Per-client state (error-feedback residuals) within a memory budget.

A rank that hosts many virtual clients keeps each one's residual, a copy of
the model's size, for the whole run. :class:`ClientStates` holds the most
recently used ones in RAM, up to ``clients.state_memory_mb``, and spills the
others to one file of fixed-size records on node-local disk, each with its
CRC-32C, reading a client's record back when it is selected again. Spilling
moves bits and never changes them, so a run with a budget gives the same model
as one without.

With ``codec.residual_dtype = "bf16"`` residuals are stored as bfloat16 (half
the memory and disk): a client's residual is expanded to float32 for its
encode and rounded back (to nearest even) afterwards, which is deterministic
but not the same arithmetic as float32 storage.

This module imports no MPI: remote workers keep their clients' state with it too.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import numpy as np

from fedhpc import env
from fedhpc import kernels as K
from fedhpc.compress import get_codec
from fedhpc.config import RunConfig
from fedhpc.errors import ConfigError, FedHPCError

log = logging.getLogger("fedhpc.state")

ResidualDtype = Literal["float32", "bf16"]
ITEMSIZE = {"float32": 4, "bf16": 2}
MB = 1 << 20


class StateError(FedHPCError):
    """A client's state cannot be kept or read back: spill file full or unwritable, or a record corrupt."""


def state_bytes(n: int, dtype: ResidualDtype) -> int:
    """Bytes one client's residual of ``n`` values takes in RAM and on disk."""
    return n * ITEMSIZE[dtype]


def check_budget(budget_mb: float, n: int, dtype: ResidualDtype) -> None:
    """Refuse a ``clients.state_memory_mb`` too small to hold even one client's residual."""
    need = state_bytes(n, dtype)
    if 0 < budget_mb * MB < need:
        raise ConfigError(f"config key 'clients.state_memory_mb' is {budget_mb:g} MB, less than one client's "
                          f"error-feedback state ({need / MB:.3g} MB for a model of {n} parameters stored as "
                          f"{dtype}): raise it, or set 0 for no limit")


def spill_directory(cfg: RunConfig, run_dir: Path) -> Path:
    """Where a rank spills: ``clients.state_dir``, else the node-local scratch directory
    (SLURM's job-local one or ``$TMPDIR``, :data:`fedhpc.env.NODE_SCRATCH`), else the run
    directory (see :func:`spill_warning`)."""
    return Path(cfg.clients.state_dir or env.NODE_SCRATCH or run_dir / "client-state")


def spill_warning(cfg: RunConfig, run_dir: Path) -> str:
    """What to tell the user of where state spills ("" = nothing): the run directory is
    usually on a shared file system, slower and shared with every other node."""
    if cfg.clients.state_memory_mb and not cfg.clients.state_dir and not env.NODE_SCRATCH:
        return (f"no node-local scratch directory ($SLURM_TMPDIR, $TMPDIR) is set: client state beyond "
                f"clients.state_memory_mb spills under the run directory {spill_directory(cfg, run_dir)}; set "
                f"clients.state_dir to a node-local disk for speed")
    return ""


class ClientStates:
    """The residuals of the clients one rank or worker hosts, ``n`` values each.

    ``budget_bytes`` (0 = no limit) bounds the residuals held in RAM; beyond it the
    least recently used go to ``spill_path`` (created only when first needed; it
    must then be writable, see :meth:`prepare`). :meth:`checkout` gives a client's
    float32 residual for its encode, :meth:`commit` takes it back.
    """

    def __init__(self, n: int, dtype: ResidualDtype = "float32", budget_bytes: int = 0,
                 spill_path: Path | None = None):
        self.n, self.dtype = n, dtype
        self.record = state_bytes(n, dtype)
        if 0 < budget_bytes < self.record:  # for_run says so in the config's words (check_budget)
            raise ValueError(f"a client-state budget of {budget_bytes} bytes cannot hold one client's state "
                             f"({self.record} bytes)")
        if budget_bytes and spill_path is None:
            raise ValueError("a client-state budget needs a spill path")
        self.budget, self.spill_path = budget_bytes, spill_path
        self.ram: OrderedDict[int, np.ndarray] = OrderedDict()  # least recently used first
        # spilled clients: file slot and CRC-32C of the record, by client id (compact: arrays)
        self.slot = np.full(0, -1, dtype=np.int64)
        self.crc = np.zeros(0, dtype=np.uint32)
        self.slots = 0  # slots allocated in the spill file
        self.fd: int | None = None
        # bf16: the float32 residual of the client being encoded
        self.scratch = np.empty(n, dtype=np.float32) if dtype == "bf16" else None
        self.stored_dtype = np.dtype(np.float32 if dtype == "float32" else np.uint16)
        self.count = 0  # clients with a state
        # the array of the residual spilled last, for the next one to come in (fresh memory costs page faults)
        self.spare: np.ndarray | None = None
        self.spills = self.loads = 0  # records written to / read from the spill file

    @classmethod
    def for_run(cls, cfg: RunConfig, n: int, rank: int, job_id: int, run_dir: Path) -> ClientStates:
        """The store of hosting rank ``rank`` of a run, its spill file (when it has a
        budget) created already; raises ConfigError for a budget too small for one
        client or a spill directory that is not writable."""
        c, dtype = cfg.clients, cfg.codec.residual_dtype
        if not cfg.codec.error_feedback or get_codec(cfg.codec.name, **cfg.codec.params).lossless:
            return cls(n, dtype)  # its clients keep no state
        check_budget(c.state_memory_mb, n, dtype)
        budget = int(c.state_memory_mb * MB)
        path = spill_directory(cfg, run_dir) / f"fedhpc-{job_id:08x}-rank{rank:04d}.state"
        store = cls(n, dtype, budget, path if budget else None)
        store.prepare()
        return store

    # -- the spill file ---------------------------------------------------------
    def prepare(self) -> None:
        """Create the spill file now (when there is a budget), so that an unwritable
        directory is reported before the first round rather than in the middle of one.
        It gets a fresh name (``spill_path``'s stem is its prefix) and is unlinked at once:
        no other run can open or clobber it, and nothing is left behind however the job ends."""
        if self.budget and self.fd is None:
            assert self.spill_path is not None
            try:
                self.spill_path.parent.mkdir(parents=True, exist_ok=True)
                self.fd, name = tempfile.mkstemp(prefix=f"{self.spill_path.stem}-", suffix=self.spill_path.suffix,
                                                 dir=self.spill_path.parent)
                os.unlink(name)
            except OSError as exc:
                raise ConfigError(f"client-state spill file {self.spill_path} cannot be created "
                                  f"({exc.strerror or exc}): set clients.state_dir to a writable node-local "
                                  f"directory") from None

    def close(self) -> None:
        """Close the spill file (what it held is gone with it)."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _grow(self, cid: int) -> None:
        if cid >= self.slot.size:
            size = max(cid + 1, 2 * self.slot.size, 1024)
            self.slot = np.concatenate([self.slot, np.full(size - self.slot.size, -1, dtype=np.int64)])
            self.crc = np.concatenate([self.crc, np.zeros(size - self.crc.size, dtype=np.uint32)])

    def _spill(self, cid: int, stored: np.ndarray) -> None:
        """Write ``stored`` to ``cid``'s slot (a client keeps its slot for the run)."""
        self.prepare()
        assert self.fd is not None
        self._grow(cid)
        slot = int(self.slot[cid]) if self.slot[cid] >= 0 else self.slots
        data = memoryview(stored).cast("B")
        try:
            written = os.pwrite(self.fd, data, slot * self.record)
            why = "" if written == self.record else f"{written} of {self.record} bytes written: the disk is full"
        except OSError as exc:
            why = exc.strerror or str(exc)
        if why:
            raise StateError(f"cannot spill client {cid}'s state to {self.spill_path} ({why}): free space there, "
                             f"set clients.state_dir elsewhere or raise clients.state_memory_mb")
        if slot == self.slots:
            self.slots += 1
        self.slot[cid], self.crc[cid] = slot, K.crc32c(data)
        self.spills += 1

    def _read(self, cid: int, out: np.ndarray | None = None) -> np.ndarray:
        """``cid``'s spilled record, verified (into ``out`` when given)."""
        assert self.fd is not None
        out = np.empty(self.n, dtype=self.stored_dtype) if out is None else out
        offset = int(self.slot[cid]) * self.record
        try:
            got = os.preadv(self.fd, [memoryview(out).cast("B")], offset)
        except OSError as exc:
            raise StateError(f"cannot read client {cid}'s spilled state from {self.spill_path} "
                             f"({exc.strerror or exc})") from None
        if got != self.record or K.crc32c(out.view(np.uint8)) != int(self.crc[cid]):
            self.slot[cid] = -1  # dropped: the client starts again from no residual
            self.count -= 1
            raise StateError(f"client {cid}'s spilled state in {self.spill_path} at byte {offset} is corrupt "
                             f"({'checksum mismatch' if got == self.record else f'{got} of {self.record} bytes'}); "
                             f"it is dropped and the client starts again from no residual")
        self.loads += 1
        return out

    def _spilled(self, cid: int) -> bool:
        return cid < self.slot.size and self.slot[cid] >= 0

    def _make_room(self) -> None:
        """Spill least recently used residuals until one more fits the budget. A victim
        that cannot be written stays in RAM (over budget) and the error is raised."""
        while self.budget and self.ram and (len(self.ram) + 1) * self.record > self.budget:
            victim, stored = next(iter(self.ram.items()))
            self._spill(victim, stored)
            del self.ram[victim]
            self.spare = stored

    def clear(self) -> None:
        """Forget every client's state."""
        self.ram.clear()
        self.spare = None
        self.slot[:] = -1
        self.slots = self.count = 0

    # -- what a client step uses --------------------------------------------------
    def __contains__(self, cid: int) -> bool:
        return cid in self.ram or self._spilled(cid)

    def __len__(self) -> int:
        return self.count

    def _stored(self, cid: int) -> np.ndarray:
        """``cid``'s stored residual, now in RAM and most recently used (zeros if it had none)."""
        stored = self.ram.get(cid)
        if stored is not None:
            self.ram.move_to_end(cid)
            return stored
        fresh = not self._spilled(cid)
        self._make_room()
        if fresh:
            stored = self._take_spare()
            stored.fill(0)
        else:
            stored = self._read(cid, self.spare)  # a refused record leaves the spare one
            self.spare = None
        self.count += fresh
        self.ram[cid] = stored
        return stored

    def _take_spare(self) -> np.ndarray:
        """The spare array (or a new one), no longer spare."""
        out, self.spare = self.spare, None
        return np.empty(self.n, dtype=self.stored_dtype) if out is None else out

    def checkout(self, cid: int) -> np.ndarray:
        """``cid``'s residual as float32, to be updated in place by its encode and given back
        with :meth:`commit`. Raises :class:`StateError` when it cannot be had (the client
        then fails; nothing else is lost)."""
        stored = self._stored(cid)
        if self.scratch is None:
            return stored
        np.left_shift(stored, np.uint32(16), out=self.scratch.view(np.uint32), dtype=np.uint32)  # exact
        return self.scratch

    def commit(self, cid: int, residual: np.ndarray) -> None:
        """Take ``cid``'s residual back after its encode (rounded to bfloat16 when so stored)."""
        if self.scratch is not None:
            self.ram[cid][:] = K.to_bf16(residual)

    # -- checkpoints -------------------------------------------------------------
    def items(self) -> Iterator[tuple[int, np.ndarray]]:
        """(client, stored residual) in ascending client order, one at a time (a spilled
        one is read back, not kept): what a checkpoint shard holds."""
        ids = sorted(set(self.ram) | {int(c) for c in np.flatnonzero(self.slot >= 0)})
        for cid in ids:
            stored = self.ram.get(cid)
            if stored is None:
                try:
                    stored = self._read(cid)
                except StateError as exc:  # dropped, as it would be when next selected
                    log.warning("%s", exc)
                    continue
            yield cid, stored

    def put(self, cid: int, stored: np.ndarray) -> None:
        """Set ``cid``'s stored residual (from a checkpoint), spilling others if need be."""
        if stored.dtype != self.stored_dtype or stored.shape != (self.n,):
            raise StateError(f"client {cid}'s state is {stored.dtype}[{stored.size}], expected "
                             f"{self.stored_dtype}[{self.n}] (codec.residual_dtype = {self.dtype!r})")
        if cid not in self.ram:
            self._make_room()
            self.count += not self._spilled(cid)
            self.ram[cid] = self._take_spare()
        self.ram[cid][:] = stored
        self.ram.move_to_end(cid)

    @property
    def ram_bytes(self) -> int:
        """Bytes of residuals held in RAM."""
        return len(self.ram) * self.record
