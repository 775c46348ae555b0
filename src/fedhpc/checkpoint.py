"""HDF5 checkpoints: one file per checkpoint, written atomically, validated on read.

Schema (``SCHEMA_VERSION`` 2), documented in the README:

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
``/clients/residual/<id>``
    each client's error-feedback residual (float32, attribute ``crc32c``).
``/metrics``
    attribute ``jsonl``: the metrics lines so far.

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
import time
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Iterable, Iterator

import h5py
import numpy as np

import fedhpc
from fedhpc import kernels as K
from fedhpc.config import RunConfig, load_config_text
from fedhpc.errors import FedHPCError
from fedhpc.models import Layout
from fedhpc.types import ClientHistory, ClientProfile

SCHEMA_VERSION = 2  # 2: the whole content is covered by content_sha256
DIGEST_ATTR = "content_sha256"
DIGEST_CHUNK_BYTES = 8 << 20
RNG_SCHEME = "numpy SeedSequence([seed, round, client, purpose]); partition SeedSequence([seed, purpose])"
_NAME = re.compile(r"^ckpt-(\d{6,})\.h5$")


class CheckpointError(FedHPCError):
    """A checkpoint is truncated, corrupt, of another schema, or of another run."""


@dataclass
class ServerState:
    """What rank 0 needs to continue a run after ``round`` completed rounds."""

    round: int
    weights: np.ndarray
    strategy: dict
    profiles: dict[int, ClientProfile]
    history: dict[int, ClientHistory]
    metrics: list[str]  # metrics.jsonl lines


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


def _fields_to_group(group: h5py.Group, records: list, cls) -> None:
    for f in dataclasses.fields(cls):
        values = [getattr(r, f.name) for r in records]
        if f.type in ("float | None", float, "float"):
            arr = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        elif f.type in ("bool", bool):
            arr = np.array(values, dtype=np.bool_)
        else:
            arr = np.array([-1 if v is None else v for v in values], dtype=np.int64)
        group.create_dataset(f.name, data=arr)


def _group_to_fields(group: h5py.Group, cls, n: int) -> list:
    columns = {}
    for f in dataclasses.fields(cls):
        if f.name not in group:
            raise CheckpointError(f"checkpoint lacks /clients field '{f.name}' of {cls.__name__}")
        col = group[f.name][()]
        if len(col) != n:
            raise CheckpointError(f"checkpoint field '{f.name}' has {len(col)} clients, expected {n}")
        if f.type == "float | None":
            columns[f.name] = [None if np.isnan(v) else float(v) for v in col]
        elif f.type in ("bool", bool):
            columns[f.name] = [bool(v) for v in col]
        elif f.type in ("float", float):
            columns[f.name] = [float(v) for v in col]
        else:
            columns[f.name] = [int(v) for v in col]
    return [cls(**{k: columns[k][i] for k in columns}) for i in range(n)]


def _check_records(path: Path, what: str, records: list) -> None:
    """Profiles and histories hold finite numbers: counts and measurements >= 0 (round
    indices >= -1, the 'never' value), an absent EMA None."""
    for r in records:
        for f in dataclasses.fields(r):
            v = getattr(r, f.name)
            if v is None or isinstance(v, bool):
                continue
            lo = -1 if f.name in ("last_selected", "excluded_until") else 0
            if not (np.isfinite(v) and v >= lo) or (f.name in ("speed", "bandwidth_mbps") and v <= 0):
                raise CheckpointError(f"checkpoint {path}: client {getattr(r, 'client_id', '?')}'s {what} "
                                      f"field {f.name} is {v}, not a valid value")


def write_checkpoint(directory: Path, cfg: RunConfig, layout: Layout, state: ServerState,
                     residuals: Iterable[tuple[int, np.ndarray]]) -> Path:
    """Write the checkpoint of ``state`` atomically and keep the newest ``cfg.checkpoint.keep``.

    ``residuals`` may be a generator (they are gathered from the trainer ranks
    one at a time and written as they come, so rank 0 never holds them all).
    The file appears under its final name only once complete and fsynced.
    """
    final = checkpoint_path(directory, state.round)
    tmp = final.with_name(f".{final.name}.tmp")
    try:
        directory.mkdir(parents=True, exist_ok=True)
        _write(tmp, cfg, layout, state, residuals)
        os.replace(tmp, final)
        _fsync_dir(directory)
    except OSError as exc:
        if tmp.parent.is_dir():
            tmp.unlink(missing_ok=True)
        raise CheckpointError(f"cannot write the checkpoint of round {state.round} to {directory} "
                              f"({exc.strerror or exc}); the checkpoints already there are kept: resume from them "
                              f"with `fedhpc run --resume {directory.parent}` once the directory is writable") from None
    for old in list_checkpoints(directory)[cfg.checkpoint.keep :]:
        old.unlink()
    return final


def _write(tmp: Path, cfg: RunConfig, layout: Layout, state: ServerState,
           residuals: Iterable[tuple[int, np.ndarray]]) -> None:
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
        model.attrs.update({"size": layout.size, "crc32c": _crc(state.weights)})
        strat = f.create_group("strategy")
        for key, value in state.strategy.items():
            if isinstance(value, np.ndarray):
                strat.create_dataset(key, data=value)
            else:
                strat.attrs[key] = value
        clients = f.create_group("clients")
        ids = sorted(state.profiles)
        _fields_to_group(clients.create_group("profile"), [state.profiles[c] for c in ids], ClientProfile)
        _fields_to_group(clients.create_group("history"), [state.history[c] for c in ids], ClientHistory)
        res = clients.create_group("residual")
        for cid, r in residuals:
            res.create_dataset(str(cid), data=r).attrs["crc32c"] = _crc(r)
        f.create_group("metrics").attrs["jsonl"] = "\n".join(state.metrics)
        f.flush()
        f.attrs[DIGEST_ATTR] = content_digest(f)
        f.flush()
        os.fsync(f.id.get_vfd_handle())


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
        for group in ("model", "strategy", "clients/profile", "clients/history", "clients/residual", "metrics"):
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
        state = self.server_state()  # everything resume reads must parse and make sense ...
        _check_records(self.path, "profile", list(state.profiles.values()))
        _check_records(self.path, "history", list(state.history.values()))
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
        profiles = _group_to_fields(self.file["clients/profile"], ClientProfile, n)
        history = _group_to_fields(self.file["clients/history"], ClientHistory, n)
        lines = str(self.file["metrics"].attrs["jsonl"])
        self._state = ServerState(self.round, self.weights(), strategy, {p.client_id: p for p in profiles},
                                  dict(enumerate(history)), [ln for ln in lines.split("\n") if ln])
        return self._state

    def residuals(self, clients: Iterable[int]) -> Iterator[tuple[int, np.ndarray]]:
        """(client, residual) for those of ``clients`` that have one, verified."""
        group = self.file["clients/residual"]
        for cid in clients:
            if str(cid) in group:
                ds = group[str(cid)]
                r = ds[()]
                if _crc(r) != int(ds.attrs["crc32c"]):
                    raise CheckpointError(f"checkpoint {self.path}: residual of client {cid} is corrupt")
                yield cid, r


def open_latest(directory: Path, cfg: RunConfig, layout: Layout, log) -> Checkpoint:
    """The newest checkpoint in ``directory`` that validates; older ones are tried
    in turn, saying why each newer one was refused."""
    candidates = list_checkpoints(directory)
    if not candidates:
        raise CheckpointError(f"no checkpoint (ckpt-NNNNNN.h5) in {directory}")
    for path in candidates:
        try:
            return Checkpoint(path, cfg, layout)
        except CheckpointError as exc:
            log.warning("refusing checkpoint: %s; falling back to an older one", exc)
    raise CheckpointError(f"no valid checkpoint in {directory} (tried {len(candidates)}; see the warnings above)")
