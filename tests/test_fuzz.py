"""Fuzz the decoders in a child process, so that a segfault fails the test instead of the suite."""

import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit


def test_decode_survives_thousands_of_mutated_frames():
    proc = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("fuzz_decode.py")), "--iterations", "2500"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    # most mutations must be caught, and every codec must have been exercised
    for entry in proc.stdout.split():
        ok, rejected = entry.split(":")[1].replace("ok", "").replace("rejected", "").split("/")
        assert int(rejected) > int(ok), entry
