"""Models: the paper's sizes, the flat layout, federated dropout, and users' own factories."""

import sys

import numpy as np
import pytest
import torch
from torch import nn

from fedhpc.config import ModelConfig, load_config
from fedhpc.errors import ConfigError
from fedhpc.models import MODELS, Layout, build_model, submodel
from fedhpc.runtime.training import LocalTrainer
from fedhpc.seeds import SEED_TRAIN, derive_seed

pytestmark = pytest.mark.unit

# name -> (sample shape, classes, input dtype, parameters)
CASES = {
    "mlp": ((64,), 10, torch.float32, 64 * 64 + 64 + 64 * 10 + 10),
    "logreg": ((64,), 10, torch.float32, 64 * 10 + 10),
    "cnn-cifar": ((3, 32, 32), 10, torch.float32, 2_156_490),
    "cnn-medmnist": ((3, 28, 28), 9, torch.float32, 896 + 18_496 + 3136 * 128 + 128 + 128 * 9 + 9),
    "lstm-shakespeare": ((80,), 80, torch.int64, 819_920),
}


def sample(shape, classes, dtype, n=5):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, classes, (n, *shape), generator=g) if dtype == torch.int64 else torch.randn(n, *shape)


def test_every_registered_model_is_tested():
    assert set(MODELS) == set(CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_models_have_the_papers_sizes_and_map_samples_to_logits(name):
    shape, classes, dtype, size = CASES[name]
    model = build_model(ModelConfig(name=name), shape, classes, seed=0)
    assert Layout(model).size == size
    assert model(sample(shape, classes, dtype)).shape == (5, classes)


@pytest.mark.parametrize("name", list(CASES))
def test_flat_layout_round_trips_and_seed_fixes_the_initial_model(name):
    shape, classes, dtype, _ = CASES[name]
    a, b = build_model(ModelConfig(name=name), shape, classes, 1), build_model(ModelConfig(name=name), shape, classes, 2)
    layout = Layout(a)
    assert np.array_equal(layout.flatten(a), layout.flatten(build_model(ModelConfig(name=name), shape, classes, 1)))
    assert not np.array_equal(layout.flatten(a), layout.flatten(b))
    layout.load(b, layout.flatten(a))
    x = sample(shape, classes, dtype)
    a.eval(), b.eval()
    assert torch.equal(a(x), b(x))


def test_cnn_with_one_channel_and_mlp_with_hidden_sizes():
    assert build_model(ModelConfig(name="cnn-medmnist"), (1, 28, 28), 2, 0)(torch.randn(2, 1, 28, 28)).shape == (2, 2)
    mlp = build_model(load_config(None, ["model.hidden=[32, 16]"]).model, (8,), 3, 0)
    assert [m.out_features for m in mlp if isinstance(m, nn.Linear)] == [32, 16, 3]
    assert build_model(ModelConfig(name="mlp", hidden=[]), (8,), 3, 0)(torch.randn(1, 8)).shape == (1, 3)


@pytest.mark.parametrize("name,shape,classes,message", [
    ("cnn-cifar", (64,), 10, "needs images of shape \\(channels, height, width\\)"),
    ("lstm-shakespeare", (64,), 10, "use it with data.name = shakespeare"),
    ("resnet", (64,), 10, "available models: mlp, logreg, cnn-cifar"),
])
def test_a_model_that_does_not_fit_the_data_is_a_clear_error(name, shape, classes, message):
    with pytest.raises(ConfigError, match=message):
        build_model(ModelConfig(name=name), shape, classes, 0)


USER_MODULE = '''
import torch
from torch import nn

def tiny(input_shape, num_classes, cfg):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0], 4), nn.Tanh(), nn.Linear(4, num_classes))

def not_a_module(input_shape, num_classes, cfg):
    return 42

def double(input_shape, num_classes, cfg):
    return nn.Linear(input_shape[0], num_classes).double()
'''


def test_users_own_model_factory(tmp_path, monkeypatch):
    (tmp_path / "my_models.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model(load_config(None, ["model.name=my_models:tiny"]).model, (6,), 3, 0)
    assert model(torch.randn(2, 6)).shape == (2, 3) and Layout(model).size == 6 * 4 + 4 + 4 * 3 + 3
    assert submodel.hidden_pairs(model) == [("1", "3")]
    for name, message in [("my_models:nothing", "has no callable 'nothing'; expected def nothing\\(input_shape"),
                          ("no_such_module_xyz:f", "cannot import module 'no_such_module_xyz'.*PYTHONPATH"),
                          ("my_models:not_a_module", "returned a int, not a torch.nn.Module"),
                          ("my_models:double", "must have float32 parameters.*these are not: weight, bias")]:
        with pytest.raises(ConfigError, match=message):
            build_model(ModelConfig(name=name), (6,), 3, 0)
    sys.modules.pop("my_models", None)


@pytest.mark.parametrize("sets,message", [
    (["model.hidden=64"], "'model.hidden' must be a list"),
    (["model.hidden=[0]"], "'model.hidden' must be a list of layer sizes >= 1"),
    (["model.name=pkg:"], "must be a model name or 'package.module:factory'"),
])
def test_model_config_errors_name_the_key(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, sets)


def test_bind_makes_parameters_and_gradients_views_of_flat_buffers_that_survive_training():
    cfg = load_config(None, ["local.epochs=2", "local.batch_size=4", "local.lr=0.1"])
    model = build_model(ModelConfig(name="mlp", hidden=[16, 8]), (6,), 3, seed=0)
    layout = Layout(model)
    before = layout.flatten(model)
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((10, 6)).astype(np.float32), rng.integers(0, 3, 10)
    trainer = LocalTrainer(cfg, model, layout, x, y)
    assert np.array_equal(trainer.params.numpy(), before)  # binding keeps the values
    out = np.full(layout.size, np.nan, np.float32)
    delta, _ = trainer.train(np.arange(10), before, 0, 0, 0.0, lambda: False, out=out)
    assert delta is out and np.any(delta != 0)
    assert np.allclose(layout.flatten(model), before + delta, atol=1e-6)
    for p, a in zip(model.parameters(), layout.offsets):  # still views after backward and step
        assert p.data_ptr() == trainer.params[a:].data_ptr() and p.grad.data_ptr() == trainer.grads[a:].data_ptr()


def test_fedprox_gradient_term_matches_the_proximal_loss_of_the_paper():
    """mu (w - w0) added to the gradient must train exactly like mu/2 ||w - w0||^2 added to the loss."""
    cfg = load_config(None, ["local.epochs=3", "local.batch_size=5", "local.lr=0.2"])
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((15, 6)).astype(np.float32), rng.integers(0, 3, 15)
    model = build_model(ModelConfig(name="mlp", hidden=[8]), (6,), 3, seed=0)
    layout = Layout(model)
    w0 = layout.flatten(model) + rng.standard_normal(layout.size).astype(np.float32)
    mu = 0.7
    delta, _ = LocalTrainer(cfg, model, layout, x, y).train(np.arange(15), w0, 4, 2, mu, lambda: False)

    ref = build_model(ModelConfig(name="mlp", hidden=[8]), (6,), 3, seed=0)
    layout.load(ref, w0)
    anchor = [p.detach().clone() for p in ref.parameters()]
    opt = torch.optim.SGD(ref.parameters(), lr=0.2)
    gen = torch.Generator().manual_seed(derive_seed(cfg.seed, 4, 2, SEED_TRAIN))
    for _ in range(3):
        order = torch.randperm(15, generator=gen)
        for b in range(0, 15, 5):
            batch = order[b : b + 5]
            opt.zero_grad()
            loss = nn.functional.cross_entropy(ref(torch.from_numpy(x)[batch]), torch.from_numpy(y)[batch])
            loss = loss + 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in zip(ref.parameters(), anchor))
            loss.backward()
            opt.step()
    assert np.allclose(delta, layout.flatten(ref) - w0, atol=1e-5)
    assert np.abs(delta).max() > 1e-2


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_a_client_trains_the_same_whatever_the_rank_trained_before(optimizer):
    """The trainer reuses one optimizer: momentum and Adam moments must not leak from client to client."""
    cfg = load_config(None, ["local.epochs=2", "local.batch_size=4", f"local.optimizer={optimizer}",
                             "local.momentum=0.9" if optimizer == "sgd" else "local.lr=0.01"])
    model = build_model(ModelConfig(name="mlp", hidden=[8]), (6,), 3, seed=0)
    layout = Layout(model)
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((20, 6)).astype(np.float32), rng.integers(0, 3, 20)
    w = layout.flatten(model)
    trainer = LocalTrainer(cfg, model, layout, x, y)
    first, _ = trainer.train(np.arange(10), w, 0, 1, 0.0, lambda: False)
    trainer.train(np.arange(10, 20), w, 0, 2, 0.0, lambda: False)
    again, _ = trainer.train(np.arange(10), w, 0, 1, 0.0, lambda: False)
    assert np.array_equal(first, again) and np.abs(first).max() > 0


@pytest.mark.parametrize("name,momentum", [("sgd", 0.0), ("sgd", 0.9), ("adam", 0.0)])
def test_flat_optimizers_step_exactly_like_torch_optim(name, momentum):
    from fedhpc.runtime.optim import FlatAdam, FlatSGD

    torch.manual_seed(0)
    ref = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    ours = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3))
    ours.load_state_dict(ref.state_dict())
    layout = Layout(ours)
    params, grads = layout.bind(ours)
    start = params.numpy().copy()
    if name == "sgd":
        opt, torch_opt = FlatSGD(params, grads, 0.1, momentum), torch.optim.SGD(ref.parameters(), 0.1, momentum)
    else:
        opt, torch_opt = FlatAdam(params, grads, 0.01), torch.optim.Adam(ref.parameters(), 0.01)
    g = torch.Generator().manual_seed(1)
    for _ in range(6):
        x, y = torch.randn(8, 5, generator=g), torch.randint(0, 3, (8,), generator=g)
        torch_opt.zero_grad()
        nn.functional.cross_entropy(ref(x), y).backward()
        torch_opt.step()
        grads.zero_()
        nn.functional.cross_entropy(ours(x), y).backward()
        opt.step()
    assert np.allclose(layout.flatten(ours), layout.flatten(ref), rtol=0, atol=1e-6)
    assert np.abs(layout.flatten(ours) - start).max() > 1e-2  # it did train
