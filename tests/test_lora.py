"""Federated LoRA on an hf: model: only the adapters are federated, text becomes next-token blocks,
runs are the same on any number of trainer ranks and resume exactly, and bad input says what is wrong."""

import shutil

import h5py
import numpy as np
import pytest
from datafiles import write_text_users, write_tiny_llm

from conftest import fedhpc_run, final_weights, metrics
from fedhpc.config import load_config
from fedhpc.data import load_dataset
from fedhpc.errors import ConfigError
from fedhpc.models import Layout, build_model
from fedhpc.update import HEADER

USERS = {"alice": 40, "bob": 30, "carol": 25, "dave": 20}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    return write_tiny_llm(root / "model"), write_text_users(root / "text", USERS)


def lm_sets(files, *more):
    model, text = files
    return [f"model.name=hf:{model}", "data.name=text", f"data.root={text}", "data.partition=natural",
            "clients.total=4", "clients.per_round=4", "data.block=16", "local.lr=0.05", *more]


def build(files, *more):
    cfg = load_config(None, lm_sets(files, *more))
    data = load_dataset(cfg.data_source())
    return cfg, data, build_model(cfg.model, data.input_shape, data.num_classes, cfg.seed, cfg.lora)


@pytest.mark.unit
def test_the_federated_vector_is_exactly_the_adapters(files):
    _, _, model = build(files, "lora.r=4")
    layout = Layout(model)
    trainable, total = model.lm.get_nb_trainable_parameters()
    assert layout.size == trainable == 2 * 2 * (4 * 16)  # q_proj and v_proj (peft's Llama default): A and B
    assert all("lora_" in name for name in layout.names) and total > 10 * trainable
    assert len(layout.base) == 64  # the frozen base's SHA-256
    _, _, other = build(files, "lora.r=4", "seed=1")  # other adapters, the same base
    assert Layout(other).base == layout.base and not np.array_equal(Layout(other).flatten(other), layout.flatten(model))


@pytest.mark.unit
def test_text_becomes_next_token_blocks_per_user(files):
    cfg, data, _ = build(files)
    assert data.x_train.dtype == data.y_train.dtype == np.int64 and data.x_train.shape[1] == 16
    assert np.array_equal(data.x_train[:, 1:], data.y_train[:, :-1])  # the target is the next token
    assert data.users == sorted(USERS) and sorted(np.unique(data.groups)) == [0, 1, 2, 3]
    assert len(data.x_test) >= 4  # every user gives test blocks
    from fedhpc.data.partition import partition
    parts = partition(data.y_train, 4, "natural", 0, groups=data.groups)
    assert [len(p) for p in parts] == [int((data.groups == u).sum()) for u in range(4)]


@pytest.mark.unit
@pytest.mark.parametrize(("change", "match"), [
    (["model.name=hf:/nonexistent/model"], "'/nonexistent/model' does not exist"),
    (["lora.target_modules=[\"nope\"]"], "lora.target_modules"),
    (["data.block=4000"], "fewer than one block of data.block=4000"),
    (["data.name=digits", "data.partition=classes"], "data.name' must be 'text' with an hf: model"),
    (["data.partition=classes"], "must be 'iid' or 'natural'"),
    (["model.name=hf:"], "must be followed by the directory"),
    (["model.name=mlp"], "must be an hf: model with data.name = 'text'"),
    (["fed_dropout.rate=0.5"], "fed_dropout.rate' must be off with an hf: model"),
])
def test_bad_language_model_input_names_what_is_wrong(files, change, match):
    with pytest.raises(ConfigError, match=match):
        build(files, *change)


@pytest.mark.unit
def test_a_directory_that_is_not_a_model_is_refused(files):
    with pytest.raises(ConfigError, match="is not a Hugging Face model directory"):
        build(files, f"model.name=hf:{files[1]}", f"data.tokenizer={files[0]}")


@pytest.mark.unit
def test_a_model_directory_without_a_tokenizer_is_refused(files, tmp_path):
    bare = tmp_path / "bare"
    shutil.copytree(files[0], bare)
    for f in bare.glob("tokenizer*"):
        f.unlink()
    with pytest.raises(ConfigError, match="no tokenizer in"):
        build((bare, files[1]))


# compressed adapters with error feedback and FedProx's proximal term: what a user would combine
RUN = ("rounds=4", "codec.name=int8", "codec.error_feedback=true", "strategy.name=fedprox", "strategy.mu=0.01")


@pytest.fixture(scope="module")
def straight(files, tmp_path_factory):
    out = tmp_path_factory.mktemp("lora") / "run"
    fedhpc_run(3, out, *lm_sets(files, *RUN, "checkpoint.every=2"))
    return out


@pytest.mark.e2e
def test_a_lora_run_is_the_same_on_one_and_two_trainer_ranks(files, straight, tmp_path):
    one = tmp_path / "one"
    fedhpc_run(2, one, *lm_sets(files, *RUN))
    assert final_weights(one).tobytes() == final_weights(straight).tobytes()
    m = metrics(straight)
    assert all(r["perplexity"] == pytest.approx(np.exp(r["loss"])) for r in m if r["loss"] is not None)
    # what travels is the adapters alone, int8: 4 clients x (header + 512 bytes + the codec's scales and frame)
    assert all(4 * (HEADER.size + 512) <= r["bytes_up"] <= 4 * (HEADER.size + 512 + 256) for r in m)
    assert " ppl " in (straight / "run.log").read_text()


@pytest.mark.e2e
def test_a_lora_run_resumes_exactly_and_only_on_its_base(files, straight, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(straight, out)
    for p in (out / "checkpoints").glob("ckpt-000004*"):
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    fedhpc_run(3, out, *lm_sets(files, *RUN, "checkpoint.every=2"), resume=True)
    assert final_weights(out).tobytes() == final_weights(straight).tobytes()
    with h5py.File(straight / "checkpoints" / "ckpt-000004.h5") as f:
        assert f["model"].attrs["base_sha256"] == Layout(build(files)[2]).base  # the base never changed
    # the same path, another base (other random weights): the checkpoint is refused, and so resume fails
    other = tmp_path / "other-base"
    write_tiny_llm(other, seed=1)
    shutil.rmtree(files[0])
    shutil.copytree(other, files[0])
    try:
        proc = fedhpc_run(3, out, *lm_sets(files, *RUN, "rounds=6", "checkpoint.every=2"), resume=True, check=False)
    finally:
        shutil.rmtree(files[0])
        write_tiny_llm(files[0])
    assert proc.returncode != 0 and "another frozen base model" in proc.stderr
