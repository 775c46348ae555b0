"""Sub-models: the smaller network is built for real and trains exactly as an honestly built one,
slices map to the full model's coordinates, widths are nested, their FLOPs shrink as they should,
a budget gives each client the widest width that fits, and models that cannot be sliced say why."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from fedhpc.config import ModelConfig, load_config
from fedhpc.errors import ConfigError
from fedhpc.models import Layout, build_model
from fedhpc.models import submodel as S
from fedhpc.models.cnn import conv_net
from fedhpc.models.lstm import CharLSTM
from fedhpc.runtime.submodels import Submodels, choose_width
from fedhpc.runtime.training import LocalTrainer
from fedhpc.strategy import get_strategy
from fedhpc.types import ClientHistory, ClientProfile, ClientResult, RoundOutcome

pytestmark = pytest.mark.unit

TRAIN = ["local.epochs=2", "local.batch_size=4", "local.lr=0.1", "local.momentum=0.5"]


def mlp(hidden=(8, 6)):
    torch.manual_seed(0)
    return build_model(ModelConfig(name="mlp", hidden=list(hidden)), (6,), 3, 0)


def subs_of(model, nested=True, seed=1):
    return Submodels(model, Layout(model), S.slicable(model, "mlp", "submodels.mode"), seed, nested, (6,))


def data(shape, classes, n=12):
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, *shape)).astype(np.float32), rng.integers(0, classes, n)


def test_hidden_pairs_are_the_shared_units_and_never_the_classes():
    assert S.hidden_pairs(mlp()) == [("1", "3"), ("3", "5")]
    cnn = build_model(ModelConfig(name="cnn-cifar"), (3, 32, 32), 10, 0)
    assert S.hidden_pairs(cnn) == [("0", "3"), ("7", "9")]  # conv1 -> conv2 channels, fc1 -> fc2 units
    lstm = build_model(ModelConfig(name="lstm-shakespeare"), (80,), 80, 0)
    assert S.hidden_pairs(lstm) == [("lstm", "out")]  # the LSTM's hidden units, in both its layers


def test_models_that_cannot_be_sliced_say_why():
    gru = nn.Sequential(nn.GRU(4, 8), nn.Linear(8, 3))
    with pytest.raises(ConfigError, match="recurrent layers other than a one-directional LSTM"):
        S.slicable(gru, "mlp", "submodels.mode")
    both_ways = nn.Sequential(nn.LSTM(4, 8, bidirectional=True), nn.Linear(16, 3))
    with pytest.raises(ConfigError, match="recurrent layers other than"):
        S.slicable(both_ways, "mlp", "submodels.mode")
    with pytest.raises(ConfigError, match="does not declare which layers share hidden units"):
        S.slicable(mlp(), "mine:factory", "submodels.mode")
    declared = mlp()
    declared.fedhpc_hidden = [("1", "3")]
    assert S.slicable(declared, "mine:factory", "k") == [("1", "3")]
    declared.fedhpc_hidden = [("1", "2")]  # a ReLU
    with pytest.raises(ConfigError, match=r"declares hidden pair \('1', '2'\)"):
        S.slicable(declared, "mine:factory", "k")
    with pytest.raises(ConfigError, match="no hidden layers"):
        S.slicable(build_model(ModelConfig(name="logreg"), (6,), 3, 0), "logreg", "k")


def test_random_slices_are_seeded_and_sized():
    subs = subs_of(mlp(), nested=False)
    kept = subs.kept(2, 3, 0.5)
    assert np.array_equal(kept, subs.kept(2, 3, 0.5)) and not np.array_equal(kept, subs.kept(2, 4, 0.5))
    assert np.all(np.diff(kept.astype(np.int64)) > 0)
    # 4 of 8 and 3 of 6 hidden units: W1 4x6 + b1 4 + W2 3x4 + b2 3 + W3 3x3 + b3 3
    assert kept.size == 24 + 4 + 12 + 3 + 9 + 3 == subs.size(0.5)
    assert subs.kept(0, 0, 1.0) is None


def test_nested_widths_are_inside_each_other_and_the_same_for_everyone():
    subs = subs_of(mlp((16, 12)))
    quarter, half = subs.kept(0, 0, 0.25), subs.kept(5, 9, 0.5)
    assert np.array_equal(quarter, subs.kept(7, 3, 0.25))  # not drawn: the first units
    assert np.isin(quarter, half).all() and quarter.size < half.size


@pytest.mark.parametrize("width", [0.25, 0.5, 0.75])
def test_a_slice_trains_bit_for_bit_as_an_honestly_built_smaller_mlp(width):
    """The sub-model of ``width`` against build_model with the narrower hidden sizes, loaded with
    the same slices: the same delta and loss to the bit (it is the same computation)."""
    cfg = load_config(None, TRAIN)
    full = mlp((16, 12))
    subs = subs_of(full)
    kept = subs.kept(0, 0, width)
    w = Layout(full).flatten(full)
    sub = subs.build(0, 0, width)
    x, y = data((6,), 3)
    got, got_loss = LocalTrainer(cfg, sub, Layout(sub), x, y).train(np.arange(12), w[kept], 0, 0, 0.0, lambda: False)
    honest = mlp((math.ceil(16 * width), math.ceil(12 * width)))
    layout = Layout(honest)
    assert layout.size == kept.size and [m.out_features for m in sub if isinstance(m, nn.Linear)] == \
        [m.out_features for m in honest if isinstance(m, nn.Linear)]
    want, want_loss = LocalTrainer(cfg, honest, layout, x, y).train(np.arange(12), w[kept], 0, 0, 0.0, lambda: False)
    assert got.tobytes() == want.tobytes() and got_loss == want_loss


def test_a_slice_trains_bit_for_bit_as_an_honestly_built_smaller_cnn():
    cfg = load_config(None, ["local.epochs=1", "local.batch_size=4", "local.lr=0.05"])
    shape, classes = (1, 8, 8), 3

    def net(channels, hidden):
        torch.manual_seed(0)
        return conv_net(shape, classes, channels, 3, hidden, "test")

    full = net((6, 5), 8)
    subs = Submodels(full, Layout(full), S.slicable(full, "cnn-medmnist", "k"), 1, nested=True)
    kept = subs.kept(0, 0, 0.5)
    sub = subs.build(0, 0, 0.5)
    x, y = data(shape, classes)
    start = Layout(full).flatten(full)[kept]
    got, _ = LocalTrainer(cfg, sub, Layout(sub), x, y).train(np.arange(12), start, 0, 0, 0.0, lambda: False)
    honest = net((3, 5), 4)  # half of conv1's 6 channels and of fc1's 8 units; conv2 feeds the flatten
    want, _ = LocalTrainer(cfg, honest, Layout(honest), x, y).train(np.arange(12), start, 0, 0, 0.0, lambda: False)
    assert got.tobytes() == want.tobytes()
    assert sub(torch.zeros(2, *shape)).shape == (2, classes)


def test_an_lstm_slice_trains_bit_for_bit_as_an_honestly_built_narrower_lstm():
    """A quarter of lstm-shakespeare's 256 hidden units, in every gate of both layers and in the
    output layer's inputs, against CharLSTM(hidden=64) loaded with the same slices."""
    cfg = load_config(None, ["local.epochs=1", "local.batch_size=4", "local.lr=0.5"])
    full = build_model(ModelConfig(name="lstm-shakespeare"), (80,), 80, 0)
    subs = Submodels(full, Layout(full), S.slicable(full, "lstm-shakespeare", "k"), 0, True, (80,))
    kept = subs.kept(0, 0, 0.25)
    assert np.all(np.diff(kept.astype(np.int64)) > 0)
    sub = subs.build(0, 0, 0.25)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 80, (8, 80)).astype(np.uint8), rng.integers(0, 80, 8)
    start = Layout(full).flatten(full)[kept]
    got, _ = LocalTrainer(cfg, sub, Layout(sub), x, y).train(np.arange(8), start, 0, 0, 0.0, lambda: False)
    honest = CharLSTM(80, hidden=64)
    want, _ = LocalTrainer(cfg, honest, Layout(honest), x, y).train(np.arange(8), start, 0, 0, 0.0, lambda: False)
    assert got.tobytes() == want.tobytes()
    def macs(h):  # two layers of four gates, 4 h (in + h) multiply-adds a step each, then the output layer
        return 80 * (4 * h * (8 + h) + 4 * h * (h + h)) + h * 80

    assert S.flops(full, (80,)) == macs(256) and subs.flops_ratio(0.25) == macs(64) / macs(256)


