"""Attacks in real jobs: attackers are ordinary clients to the rest of the system (the guard refuses
their boosted updates like anyone's), and an attacked run is the same model on any number of ranks."""

import pytest

from conftest import fedhpc_run, final_weights, metrics

pytestmark = pytest.mark.e2e

BASE = ["clients.total=10", "clients.per_round=10", "rounds=3", "local.epochs=1", "eval.every=3"]


def test_boosted_attackers_are_refused_by_the_norm_guard_like_any_client(tmp_path):
    """Three attackers boost their updates 1000x (model replacement); the guard (10x the median
    norm) refuses exactly them, every round, with its usual reason."""
    out = tmp_path / "run"
    fedhpc_run(3, out, *BASE, "attack.kind=scale", "attack.clients=[1,4,7]", "attack.scale=1000")
    for m in metrics(out):
        assert m["attackers_reported"] == 3 and m["failures"] == {"norm": 3} and m["clients_reported"] == 7


@pytest.mark.parametrize("attack", [
    ["attack.kind=sign-flip", "attack.fraction=0.3", "strategy.name=fedavg", "guard.norm_multiple=0"],
    ["attack.kind=label-flip", "attack.fraction=0.3", "strategy.name=centered-clipping", "attack.start_round=2"],
    ["attack.kind=alie", "attack.fraction=0.2", "strategy.name=bulyan", "strategy.f=2", "clients.total=12",
     "clients.per_round=12"],
    ["attack.kind=ipm", "attack.fraction=0.3", "strategy.name=fedavg", "guard.norm_multiple=0"],
], ids=["sign-flip", "label-flip", "alie-bulyan", "ipm-fedavg"])
def test_an_attacked_run_is_the_same_model_on_any_number_of_ranks(tmp_path, attack):
    runs = []
    for ranks in (2, 4):
        out = tmp_path / f"r{ranks}"
        fedhpc_run(ranks, out, *BASE, *attack)
        runs.append(out)
    assert final_weights(runs[0]).tobytes() == final_weights(runs[1]).tobytes()
    m = metrics(runs[0])
    attacked = [r["attackers_reported"] for r in m]
    assert attacked[-1] >= 2 and (attacked[0] == 0) == ("attack.start_round=2" in attack)
    clean = tmp_path / "clean"
    fedhpc_run(2, clean, *BASE, *[s for s in attack if not s.startswith("attack.")])
    assert final_weights(clean).tobytes() != final_weights(runs[0]).tobytes()  # the attack did something


def test_clients_the_guard_keeps_refusing_lose_the_selectors_trust(tmp_path):
    """Three boosted attackers among 10 clients, 7 a round, selection.trust = 0.3: a client the
    guard refused twice has reputation 1/4 and is never selected again (the seven honest clients
    fill the rounds), so no attacker is refused more than twice; the counts are checkpointed."""
    import h5py
    import numpy as np

    out = tmp_path / "run"
    fedhpc_run(3, out, "clients.total=10", "clients.per_round=7", "rounds=8", "local.epochs=1", "eval.every=8",
               "attack.kind=scale", "attack.clients=[1,4,7]", "attack.scale=1000", "selection.trust=0.3")
    m = metrics(out)
    with h5py.File(out / "checkpoints" / "ckpt-000008.h5") as f:
        kept, flagged = f["clients/history/kept"][()], f["clients/history/flagged"][()]
    bad = np.array([1, 4, 7])
    honest = np.setdiff1d(np.arange(10), bad)
    assert np.all(flagged[bad] <= 2) and np.all(kept[bad] == 0) and np.all(flagged[honest] == 0)
    assert sum(r["attackers_reported"] for r in m) == flagged[bad].sum() == sum(r["clients_flagged"] for r in m)
    assert np.all(flagged[bad] == 2) and m[-1]["attackers_reported"] == 0  # with this seed all three were caught
