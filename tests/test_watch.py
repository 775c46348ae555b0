"""`fedhpc watch` under a pseudo-terminal, following a real job as it grows."""

import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import MPIEXEC, mpi_env

pytestmark = pytest.mark.e2e


def run_in_pty(cmd: list[str], timeout: float, type_after: tuple[bytes, bytes] | None = None) -> tuple[int, str]:
    """Run ``cmd`` in a pseudo-terminal that is its controlling terminal (as in a shell: Ctrl-C
    there is SIGINT); (exit status, all it printed). ``type_after`` = (text, keys): type the
    keys once the program has printed that text (not after a fixed time: on a loaded machine
    its start-up alone can take seconds, and keys typed before it runs are not its to read)."""
    env = mpi_env(TERM="xterm-256color", COLUMNS="100", LINES="40")
    pid, master = pty.fork()
    if pid == 0:  # the child: its stdin, stdout and stderr are the terminal
        # as a shell starts a foreground job: Ctrl-C (SIGINT) delivered and acted on, whatever the
        # test process (pytest under make, CI's runner) ignores or blocks and a fork would pass on
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
        os.execvpe(cmd[0], cmd, env)
    chunks, t0 = [], time.monotonic()
    status = None
    while time.monotonic() - t0 < timeout:
        if type_after is not None and type_after[0] in b"".join(chunks):
            os.write(master, type_after[1])
            type_after = None
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the child closed the terminal
                data = b""
            if not data:
                break
            chunks.append(data)
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            status = code
            break
    end = time.monotonic() + 10
    while status is None:  # the terminal closed: the child is leaving, or hangs (then it is killed)
        done, code = os.waitpid(pid, os.WNOHANG)
        if done:
            status = code
        elif time.monotonic() > end:
            chunks.append(_signal_state(pid).encode())  # why it did not leave, for the failure's message
            os.kill(pid, signal.SIGKILL)
        else:
            time.sleep(0.05)
    os.close(master)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode("utf-8", "replace")


def _signal_state(pid: int) -> str:
    """The signal masks of process ``pid`` (``/proc``), as a line."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError as exc:
        return f"\n[no status of {pid}: {exc}]"
    return "\n[" + ", ".join(line for line in lines if line.startswith(("State", "SigBlk", "SigIgn", "SigCgt"))) + "]"


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


def test_ctrl_c_leaves_a_run_that_is_not_over(tmp_path):
    """A run directory whose job stopped after one of its 100 rounds (killed, nothing logged): the
    view waits for more, and Ctrl-C in the terminal ends it with status 0."""
    from conftest import fedhpc_run

    out = tmp_path / "run"
    fedhpc_run(3, out, "rounds=1")
    (out / "config.toml").write_text((out / "config.toml").read_text().replace("rounds = 1", "rounds = 100"))
    (out / "run.log").write_text("")  # as if rank 0 never got to say it was done
    # a view that ignored the Ctrl-C would be killed at the 60 s timeout, with status -9
    status, screen = run_in_pty([sys.executable, "-m", "fedhpc", "watch", str(out), "--interval", "0.2"], 60,
                                type_after=(b"round 1/100", b"\x03"))
    assert status == 0 and "round 1/100" in screen and "Traceback" not in screen, screen[-2000:]
