"""The paper and overhead benchmarks run end to end at their tiny size (the experiments themselves are not run
in CI: `make bench-paper`, `make bench-overhead`)."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import mpi_env
from datafiles import write_leaf_shakespeare

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
