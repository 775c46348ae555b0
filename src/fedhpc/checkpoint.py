"""HDF5 checkpoints: one file per checkpoint, written atomically, validated on read.

A checkpoint is rank 0's file ``ckpt-NNNNNN.h5`` and, beside it, the directory
``ckpt-NNNNNN.states/`` of client-state shards: each hosting rank writes its own
clients' error-feedback residuals to ``rank-RRRR.h5``, all ranks in parallel,
and rank 0's file lists them (the manifest). The file is renamed into place
last, so a checkpoint exists only once every shard is complete.

Schema (``SCHEMA_VERSION`` 4), documented in the README:

``/`` attributes
    ``schema_version``, ``fedhpc_version``, ``round`` (rounds completed),
    ``config_toml`` (the resolved config), ``identity_crc`` (CRC-32C of the
    config identity, see :meth:`RunConfig.identity`), ``seed``,
    ``rng_scheme`` (how every random stream is derived), ``created`` (unix time),
    and ``content_sha256``: the digest of everything else in the file (every
    attribute, every dataset's name, dtype, shape and bytes; :func:`content_digest`),
    so that no byte resume relies on can change unnoticed.
``/model``
    one dataset per parameter (attributes ``name``, ``shape``, ``offset``) and
    ``flat`` attributes ``size`` and ``crc32c`` of the flat float32 vector.
``/strategy``
    server state: one dataset per array entry, scalars as attributes.
``/clients/profile/<field>``, ``/clients/history/<field>``
    one array per field, indexed by client id (``None`` stored as NaN / -1).
``/states``
    the manifest: attributes ``size`` (values per residual) and ``residual_dtype``
    (``float32``, or ``bf16`` stored as uint16 bits); datasets ``names`` (each
    shard's file name in the ``.states`` directory), ``clients`` (how many each
    holds) and ``sha256`` (each shard's index digest, :func:`index_digest`).

A shard holds ``ids`` (ascending client ids), ``sha256`` (the SHA-256 of each
client's residual bytes, one row of 32 bytes each) and ``residual`` (one row
per client). Its index digest covers the ids and the row digests, and each row
is checked against its digest when read, so the chain from rank 0's
``content_sha256`` reaches every byte of every shard that resume reads.
``/metrics``
    attribute ``jsonl``: the metrics lines so far.
``/async`` (the asynchronous modes only)
    attributes ``time_s`` (the run's clock) and ``next_ticket``; datasets
    ``tickets`` (k, 3: ticket id, client, model version), ``times`` (k, 2: start
    and completion clock time), ``update_bytes`` (k) and ``updates`` (their sealed
    Updates, concatenated): the tasks out, each with the Update it already sent.

Randomness needs no stored generator state: every stream (selection,
training, dropout faults, stochastic codecs, federated dropout) is drawn from
a generator seeded by ``derive_seed(seed, round, client, purpose)`` and the
partition from ``derive_seed(seed, purpose)``, so the seed and the round
counter restore them all exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Iterable, Iterator

import h5py
import numpy as np

import fedhpc
from fedhpc import kernels as K
from fedhpc.config import RunConfig, load_config_text
from fedhpc.errors import FedHPCError
from fedhpc.models import Layout
from fedhpc.table import ClientTable
from fedhpc.types import ClientHistory, ClientProfile

# 2: the whole content is covered by content_sha256; 3: client states in shards; 4: the client history
# counts the updates the defenses kept and flagged (trust)
SCHEMA_VERSION = 4
DIGEST_ATTR = "content_sha256"
DIGEST_CHUNK_BYTES = 8 << 20
RNG_SCHEME = "numpy SeedSequence([seed, round, client, purpose]); partition SeedSequence([seed, purpose])"
_NAME = re.compile(r"^ckpt-(\d{6,})\.h5$")


class CheckpointError(FedHPCError):
    """A checkpoint is truncated, corrupt, of another schema, or of another run."""


@dataclass(frozen=True)
class Shard:
    """One hosting rank's client-state shard of a checkpoint, as it reports it to rank 0
    (``error``: why it could not write it; then the checkpoint is not written)."""

    name: str  # file name in the checkpoint's .states directory
    clients: int
    sha256: str  # index digest (hex)
    error: str = ""


@dataclass
class ServerState:
    """What rank 0 needs to continue a run after ``round`` completed rounds."""

    round: int
    weights: np.ndarray
    strategy: dict
    profiles: ClientTable[ClientProfile]
    history: ClientTable[ClientHistory]
    metrics: list[str]  # metrics.jsonl lines
    noise_seed: int = 0  # differential privacy: the secret the noise is drawn from (0 = none)
    pending: Pending | None = None  # the asynchronous modes: the tasks out


@dataclass
class Pending:
    """The asynchronous modes' tasks out at a checkpoint, each with the Update it already
    sent (rank 0 lets the ranks finish what they were given before it writes one): per
    task its ticket id, client, model version, start and completion clock time."""

    time_s: float  # the run's clock when the checkpoint was taken
    next_ticket: int
    tickets: np.ndarray  # int64 (k, 3): id, client, version
    times: np.ndarray  # float64 (k, 2): start, finish (inf: the wall clock's, unknown)
    updates: list[np.ndarray]  # uint8, the task's sealed Update


def content_digest(f: h5py.File) -> str:
    """SHA-256 over every attribute (but the digest itself) and every dataset of ``f``, in name order."""
    h = hashlib.sha256()

    def attrs(obj) -> None:
        for key in sorted(obj.attrs):
            if obj.name == "/" and key == DIGEST_ATTR:
                continue
            value = obj.attrs[key]
            h.update(f"@{obj.name}/{key}={type(value).__name__}:".encode())
            h.update(np.asarray(value).tobytes() if not isinstance(value, (str, bytes)) else
                     (value.encode() if isinstance(value, str) else value))

    attrs(f)
    names: list[str] = []
    f.visit(names.append)
    for name in sorted(names):
        obj = f[name]
        attrs(obj)
        if isinstance(obj, h5py.Dataset):
            h.update(f"#{name}:{obj.dtype.str}:{obj.shape}:".encode())
            if obj.ndim == 0:
                h.update(np.ascontiguousarray(obj[()]).tobytes())
                continue
            # a few MB at a time: a whole layer of a big model read (and copied) at once
            # would double rank 0's memory for a moment
            rows = max(1, DIGEST_CHUNK_BYTES // max(1, obj.dtype.itemsize * (obj.size // max(obj.shape[0], 1))))
            for a in range(0, obj.shape[0], rows):
                h.update(memoryview(np.ascontiguousarray(obj[a : a + rows])).cast("B"))
    return h.hexdigest()


def _crc(arr: np.ndarray) -> int:
    return K.crc32c(np.ascontiguousarray(arr).view(np.uint8))


def identity_crc(cfg: RunConfig) -> int:
    return K.crc32c(json.dumps(cfg.identity(), sort_keys=True).encode())


def checkpoint_path(directory: Path, round_: int) -> Path:
    return directory / f"ckpt-{round_:06d}.h5"


def list_checkpoints(directory: Path) -> list[Path]:
    """Checkpoint files in ``directory``, newest (highest round) first."""
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def _table_to_group(group: h5py.Group, table: ClientTable) -> None:
    for name, column in table.columns.items():
        group.create_dataset(name, data=column)


def _group_to_table(group: h5py.Group, cls, n: int) -> ClientTable:
    columns = {}
    for f in dataclasses.fields(cls):
        if f.name not in group:
            raise CheckpointError(f"checkpoint lacks /clients field '{f.name}' of {cls.__name__}")
        columns[f.name] = group[f.name][()]
        if columns[f.name].shape != (n,):
            raise CheckpointError(f"checkpoint field '{f.name}' has {len(columns[f.name])} clients, expected {n}")
    return ClientTable(cls, n, columns)


def _check_table(path: Path, what: str, table: ClientTable) -> None:
    """Profiles and histories hold finite numbers: counts and measurements >= 0 (round
    indices >= -1, the 'never' value), an absent EMA None (NaN); speeds and bandwidths > 0."""
    optional = {f.name for f in dataclasses.fields(table.cls) if f.type == "float | None"}
    for name, col in table.columns.items():
        if col.dtype == np.bool_:
            continue
        values = col[~np.isnan(col)] if name in optional else col
        lo = -1 if name in ("last_selected", "excluded_until") else 0
        bad = ~np.isfinite(values) | (values < lo)
        if name in ("speed", "bandwidth_mbps"):
            bad |= values <= 0
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            client = int(np.flatnonzero(~np.isnan(col))[i]) if name in optional else i
            raise CheckpointError(f"checkpoint {path}: client {client}'s {what} field {name} is {values[i]}, "
                                  f"not a valid value")


def shard_directory(checkpoint: Path) -> Path:
    """The directory of the client-state shards of the checkpoint file ``checkpoint``."""
    return checkpoint.with_suffix(".states")


def shard_name(rank: int) -> str:
    return f"rank-{rank:04d}.h5"


def index_digest(size: int, dtype: str, ids: np.ndarray, digests: np.ndarray) -> str:
    """SHA-256 over a shard's residual size and dtype, its client ids and its row digests."""
    h = hashlib.sha256(f"{size}:{dtype}:".encode())
    h.update(np.ascontiguousarray(ids, dtype="<i8").tobytes())
    h.update(np.ascontiguousarray(digests, dtype=np.uint8).tobytes())
    return h.hexdigest()


