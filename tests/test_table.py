"""The client registry as arrays: rows are views of the columns, and selectors see no difference."""

import dataclasses

import numpy as np
import pytest

from fedhpc.selection import get_selector
from fedhpc.table import ClientTable
from fedhpc.types import ClientFailure, ClientHistory, ClientProfile, ClientResult, RoundOutcome

pytestmark = pytest.mark.unit


def test_rows_read_and_write_the_columns():
    t = ClientTable(ClientHistory, 4)
    assert t.record(3) == ClientHistory() and len(t) == 4 and list(t) == [0, 1, 2, 3]
    h = t.setdefault(2, ClientHistory())
    h.selected += 2
    h.ema_seconds = 1.5
    assert t.columns["selected"].tolist() == [0, 0, 2, 0] and t[2].ema_seconds == 1.5
    h.ema_seconds = None  # None is NaN in the column, and reads back as None
    assert np.isnan(t.columns["ema_seconds"][2]) and t[2].ema_seconds is None
    t[1] = ClientHistory(reported=7, last_loss=0.25)
    assert t.record(1) == ClientHistory(reported=7, last_loss=0.25)
    assert isinstance(t[1].reported, int) and isinstance(t[1].last_loss, float)
    assert t.get(4, "absent") == "absent" and 4 not in t and -1 not in t and "1" not in t
    with pytest.raises(KeyError):
        t[4]
    with pytest.raises(TypeError, match="none can be deleted"):
        del t[0]
    p = ClientTable(ClientProfile, 3)
    assert [p[c].client_id for c in p] == [0, 1, 2] and p.record(1) == ClientProfile(1)
    assert p.columns["speed"].nbytes == 3 * 8  # 8 bytes per client and field, not an object each
    with pytest.raises(ValueError, match="missing"):
        ClientTable(ClientHistory, 2, {"selected": np.zeros(2)})


@pytest.mark.parametrize("name", ["random", "adaptive"])
def test_a_selector_chooses_and_learns_the_same_with_a_table_as_with_dicts(name):
    """Random rounds of reports and failures: the choices, the logs and the learned history
    are the same whether the runtime keeps dataclass objects or columns."""
    n, rng_data = 60, np.random.default_rng(3)
    speeds = np.exp(rng_data.normal(0, 0.5, n))
    objects = {c: ClientProfile(c, speed=float(speeds[c])) for c in range(n)}
    table = ClientTable(ClientProfile, n)
    table.columns["speed"][:] = speeds
    hist_d = {c: ClientHistory() for c in range(n)}
    hist_t = ClientTable(ClientHistory, n)
    sel_d, sel_t = get_selector(name), get_selector(name)
    for s in (sel_d, sel_t):
        s.set_costs(down_bytes=1000, up_bytes=100, reference_cost=1.0)
    for r in range(12):
        avail = sorted(rng_data.choice(n, 50, replace=False).tolist())
        a = sel_d.select(r, avail, 10, objects, hist_d, np.random.default_rng(r))
        b = sel_t.select(r, avail, 10, table, hist_t, np.random.default_rng(r))
        assert a == b
        results = [ClientResult(c, 10, float(rng_data.uniform(0.1, 2)), None, float(rng_data.uniform(1, 5)), 100)
                   for c in a[0] if rng_data.random() < 0.7]
        failures = [ClientFailure(c, str(rng_data.choice(["late", "error"]))) for c in a[0]
                    if c not in {x.client_id for x in results}]
        for s, h in ((sel_d, hist_d), (sel_t, hist_t)):
            s.update(RoundOutcome(r, results, failures), h, r)
    assert all(dataclasses.astuple(hist_d[c]) == dataclasses.astuple(hist_t.record(c)) for c in range(n))