def test_a_quarter_width_costs_what_its_layers_say():
    """FLOPs by forward hooks against the layers' own arithmetic: 6x16 + 16x12 + 12x3 multiply-adds
    at full width, 6x4 + 4x3 + 3x3 at a quarter; and the parameters shrink likewise."""
    full = mlp((16, 12))
    subs = subs_of(full)
    assert S.flops(full, (6,)) == 6 * 16 + 16 * 12 + 12 * 3
    assert subs.flops_ratio(0.25) == (6 * 4 + 4 * 3 + 3 * 3) / (6 * 16 + 16 * 12 + 12 * 3)
    assert subs.size(0.25) == (6 * 4 + 4) + (4 * 3 + 3) + (3 * 3 + 3)
    cnn = build_model(ModelConfig(name="cnn-medmnist"), (1, 28, 28), 9, 0)
    c = Submodels(cnn, Layout(cnn), S.slicable(cnn, "cnn-medmnist", "k"), 0, True, (1, 28, 28))
    # conv1 (1->32, 3x3 on 28x28) and conv2 (32->64 on 14x14) dominate; a quarter keeps 8 channels, 32 units
    full_macs = 28 * 28 * 32 * 9 + 14 * 14 * 64 * 32 * 9 + 3136 * 128 + 128 * 9
    assert S.flops(cnn, (1, 28, 28)) == full_macs
    assert c.flops_ratio(0.25) == (28 * 28 * 8 * 9 + 14 * 14 * 64 * 8 * 9 + 3136 * 32 + 32 * 9) / full_macs


