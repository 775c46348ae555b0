"""The paper and overhead benchmarks run end to end at their tiny size (the experiments themselves are not run
in CI: `make bench-paper`, `make bench-overhead`), and the peer benchmark's data export matches fedhpc's split
(Flower itself is installed only by `make bench-peers`)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import fedhpc_run, mpi_env
from datafiles import write_leaf_shakespeare

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parent.parent


def bench(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--size", "tiny", *args],
                          capture_output=True, text=True, timeout=timeout, env=mpi_env())
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT\n{proc.stdout[-3000:]}\nSTDERR\n{proc.stderr[-6000:]}"
    return proc


def test_paper_tiny(tmp_path):
    leaf = tmp_path / "leaf"
    roles = {f"A_PLAY_ROLE{i}": 12 for i in range(4)}
    write_leaf_shakespeare(leaf, train=roles, test=roles)
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- paper:begin -->\nOLD-TABLE\n<!-- paper:end -->\nafter\n")
    proc = bench("paper.py", "--out", str(tmp_path / "runs"), "--shakespeare", str(leaf), "--json",
                 str(tmp_path / "paper.json"), "--plots", str(tmp_path / "plots"), "--readme", str(readme))
    res = json.loads((tmp_path / "paper.json").read_text())["results"]
    assert set(res) == {"table2", "table3", "table4", "stragglers", "ablations"}
    assert {r["dataset"] for r in res["table2"]["rows"]} == {"digits", "shakespeare", "medmnist"}
    slow = {r["strategy"]: r for r in res["table2"]["rows"] if r["dataset"] == "digits" and r["setting"] == "stragglers"}
    # FedAvg drops the clients that miss the deadline; FedProx keeps their partial work
    assert slow["fedavg"]["clients_reported_per_round"] < slow["fedprox-mu0"]["clients_reported_per_round"] == 20
    codecs = {r["codec"]: r for r in res["table4"]["rows"]}
    assert codecs["none"]["reduction"] == 0 and codecs["topk-int8-0.05"]["reduction"] > 0.9
    assert [r["clients"] for r in res["table3"]["variants"]["fastest90"]] == [10, 20]
    assert len(list((tmp_path / "plots").glob("paper_*.png"))) == 5
    text = readme.read_text()
    assert "OLD-TABLE" not in text and text.startswith("intro\n") and text.endswith("after\n")
    assert "| claim | paper |" in text
    assert "| T4 traffic cut" in proc.stdout


def test_overhead_tiny(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- overhead:begin -->\n<!-- overhead:end -->\n")
    bench("overhead.py", "--out", str(tmp_path / "runs"), "--json", str(tmp_path / "o.json"), "--readme", str(readme))
    res = json.loads((tmp_path / "o.json").read_text())
    assert [c["name"] for c in res["cases"]] == ["clients100", "realistic50", "model1M"]
    for c in res["cases"]:
        assert 0 < c["training_s"] < c["round_s"] and abs(c["overhead_s"] - (c["round_s"] - c["training_s"])) < 1e-9
    (d,) = res["dataplane"]
    assert d["params"] == 978 * 978 + 44 * 978 + 10 and min(d["fedhpc_s"], d["raw_s"], d["pickle_s"]) > 0
    assert "| parameters | MB per copy |" in readme.read_text()


def test_peer_benchmark_gives_flower_exactly_fedhpcs_client_split(tmp_path):
    """export_partition.py must write the clients fedhpc trains (the comparison is only fair on the same data)."""
    npz = tmp_path / "split.npz"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers" / "export_partition.py"), "--out", str(npz)],
                   check=True, capture_output=True, timeout=120)
    fedhpc_run(3, tmp_path / "run", "rounds=1")  # the default job: digits, 20 clients with 2 classes each, seed 0
    clients = json.loads((tmp_path / "run" / "partition.json").read_text())["clients"]
    data = np.load(npz)
    assert int(data["num_clients"]) == len(clients) == 20
    for c in clients:
        y = data[f"y_{c['client']}"]
        assert data[f"x_{c['client']}"].shape == (c["samples"], 64)
        assert {str(k): int(v) for k, v in zip(*np.unique(y, return_counts=True))} == c["classes"]
    assert data["x_test"].shape == (359, 64)


def test_clients_tiny(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- clients:begin -->\nOLD\n<!-- clients:end -->\n")
    bench("clients.py", "--budget-mb", "0.5", "--out", str(tmp_path / "runs"), "--json", str(tmp_path / "c.json"),
          "--readme", str(readme), timeout=400)
    res = json.loads((tmp_path / "c.json").read_text())
    assert res["resume_exact"] == {"50": True}
    rows = {r["case"]: r for r in res["rows"]}
    assert rows["spilled"]["spills"] > 0 and rows["in RAM"]["spills"] == 0
    assert rows["spilled"]["state_ram_mb"] <= 2 * 0.5 and rows["bf16"]["state_ram_mb"] <= 2 * 0.25
    assert rows["spilled"]["checkpoint_write_s"] is not None and rows["spilled"]["restore_s"] is not None
    assert "OLD" not in readme.read_text() and "| 50 | spilled |" in readme.read_text()


def test_aggregation_tiny(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- aggregation:begin -->\nOLD\n<!-- aggregation:end -->\n")
    bench("aggregation.py", "--codecs", "none", "--out", str(tmp_path / "runs"), "--json", str(tmp_path / "a.json"),
          "--readme", str(readme))
    res = json.loads((tmp_path / "a.json").read_text())
    assert {(r["version"], r["fold"]) for r in res["memory"]} == {("after", "ranks"), ("after", "rank0")}
    assert all(r["rank0_peak_rss"] > 0 and r["trainer_peak_rss"] > 0 for r in res["memory"])
    acc = res["accuracy"]
    assert acc["ring_max_abs_err"] <= acc["float32_max_abs_err"]
    assert "OLD" not in readme.read_text() and "| after | ranks |" in readme.read_text()


def test_secagg_tiny(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- secagg:begin -->\nOLD\n<!-- secagg:end -->\n")
    bench("secagg.py", "--values", "1000", "--out", str(tmp_path / "runs"), "--json", str(tmp_path / "s.json"),
          "--readme", str(readme))
    res = json.loads((tmp_path / "s.json").read_text())
    assert [(r["clients"], r["graph"]) for r in res["rows"]] == [(10, "complete"), (10, "SecAgg+")]
    assert all(r["up_bytes"]["masked"] == 8 * 1000 + 4 for r in res["rows"])
    assert res["job"]["secagg"]["accuracy"] == res["job"]["plain"]["accuracy"]  # the same model
    assert res["job"]["secagg"]["secagg_bytes"] > 0 and res["job"]["plain"]["secagg_bytes"] == 0
    assert "OLD" not in readme.read_text() and "| 10 | SecAgg+ |" in readme.read_text()


def test_submodels_tiny(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- submodels:begin -->\nOLD\n<!-- submodels:end -->\n")
    bench("submodels.py", "--out", str(tmp_path / "runs"), "--json", str(tmp_path / "s.json"), "--readme", str(readme),
          timeout=400)
    res = json.loads((tmp_path / "s.json").read_text())
    rows = {r["case"]: r for r in res["rows"]}
    assert set(rows) == {"full width, deadline", "full width, partial work", "random dropout 0.5", "budget widths",
                         "budget widths, random units"}
    assert res["deadline_s"] > 0 and rows["budget widths"]["width_mean"] < 1
    assert rows["full width, deadline"]["width_mean"] is None
    cost = res["client_cost"]
    assert cost["params"]["0.25"] < cost["params"]["1"] / 10 and cost["flops_ratio"] < 0.1
    assert cost["peak_rss"]["0.25"] < cost["peak_rss"]["1"]
    assert "OLD" not in readme.read_text() and "| budget widths |" in readme.read_text()


def test_asynchronous_tiny(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("<!-- async:begin -->\nOLD\n<!-- async:end -->\n")
    bench("asynchronous.py", "--out", str(tmp_path / "runs"), "--json", str(tmp_path / "a.json"),
          "--readme", str(readme), timeout=400)
    res = json.loads((tmp_path / "a.json").read_text())
    rows = {(r["sigma"], r["case"]): r for r in res["rows"]}
    cases = {"sync, wait for all", "sync, deadline", "sync, fastest 10", "FedAsync", "FedBuff (10)"}
    assert set(rows) == {(s, c) for s in (0.5, 1.0) for c in cases}
    for s in (0.5, 1.0):
        assert rows[s, "sync, wait for all"]["updates"] == rows[s, "FedAsync"]["updates"] == 40
        assert rows[s, "FedBuff (10)"]["steps"] == 4 and rows[s, "FedAsync"]["staleness_max"] >= 1
        assert rows[s, "sync, fastest 10"]["updates"] == 20 and rows[s, "sync, wait for all"]["staleness_mean"] is None
        # the slowest of 20 clients sets a whole round's pace: waiting for all takes the longest
        assert rows[s, "sync, wait for all"]["sim_seconds"] > rows[s, "sync, deadline"]["sim_seconds"]
    assert "OLD" not in readme.read_text() and "| FedBuff (10) |" in readme.read_text()
