"""`fedhpc bench kernels` runs end to end and writes the documented JSON records."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

KEYS = {"kernel", "n", "seconds", "gbps", "baseline", "baseline_seconds", "speedup", "copy_gbps", "roof_fraction"}


def test_bench_kernels_writes_records(tmp_path):
    out = tmp_path / "k.json"
    proc = subprocess.run([sys.executable, "-m", "fedhpc", "bench", "kernels", "--sizes", "4096,8192", "--repeats", "1",
                           "--threads", "1", "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    records = json.loads(out.read_text())["records"]
    assert {r["n"] for r in records} == {4096, 8192}
    assert {r["kernel"] for r in records} >= {"fp16", "int8", "topk", "topk-ef", "axpy", "median", "crc32c"}
    for r in records:
        assert KEYS <= r.keys() and r["seconds"] > 0 and r["baseline_seconds"] > 0
        assert abs(r["speedup"] - r["baseline_seconds"] / r["seconds"]) < 1e-9
    assert "| kernel | n |" in proc.stdout


def test_bench_kernels_rejects_unknown_kernels():
    proc = subprocess.run([sys.executable, "-m", "fedhpc", "bench", "kernels", "--kernels", "zip"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown kernel(s) zip" in proc.stderr