def test_the_budget_gives_the_widest_width_that_fits_the_deadline():
    subs = subs_of(mlp((64, 64)))
    widths = [1.0, 0.75, 0.5, 0.25]
    fast, slow = ClientProfile(0, speed=1.0), ClientProfile(1, speed=0.01)
    h = ClientHistory()
    # 1 s of compute at full width and speed 1: with a 1 s deadline and a 10 % margin nothing but a
    # narrower width fits; with 10 s, the full model
    assert choose_width(subs, widths, fast, h, 1.0, 1.0, 10.0, 0.1)[0] == 1.0
    w, why = choose_width(subs, widths, fast, h, 1.0, 1.0, 1.0, 0.1)
    assert w < 1.0 and subs.flops_ratio(w) <= 0.9 and "<=" in why
    assert choose_width(subs, widths, slow, h, 1.0, 1.0, 1.0, 0.1) == (0.25, "nothing fits 0.9s and 0 GB: the "
                                                                             "narrowest")
    # memory: a host that holds the quarter-width model's training but not the half's
    small = ClientProfile(2, speed=1.0, memory_gb=(subs.train_bytes(0.25, 16) + subs.train_bytes(0.5, 16)) / 2 / 2**30)
    assert choose_width(subs, widths, small, h, 1.0, 1.0, 10.0, 0.1, batch=16)[0] == 0.25
    assert subs.train_bytes(0.25, 16) < subs.train_bytes(0.5, 16) < subs.train_bytes(1.0, 16)
    assert choose_width(subs, widths, fast, h, 1.0, 1.0, 0.0, 0.1)[0] == 1.0  # no deadline
    missed = ClientHistory(consecutive_misses=1)
    w2, why = choose_width(subs, widths, fast, missed, 1.0, 1.0, 10.0, 0.1)
    assert w2 == 0.75 and "missed its last round" in why


def test_averaging_counts_each_coordinate_over_the_clients_that_trained_it():
    n = 6
    a = ClientResult(0, 10, 0.0, np.array([1, 1, 0, 0, 1, 0], np.float32), 0, 0, np.array([0, 1, 4], np.uint32))
    b = ClientResult(1, 30, 0.0, np.array([0, 3, 3, 0, 0, 0], np.float32), 0, 0, np.array([1, 2], np.uint32))
    new = get_strategy("fedavg").aggregate(np.zeros(n, np.float32), RoundOutcome(0, [a, b]))
    assert np.allclose(new, [1, (10 * 1 + 30 * 3) / 40, 3, 0, 1, 0])


@pytest.mark.parametrize("sets, message", [
    (["submodels.mode=random"], "set fed_dropout.rate > 0"),
    (["submodels.mode=budget", "fed_dropout.rate=0.5", "stragglers.deadline_s=1"], "fed_dropout.rate' must be 0"),
    (["submodels.mode=budget"], "stragglers.deadline_s' must be > 0"),
    (["submodels.widths=[]"], "non-empty list"),
    (["submodels.widths=[1.0, 1.5]"], "fractions in"),
    (["submodels.widths=[0.5, 0.5]"], "must not repeat"),
    (["submodels.margin=1"], "margin"),
    (["submodels.mode=budget", "stragglers.deadline_s=1", "strategy.name=median"], "must be off with the robust"),
])
def test_sub_model_configs_that_cannot_work_say_why(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=sets)