def write_shard(directory: Path, rank: int, size: int, dtype: str,
                states: Iterable[tuple[int, np.ndarray]]) -> Shard:
    """Write one rank's client states (``states``: (client, stored residual) in ascending
    client order, read one at a time) to its shard in ``directory``, atomically."""
    final = directory / shard_name(rank)
    tmp = final.with_name(f".{final.name}.tmp")
    ids: list[int] = []
    digests: list[bytes] = []
    directory.mkdir(parents=True, exist_ok=True)
    with h5py.File(tmp, "w") as f:
        rows = f.create_dataset("residual", shape=(0, size), maxshape=(None, size), chunks=(1, size),
                                dtype=np.float32 if dtype == "float32" else "<u2")
        for cid, stored in states:
            if len(ids) == rows.shape[0]:
                rows.resize(max(64, 2 * len(ids)), axis=0)
            rows.write_direct(np.ascontiguousarray(stored), dest_sel=np.s_[len(ids)])
            ids.append(cid)
            digests.append(hashlib.sha256(memoryview(stored).cast("B")).digest())
        rows.resize(len(ids), axis=0)
        index = np.array(ids, dtype=np.int64), np.frombuffer(b"".join(digests), dtype=np.uint8).reshape(-1, 32)
        f.create_dataset("ids", data=index[0])
        f.create_dataset("sha256", data=index[1])
        f.attrs.update({"size": size, "residual_dtype": dtype})
        f.flush()
        os.fsync(f.id.get_vfd_handle())
    os.replace(tmp, final)
    _fsync_dir(directory)  # the rename too is on disk before rank 0 commits the checkpoint
    return Shard(final.name, len(ids), index_digest(size, dtype, *index))


