"""Folding Updates where they are: a Folder fed sealed Updates in any order, then
settled on rank 0's verdict, gives the bits of the in-process strategy over the
accepted clients; what it cannot fold is refused with the reason, and left out."""

import numpy as np
import pytest
import torch
from torch import nn

from fedhpc.compress import get_codec, wire
from fedhpc.config import load_config
from fedhpc.models import Layout
from fedhpc.ring import Ring
from fedhpc.models import submodel
from fedhpc.runtime.submodels import Submodels
from fedhpc.runtime.fold import Folder, coefficient, coefficient_scale, round_total
from fedhpc.strategy import get_strategy
from fedhpc.types import ClientResult, RoundOutcome
from fedhpc.update import HEADER, Status, UpdateHeader, failure_update, seal_update

pytestmark = pytest.mark.unit

JOB, N, SCALE = 7, 3001, 256.0
CLIENTS = range(8)


def samples(cid):
    return 50 + 37 * cid


def sealed(codec, cid, delta, rnd=0, job=JOB, loss=None):
    frame = codec.encode(delta, seed=cid, headroom=HEADER.size)
    head = UpdateHeader(Status.OK, job, rnd, cid, samples(cid), 0.5 + 0.25 * cid if loss is None else loss)
    return seal_update(head, frame)


def make_deltas(n=N, seed=0):
    rng = np.random.default_rng(seed)
    return {c: (rng.normal(0, 1, n) * 10.0 ** rng.uniform(-5, -1, n)).astype(np.float32) for c in CLIENTS}


def folder(strategy, codec, n=N, feddrop=None):
    cfg = load_config(None, [f"clients.per_round={len(CLIENTS)}"])
    f = Folder(cfg, strategy, n, JOB, lambda cid: codec, feddrop, SCALE)
    f.begin(0, CLIENTS)
    return f


@pytest.mark.parametrize("codec_name", ["none", "int8", "topk-int8"])
@pytest.mark.parametrize("strategy_name, params", [("fedavg", {}), ("weighted", {"by": "loss"}), ("fedadam", {})])
def test_any_order_settled_equals_the_in_process_strategy_over_the_accepted(codec_name, strategy_name, params):
    codec = get_codec(codec_name, **({"ratio": 0.05} if codec_name == "topk-int8" else {}))
    updates = {c: sealed(codec, c, d) for c, d in make_deltas().items()}
    accepted = [0, 2, 3, 6, 7]
    weights = np.random.default_rng(1).normal(0, 0.1, N).astype(np.float32)
    got = []
    for seed in range(3):  # three arrival orders, everyone folded, then the excluded taken out
        strategy = get_strategy(strategy_name, **params)
        f = folder(strategy, codec)
        for c in np.random.default_rng(seed).permutation(list(CLIENTS)):
            account = f.take(updates[int(c)])
            assert account.refused == "" and account.head.client == c
            assert account.norm == pytest.approx(np.linalg.norm(codec.decode(updates[int(c)][HEADER.size:])), 1e-6)
        f.settle(accepted)
        total = round_total([coefficient(strategy, samples(c), 0.5 + 0.25 * c, SCALE) for c in accepted])
        got.append(strategy.step(weights, f.acc.mean(total)).tobytes())
    reference = get_strategy(strategy_name, **params)
    results = [ClientResult(c, samples(c), 0.5 + 0.25 * c, codec.decode(updates[c][HEADER.size:]), 0.0, 0)
               for c in reversed(accepted)]
    want = reference.aggregate(weights, RoundOutcome(0, results), Ring(40, len(CLIENTS)), norm=SCALE)
    assert got[0] == got[1] == got[2] == want.tobytes()


def test_updates_the_ring_cannot_hold_are_refused_with_the_reason_and_not_folded():
    codec = get_codec("none")
    f = folder(get_strategy("fedavg"), codec)
    huge = np.zeros(N, np.float32)
    huge[5] = 1e30
    nan = np.zeros(N, np.float32)
    nan[9] = np.nan
    nan_update = seal_update(UpdateHeader(Status.OK, JOB, 0, 1, samples(1), 0.5),
                             wire.pack(codec.codec_id, N, b"", [nan], HEADER.size))
    corrupt = sealed(codec, 2, make_deltas()[2])
    corrupt[HEADER.size + 100] ^= 0xFF
    assert (f.take(sealed(codec, 0, huge)).refused, f.take(nan_update).refused, f.take(corrupt).refused) == (
        "overflow", "nonfinite", "corrupt")
    assert "beyond the aggregation range" in f.take(sealed(codec, 3, huge)).detail
    assert not f.acc.acc.any() and not f.held


