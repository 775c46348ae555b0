"""Structured federated dropout: the masked full model trains exactly the smaller network."""

import numpy as np
import pytest
import torch
from torch import nn

from fedhpc.config import load_config
from fedhpc.models import Layout
from fedhpc.runtime.feddropout import FedDropout, droppable
from fedhpc.runtime.training import LocalTrainer
from fedhpc.strategy import get_strategy
from fedhpc.types import ClientResult, RoundOutcome

pytestmark = pytest.mark.unit


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 3))


def test_hidden_units_are_droppable_but_not_the_classes():
    assert droppable(mlp()) == [("1", "3"), ("3", "5")]


def test_kept_coordinates_are_seeded_and_sized():
    m = mlp()
    fd = FedDropout(m, Layout(m), rate=0.5, seed=1)
    kept = fd.kept(round_=2, client=3)
    assert np.array_equal(kept, fd.kept(2, 3)) and not np.array_equal(kept, fd.kept(2, 4))
    assert np.all(np.diff(kept.astype(np.int64)) > 0)
    # 4 of 8 and 3 of 5 hidden units: W1 4x6 + b1 4 + W2 3x4 + b2 3 + W3 3x3 + b3 3
    assert kept.size == 24 + 4 + 12 + 3 + 9 + 3


def test_masked_training_equals_training_the_sub_network():
    cfg = load_config(None, ["local.epochs=2", "local.batch_size=4", "local.lr=0.1", "local.momentum=0.5"])
    full = mlp()
    layout = Layout(full)
    fd = FedDropout(full, layout, rate=0.5, seed=1)
    kept = fd.kept(0, 0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((12, 6)).astype(np.float32)
    y = rng.integers(0, 3, 12)
    w = layout.flatten(full)
    delta, loss = LocalTrainer(cfg, full, layout, x, y).train(np.arange(12), w, 0, 0, 0.0, lambda: False,
                                                              fd.mask(kept))
    # the same units as an honest smaller network
    h1 = np.flatnonzero(fd.mask(kept)[layout.offsets[1] : layout.offsets[2]])  # kept units of layer 1 (its bias)
    h2 = np.flatnonzero(fd.mask(kept)[layout.offsets[3] : layout.offsets[4]])
    sub = nn.Sequential(nn.Flatten(), nn.Linear(6, len(h1)), nn.Tanh(), nn.Linear(len(h1), len(h2)), nn.Tanh(),
                        nn.Linear(len(h2), 3))
    ref = mlp()
    with torch.no_grad():
        for layer, weight, bias in ((1, ref[1].weight[h1], ref[1].bias[h1]),
                                    (3, ref[3].weight[h2][:, h1], ref[3].bias[h2]),
                                    (5, ref[5].weight[:, h2], ref[5].bias)):
            sub[layer].weight.copy_(weight)
            sub[layer].bias.copy_(bias)
    sub_layout = Layout(sub)
    start = sub_layout.flatten(sub)
    sub_delta, sub_loss = LocalTrainer(cfg, sub, sub_layout, x, y).train(np.arange(12), start, 0, 0, 0.0,
                                                                         lambda: False)
    assert np.allclose(delta[kept], sub_delta, atol=1e-6) and abs(loss - sub_loss) < 1e-6
    dropped = np.setdiff1d(np.arange(layout.size), kept)
    assert np.all(delta[dropped] == 0)  # nothing leaks into dropped coordinates


def test_averaging_counts_each_coordinate_over_the_clients_that_trained_it():
    n = 6
    a = ClientResult(0, 10, 0.0, np.array([1, 1, 0, 0, 1, 0], np.float32), 0, 0, np.array([0, 1, 4], np.uint32))
    b = ClientResult(1, 30, 0.0, np.array([0, 3, 3, 0, 0, 0], np.float32), 0, 0, np.array([1, 2], np.uint32))
    new = get_strategy("fedavg").aggregate(np.zeros(n, np.float32), RoundOutcome(0, [a, b]))
    assert np.allclose(new, [1, (10 * 1 + 30 * 3) / 40, 3, 0, 1, 0])
