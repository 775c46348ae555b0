"""`fedhpc watch` under a pseudo-terminal, following a real job as it grows."""

import os
import pty
import re
import select
import subprocess
import sys
import time

import pytest
from conftest import MPIEXEC, mpi_env

pytestmark = pytest.mark.e2e


def run_in_pty(cmd: list[str], timeout: float) -> tuple[int, str]:
    """Run ``cmd`` with a pseudo-terminal as its stdin/stdout/stderr; (exit status, all it printed)."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, close_fds=True,
                            env=mpi_env(TERM="xterm-256color", COLUMNS="100", LINES="40"))
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    os.close(master)
    if proc.poll() is None:
        proc.kill()
    return proc.wait(timeout=10), b"".join(chunks).decode("utf-8", "replace")


def test_watch_follows_a_growing_run_and_ends_with_it(tmp_path):
    out = tmp_path / "run"
    # every round waits 0.5 s for client 0 (slowed a millionfold, then late): 8 rounds of visible progress
    job = subprocess.Popen([MPIEXEC, "-n", "3", sys.executable, "-m", "mpi4py", "-m", "fedhpc", "run", "--out",
                            str(out), "--set", "rounds=8", "--set", "clients.per_round=20", "--set",
                            "profiles.slow_clients=[0]", "--set", "profiles.slow_factor=1e6", "--set",
                            "stragglers.deadline_s=0.5"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           env=mpi_env())
    try:
        deadline = time.monotonic() + 120
        while not (out / "config.toml").exists():
            assert job.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        status, screen = run_in_pty([sys.executable, "-m", "fedhpc", "watch", str(out), "--interval", "0.2"], 120)
    finally:
        job.wait(timeout=120)
    assert job.returncode == 0 and status == 0, screen[-3000:]
    seen = {int(n) for n in re.findall(r"round (\d)/8", screen)}
    assert 8 in seen and len(seen) >= 3, seen  # it redrew as the rounds came, and saw the last
    assert "finished" in screen and "●" in screen and "◌" in screen  # reported and late clients
    once = subprocess.run([sys.executable, "-m", "fedhpc", "watch", str(out), "--once"], capture_output=True,
                          text=True, timeout=60, env=mpi_env(COLUMNS="100"))
    assert once.returncode == 0 and "round 8/8  finished" in once.stdout, once.stdout


def test_watch_once_and_a_directory_that_is_not_a_run(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fedhpc", "watch", str(tmp_path)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and "is not a run directory" in proc.stderr