def read_shard(path: Path, shard: Shard, size: int, dtype: str, wanted: Callable[[int], bool]
               ) -> Iterator[tuple[int, np.ndarray]]:
    """(client, stored residual) of the ``wanted`` clients in the shard file ``path``, each
    verified: the shard's index against the manifest's ``shard``, each row against its digest."""
    try:
        f = h5py.File(path, "r")
    except FileNotFoundError:
        raise CheckpointError(f"client-state shard {path} is missing") from None
    except OSError as exc:
        raise CheckpointError(f"client-state shard {path} is truncated or not an HDF5 file ({exc})") from None
    with f:
        ids, digests, rows = _shard_index(f, path, shard, size, dtype)
        for i in np.flatnonzero([wanted(int(c)) for c in ids]):
            row = np.empty(size, dtype=rows.dtype)
            try:
                rows.read_direct(row, source_sel=np.s_[i])
            except OSError as exc:
                raise CheckpointError(f"client-state shard {path}: client {ids[i]}'s residual is unreadable "
                                      f"({exc})") from None
            if hashlib.sha256(memoryview(row).cast("B")).digest() != digests[i].tobytes():
                raise CheckpointError(f"client-state shard {path}: client {ids[i]}'s residual does not match its "
                                      f"digest (corrupt or edited); resume from an older checkpoint with "
                                      f"`fedhpc run --resume FILE`")
            yield int(ids[i]), row


