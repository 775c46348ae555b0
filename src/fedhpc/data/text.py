"""``text``: documents from text files, tokenized with a Hugging Face tokenizer into fixed-length blocks.

``data.root`` is one ``.txt`` file (a document per line: one pool of blocks,
for the ``iid`` partition) or a directory of ``*.txt`` files, one user each (a
LEAF Shakespeare role, a hospital's notes...), which the ``natural`` partition
turns into clients. A user's documents are tokenized, joined with the
tokenizer's end-of-sequence token and cut into blocks of ``data.block``
tokens; a sample is a block and its target the block shifted by one token
(next-token prediction), so ``x`` and ``y`` are (N, block) int64. The last
``data.test_fraction`` of each user's blocks (at least one, from users with
two or more) are its test blocks, pooled into one test split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedhpc.data.dataset import Dataset, data_root
from fedhpc.errors import ConfigError


def load(cfg) -> Dataset:
    """The text dataset of ``cfg`` (a :class:`~fedhpc.config.DataConfig` whose ``tokenizer`` is set)."""
    from fedhpc.models.hf import load_tokenizer

    root = data_root(cfg, "a .txt file (a document per line) or a directory of .txt files (one user each)",
                     "Write your documents there, one per line.")
    files = sorted(root.glob("*.txt")) if root.is_dir() else [root]
    if not files:
        raise ConfigError(f"data.root '{root}' has no .txt files; put one file per user there (a document per line)")
    tokenizer = load_tokenizer(cfg.tokenizer)
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError(f"the tokenizer in '{cfg.tokenizer}' has no end-of-sequence token, which separates "
                          f"documents; set tokenizer.eos_token before saving it")
    parts = []
    for f in files:
        docs = [line for line in _read(f).splitlines() if line.strip()]
        ids = [t for ids in tokenizer(docs, add_special_tokens=False)["input_ids"] for t in [*ids, eos]] if docs else []
        if len(ids) < cfg.block + 1:
            raise ConfigError(f"'{f}' has {len(ids)} tokens, fewer than one block of data.block={cfg.block} and its "
                              f"next token: give it more text or lower data.block")
        parts.append(_blocks(np.asarray(ids, dtype=np.int64), cfg.block))
    trains, tests, groups = [], [], []
    for user, (x, y) in enumerate(parts):
        n_test = max(1, round(cfg.test_fraction * len(x))) if len(x) >= 2 else 0
        trains.append((x[: len(x) - n_test], y[: len(x) - n_test]))
        tests.append((x[len(x) - n_test :], y[len(x) - n_test :]))
        groups.append(np.full(len(x) - n_test, user, dtype=np.int64))
    x_test = np.concatenate([x for x, _ in tests])
    if not len(x_test):
        raise ConfigError(f"data.root '{root}' gives no test block: give some user at least two blocks of "
                          f"data.block={cfg.block} tokens")
    return Dataset("text", np.concatenate([x for x, _ in trains]), np.concatenate([y for _, y in trains]), x_test,
                   np.concatenate([y for _, y in tests]), len(tokenizer), np.concatenate(groups),
                   [f.stem for f in files])


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"'{path}' is not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"'{path}' cannot be read: {exc.strerror or exc}") from None


def _blocks(ids: np.ndarray, block: int) -> tuple[np.ndarray, np.ndarray]:
    """Consecutive blocks of ``block`` tokens and, as targets, the same blocks one token later."""
    n = (len(ids) - 1) // block
    x = ids[: n * block].reshape(n, block)
    y = ids[1 : n * block + 1].reshape(n, block)
    return x, y