def test_what_is_not_for_this_round_and_rank_is_accounted_for_but_not_folded():
    codec = get_codec("none")
    f = folder(get_strategy("fedavg"), codec)
    d = make_deltas()
    f.begin(2, [0, 1])
    stale, other_job, unexpected = sealed(codec, 0, d[0], rnd=1), sealed(codec, 0, d[0], rnd=2, job=8), \
        sealed(codec, 5, d[5], rnd=2)
    for buf in (stale, other_job, unexpected):
        account = f.take(buf)
        assert account.refused == "" and np.isnan(account.norm)
    assert not f.acc.acc.any()
    f.take(sealed(codec, 1, d[1], rnd=2))
    once = f.acc.acc.copy()
    f.take(sealed(codec, 1, d[1] * 3, rnd=2))  # a second Update of a client is not folded again
    assert f.acc.acc.tobytes() == once.tobytes()
    failed = f.take(failure_update(Status.ERROR, JOB, 2, 0, "it broke"))
    assert failed.head.status == Status.ERROR and failed.detail == "it broke"


def test_clients_of_weight_zero_are_not_folded_but_report_their_norm():
    codec = get_codec("none")
    f = folder(get_strategy("weighted", by="loss"), codec)
    d = make_deltas()[4]
    account = f.take(sealed(codec, 4, d, loss=0.0))
    assert account.norm == pytest.approx(float(np.linalg.norm(d.astype(np.float64))), 1e-6)
    assert not f.acc.acc.any() and not f.held


def test_sub_model_frames_are_averaged_over_their_coverage_as_in_process():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 5), nn.Tanh(), nn.Linear(5, 3))
    layout = Layout(model)
    drop = Submodels(model, layout, submodel.hidden_pairs(model), 3, nested=False)
    codec = get_codec("int8")
    strategy = get_strategy("fedavg")
    f = folder(strategy, codec, layout.size, drop)
    f.begin(0, CLIENTS, dict.fromkeys(CLIENTS, 0.5))
    full = make_deltas(layout.size, seed=4)
    results = []
    for c in CLIENTS:
        kept = drop.kept(0, c, 0.5)
        f.take(sealed(codec, c, np.ascontiguousarray(full[c][kept])))
        dense = np.zeros(layout.size, np.float32)
        dense[kept] = codec.decode(sealed(codec, c, np.ascontiguousarray(full[c][kept]))[HEADER.size:])
        results.append(ClientResult(c, samples(c), 0.0, dense, 0.0, 0, kept))
    accepted = [1, 2, 5]
    f.settle(accepted)
    total = round_total([coefficient(strategy, samples(c), 0.0, SCALE) for c in accepted])
    want = strategy.aggregate(np.zeros(layout.size, np.float32),
                              RoundOutcome(0, [results[c] for c in accepted]), Ring(40, 8), norm=SCALE)
    assert f.acc.mean(total).tobytes() == want.tobytes()


def test_the_coefficient_scale_is_the_power_of_two_nearest_the_mean_shard():
    parts = [np.arange(k) for k in (100, 140, 150)]
    assert coefficient_scale(parts) == 128.0
    assert coefficient_scale([np.arange(0)]) == 1.0


def test_a_verdict_keeps_or_takes_out_at_once_and_lets_the_frame_go():
    codec = get_codec("topk-int8", ratio=0.1)
    d = make_deltas()
    released = []
    f = folder(get_strategy("fedavg"), codec)
    sizes = []
    for c in (0, 1, 2):
        buf = sealed(codec, c, d[c])
        sizes.append(buf.nbytes - HEADER.size)
        f.take(buf, lambda c=c: released.append(c))
    assert f.held_bytes == sum(sizes)
    f.verdict(0, 0, keep=True)
    f.verdict(0, 1, keep=False)
    assert released == [0, 1] and set(f.held) == {2} and f.held_bytes == sizes[2]
    f.take(sealed(codec, 1, d[1]), lambda: released.append("again"))  # a second Update of 1: not folded
    assert released[-1] == "again"
    f.settle([0, 2])
    assert released[-1] == 2 and not f.held
    ref = folder(get_strategy("fedavg"), codec)
    for c in (2, 0):
        ref.take(sealed(codec, c, d[c]))
    assert f.acc.acc.tobytes() == ref.acc.acc.tobytes()