def _shard_index(f: h5py.File, path: Path, shard: Shard, size: int, dtype: str):
    """The ids, row digests and row dataset of an open shard, checked against the manifest."""
    try:
        ids, digests, rows = f["ids"][()], f["sha256"][()], f["residual"]
    except (KeyError, OSError) as exc:
        raise CheckpointError(f"client-state shard {path} is not a fedhpc shard ({exc})") from None
    want = np.dtype(np.float32 if dtype == "float32" else "<u2")
    if (ids.shape != (shard.clients,) or digests.shape != (shard.clients, 32) or rows.shape != (shard.clients, size)
            or rows.dtype != want or index_digest(size, dtype, ids, digests) != shard.sha256):
        raise CheckpointError(f"client-state shard {path} does not match its checkpoint's manifest (corrupt, "
                              f"edited or from another checkpoint)")
    return ids, digests, rows


def write_checkpoint(directory: Path, cfg: RunConfig, layout: Layout, state: ServerState,
                     shards: Callable[[], list[Shard]]) -> Path:
    """Write the checkpoint of ``state`` atomically and keep the newest ``cfg.checkpoint.keep``.

    ``shards()`` waits for the hosting ranks' client-state shards (written in
    parallel meanwhile into :func:`shard_directory`) and returns their reports,
    which become the manifest. The file appears under its final name only once
    it and every shard are complete and fsynced.
    """
    final = checkpoint_path(directory, state.round)
    tmp = final.with_name(f".{final.name}.tmp")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _write(tmp, shard_directory(final), cfg, layout, state, shards)
        os.replace(tmp, final)
        _fsync_dir(directory)
    except (OSError, CheckpointError) as exc:
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
        shutil.rmtree(shard_directory(final), ignore_errors=True)
        why = exc.strerror or exc if isinstance(exc, OSError) else exc
        raise CheckpointError(f"cannot write the checkpoint of round {state.round} to {directory} ({why}); the "
                              f"checkpoints already there are kept: resume from them with `fedhpc run --resume "
                              f"{directory.parent}` once the directory is writable") from None
    for old in list_checkpoints(directory)[cfg.checkpoint.keep :]:
        old.unlink()
        shutil.rmtree(shard_directory(old), ignore_errors=True)
    return final


def _write(tmp: Path, shard_dir: Path, cfg: RunConfig, layout: Layout, state: ServerState,
           shards: Callable[[], list[Shard]]) -> None:
    with h5py.File(tmp, "w") as f:
        f.attrs.update({
            "schema_version": SCHEMA_VERSION, "fedhpc_version": fedhpc.__version__, "round": state.round,
            "config_toml": cfg.to_toml(), "identity_crc": identity_crc(cfg), "seed": cfg.seed,
            "rng_scheme": RNG_SCHEME, "created": time.time(),
        })
        model = f.create_group("model")
        for name, shape, a, b in zip(layout.names, layout.shapes, layout.offsets, layout.offsets[1:]):
            ds = model.create_dataset(name, data=state.weights[a:b].reshape(shape))
            ds.attrs.update({"name": name, "shape": shape, "offset": a})
        model.attrs.update({"size": layout.size, "crc32c": _crc(state.weights), "base_sha256": layout.base})
        strat = f.create_group("strategy")
        for key, value in state.strategy.items():
            if isinstance(value, np.ndarray):
                strat.create_dataset(key, data=value)
            else:
                strat.attrs[key] = value
        clients = f.create_group("clients")
        _table_to_group(clients.create_group("profile"), state.profiles)
        _table_to_group(clients.create_group("history"), state.history)
        if state.pending is not None:
            _write_pending(f.create_group("async"), state.pending)
        f.create_group("metrics").attrs["jsonl"] = "\n".join(state.metrics)
        f["metrics"].attrs["dp_noise_seed"] = state.noise_seed  # only here: who has it can remove the noise
        f.flush()
        reports = shards()
        failed = [s.error for s in reports if s.error]
        if failed:
            raise CheckpointError(f"{len(failed)} client-state shard(s) could not be written: {failed[0]}")
        for s in reports:  # rank 0 must see every shard: a resume opens them from the run directory
            try:
                with h5py.File(shard_dir / s.name, "r") as sh:
                    _shard_index(sh, shard_dir / s.name, s, layout.size, cfg.codec.residual_dtype)
            except OSError as exc:
                raise CheckpointError(f"rank 0 cannot read the client-state shard {s.name} ({exc}): the run "
                                      f"directory must be on a file system every rank shares") from None
        manifest = f.create_group("states")
        manifest.attrs.update({"size": layout.size, "residual_dtype": cfg.codec.residual_dtype})
        # fixed-length strings: the digest reads their bytes (variable-length ones read as pointers)
        manifest.create_dataset("names", data=np.array([s.name.encode() for s in reports], dtype="S"))
        manifest.create_dataset("clients", data=np.array([s.clients for s in reports], dtype=np.int64))
        manifest.create_dataset("sha256", data=np.array([s.sha256.encode() for s in reports], dtype="S64"))
        f.flush()
        f.attrs[DIGEST_ATTR] = content_digest(f)
        f.flush()
        os.fsync(f.id.get_vfd_handle())


def _write_pending(g: h5py.Group, p: Pending) -> None:
    g.attrs.update({"time_s": p.time_s, "next_ticket": p.next_ticket})
    g.create_dataset("tickets", data=np.asarray(p.tickets, np.int64).reshape(-1, 3))
    g.create_dataset("times", data=np.asarray(p.times, np.float64).reshape(-1, 2))
    sizes = np.array([u.nbytes for u in p.updates], np.int64)
    g.create_dataset("update_bytes", data=sizes)
    g.create_dataset("updates", data=np.concatenate(p.updates) if p.updates else np.empty(0, np.uint8))


def _read_pending(path: Path, g: h5py.Group) -> Pending:
    tickets, times, sizes = g["tickets"][()], g["times"][()], g["update_bytes"][()]
    blob = g["updates"][()]
    k = len(tickets)
    if tickets.shape != (k, 3) or times.shape != (k, 2) or sizes.shape != (k,) or (sizes < 0).any() \
            or int(sizes.sum()) != blob.size:
        raise CheckpointError(f"checkpoint {path}: /async does not describe {k} tasks consistently")
    ends = np.cumsum(sizes)
    return Pending(float(g.attrs["time_s"]), int(g.attrs["next_ticket"]), tickets, times,
                   [blob[e - n : e] for e, n in zip(ends, sizes)])


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Checkpoint:
    """An open, validated checkpoint file (use as a context manager)."""

    def __init__(self, path: Path, cfg: RunConfig | None = None, layout: Layout | None = None):
        self.path = Path(path)
        self._state: ServerState | None = None  # parsed once, by the validation
        try:
            self.file = h5py.File(self.path, "r")
        except FileNotFoundError:
            raise CheckpointError(f"checkpoint {self.path} does not exist") from None
        except OSError as exc:
            raise CheckpointError(f"checkpoint {self.path} is truncated or not an HDF5 file ({exc})") from None
        try:
            self._validate(cfg, layout)
        except CheckpointError:
            self.file.close()
            raise
        except Exception as exc:  # whatever else a file that passed its digest can still hold wrong
            self.file.close()
            raise CheckpointError(f"checkpoint {self.path} is not a valid fedhpc checkpoint "
                                  f"({type(exc).__name__}: {exc})") from None

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.file.close()

    def _validate(self, cfg: RunConfig | None, layout: Layout | None) -> None:
        a = self.file.attrs
        version = a.get("schema_version")
        if version != SCHEMA_VERSION:
            raise CheckpointError(f"checkpoint {self.path} has schema version {version}; this fedhpc "
                                  f"{fedhpc.__version__} reads version {SCHEMA_VERSION}")
        digest = a.get(DIGEST_ATTR)
        if digest is None:
            raise CheckpointError(f"checkpoint {self.path} has no {DIGEST_ATTR} attribute (edited or not written "
                                  f"by fedhpc)")
        try:
            actual = content_digest(self.file)
        except OSError as exc:
            raise CheckpointError(f"checkpoint {self.path}: content unreadable ({exc})") from None
        if actual != str(digest):
            raise CheckpointError(f"checkpoint {self.path}: content digest mismatch (corrupt or edited file)")
        for group in ("model", "strategy", "clients/profile", "clients/history", "states", "metrics"):
            if group not in self.file:
                raise CheckpointError(f"checkpoint {self.path} lacks the group /{group}")
        if cfg is not None and int(a["identity_crc"]) != identity_crc(cfg):
            raise CheckpointError(
                f"checkpoint {self.path} belongs to a run with a different configuration; resume with the "
                f"config it was written with (stored in the checkpoint, `fedhpc inspect {self.path}`) — only "
                f"rounds, [checkpoint], [eval] and stragglers.timeout_s may change")
        if layout is not None and int(self.file["model"].attrs["size"]) != layout.size:
            raise CheckpointError(f"checkpoint {self.path} holds a model of {self.file['model'].attrs['size']} "
                                  f"parameters, the configured model has {layout.size}")
        if layout is not None and str(self.file["model"].attrs.get("base_sha256", "")) != layout.base:
            raise CheckpointError(f"checkpoint {self.path} holds adapters of another frozen base model than the "
                                  f"configured one (base_sha256 differs): resume with the base it was trained on")
        if self.state_size != int(self.file["model"].attrs["size"]):
            raise CheckpointError(f"checkpoint {self.path}: its client states have {self.state_size} values each, "
                                  f"its model {self.file['model'].attrs['size']}")
        for shard in self.shards():  # every shard is there and its index is the manifest's
            try:
                with h5py.File(self.shard_path(shard), "r") as f:
                    _shard_index(f, self.shard_path(shard), shard, self.state_size, self.residual_dtype)
            except OSError as exc:
                raise CheckpointError(f"checkpoint {self.path}: client-state shard {shard.name} is missing or "
                                      f"unreadable ({exc})") from None
        state = self.server_state()  # everything resume reads must parse and make sense ...
        _check_table(self.path, "profile", state.profiles)
        _check_table(self.path, "history", state.history)
        if cfg is not None:
            from fedhpc.strategy import get_strategy

            try:  # ... and the strategy must take its state back
                get_strategy(cfg.strategy.name, **cfg.strategy.params).load_state_dict(state.strategy)
            except ValueError as exc:
                raise CheckpointError(f"checkpoint {self.path}: strategy state refused ({exc})") from None

    @property
    def round(self) -> int:
        return int(self.file.attrs["round"])

    def config(self) -> RunConfig:
        return load_config_text(str(self.file.attrs["config_toml"]))

    def weights(self) -> np.ndarray:
        model = self.file["model"]
        out = np.empty(int(model.attrs["size"]), dtype=np.float32)
        try:
            for ds in model.values():
                a = int(ds.attrs["offset"])
                out[a : a + ds.size] = ds[()].reshape(-1)
        except (OSError, KeyError, ValueError) as exc:
            raise CheckpointError(f"checkpoint {self.path}: model data unreadable ({exc})") from None
        if _crc(out) != int(model.attrs["crc32c"]):
            raise CheckpointError(f"checkpoint {self.path}: model checksum mismatch (corrupt file)")
        return out

    def server_state(self) -> ServerState:
        """What rank 0 resumes from (read once: the validation already parsed it)."""
        if self._state is not None:
            return self._state
        strat = self.file["strategy"]
        strategy = {k: v[()] for k, v in strat.items()} | {k: v.item() if hasattr(v, "item") else v
                                                             for k, v in strat.attrs.items()}
        n = len(self.file["clients/profile/client_id"])
        profiles = _group_to_table(self.file["clients/profile"], ClientProfile, n)
        if not np.array_equal(profiles.columns["client_id"], np.arange(n)):
            raise CheckpointError(f"checkpoint {self.path}: /clients/profile/client_id is not 0 .. {n - 1}")
        history = _group_to_table(self.file["clients/history"], ClientHistory, n)
        lines = str(self.file["metrics"].attrs["jsonl"])
        pending = _read_pending(self.path, self.file["async"]) if "async" in self.file else None
        self._state = ServerState(self.round, self.weights(), strategy, profiles, history,
                                  [ln for ln in lines.split("\n") if ln],
                                  int(self.file["metrics"].attrs.get("dp_noise_seed", 0)), pending)
        return self._state

    @property
    def state_size(self) -> int:
        return int(self.file["states"].attrs["size"])

    @property
    def residual_dtype(self) -> str:
        return str(self.file["states"].attrs["residual_dtype"])

    def shards(self) -> list[Shard]:
        """The manifest: every client-state shard of this checkpoint."""
        m = self.file["states"]
        return [Shard(n.decode(), int(c), d.decode()) for n, c, d in zip(m["names"][()], m["clients"][()],
                                                                        m["sha256"][()])]

    def shard_path(self, shard: Shard) -> Path:
        if Path(shard.name).name != shard.name:  # a name is a file in the .states directory, nothing else
            raise CheckpointError(f"checkpoint {self.path}: manifest names a shard outside its directory: "
                                  f"{shard.name!r}")
        return shard_directory(self.path) / shard.name


def resume_from(path: Path, cfg: RunConfig, layout: Layout, restore: Callable[[Checkpoint], None], log) -> None:
    """Open the checkpoint ``path`` and ``restore(it)``; for a directory of checkpoints,
    the newest one that validates and restores, older ones tried in turn, saying why
    each newer one was refused (a shard row that fails its digest is found by the
    hosting ranks as they restore, so restoring is part of the trial)."""
    if not path.is_dir():
        with Checkpoint(path, cfg, layout) as ckpt:
            restore(ckpt)
        return
    candidates = list_checkpoints(path)
    if not candidates:
        raise CheckpointError(f"no checkpoint (ckpt-NNNNNN.h5) in {path}")
    for candidate in candidates:
        try:
            with Checkpoint(candidate, cfg, layout) as ckpt:
                restore(ckpt)
            return
        except CheckpointError as exc:
            log.warning("refusing checkpoint: %s; falling back to an older one", exc)
    raise CheckpointError(f"no valid checkpoint in {path} (tried {len(candidates)}; see the warnings above)")
