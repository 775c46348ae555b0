"""A real one-node SLURM cluster on localhost, started and stopped by the tests.

``SlurmCluster(root).start()`` installs Debian's ``slurm-wlm`` and ``munge``
when ``slurmctld`` is missing (CI machines start bare), writes a munge key
and a ``slurm.conf`` under ``root``, starts munged, slurmctld and slurmd in
the foreground as children of this process on free ports, and waits until
``sinfo`` shows the node idle. ``stop()`` cancels the cluster's jobs and
stops exactly the three daemons it started. Nothing outside ``root`` is
touched, so it neither needs nor disturbs a system SLURM or munge.

Every failure raises :class:`ClusterError` with the reason and the tail of
the daemon logs: the SLURM tests must fail loudly, never skip.
"""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import subprocess
import time
from pathlib import Path

from system import apt_install

# Keys measured to work with Debian 12's SLURM 22.05 on one machine (see
# ../shared/PLATFORM.md). KillWait is short so cancelled and requeued jobs
# clear quickly; MpiDefault stays none because the job scripts always pass
# --mpi explicitly (a missing flag must show up here, not only on a site
# whose default happens to be pmi2). FirstJobId is random: MPICH names its
# /dev/shm segment after job and step id, and a segment left by a killed step
# of an earlier test cluster with the same job id would hang MPI_Init.
SLURM_CONF = """\
ClusterName=fedhpctest
FirstJobId={first_job_id}
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge/munge.socket
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
SchedulerType=sched/backfill
KillWait=5
MailProg=/bin/true
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 {hardware} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""

COMMAND_TIMEOUT_S = 30


class ClusterError(RuntimeError):
    """The test cluster could not be installed, started or queried."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def install_slurm() -> None:
    """``apt-get install slurm-wlm munge`` unless slurmctld is already there (about 40 s once)."""
    problem = apt_install(["slurm-wlm", "munge"], ["slurmctld", "munged"])
    if problem:
        raise ClusterError(problem)


def _node_hardware() -> str:
    """This machine's CPU layout as slurmd detects it, so the node is not drained for a mismatch."""
    out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S).stdout
    keys = ("CPUs", "Boards", "SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")
    found = dict(re.findall(r"(\w+)=(\S+)", out))
    if all(k in found for k in keys):
        return " ".join(f"{k}={found[k]}" for k in keys)
    return f"CPUs={os.cpu_count()}"


class SlurmCluster:
    """munged + slurmctld + slurmd for one node named ``localhost``, all state under ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root).resolve()
        self.conf = self.root / "slurm.conf"
        self.procs: dict[str, subprocess.Popen] = {}
        self.started = time.time()
        # The clients (sbatch, squeue, ...) find this cluster through SLURM_CONF; SLURM_* variables
        # of an enclosing job (a CI runner inside SLURM) would redirect them, so they are dropped.
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        self.env["SLURM_CONF"] = str(self.conf)

    # -- lifecycle -----------------------------------------------------------------------------------------
    def start(self, timeout: float = 90) -> SlurmCluster:
        install_slurm()
        for d in ("munge", "state", "spool"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self.conf.write_text(SLURM_CONF.format(
            root=self.root, ctld_port=_free_port(), slurmd_port=_free_port(), hardware=_node_hardware(),
            memory=2000, first_job_id=random.randrange(100_000, 60_000_000)))
        m = self.root / "munge"
        # --force: munged refuses socket directories under a world-writable /tmp otherwise
        self._spawn("munged", ["munged", "-F", "--force", f"--socket={m}/munge.socket", f"--key-file={key}",
                               f"--pid-file={m}/munged.pid", f"--log-file={m}/munged.log",
                               f"--seed-file={m}/munged.seed"])
        self._wait(lambda: (m / "munge.socket").exists(), 15, "munged did not create its socket")
        self._spawn("slurmctld", ["slurmctld", "-D", "-f", str(self.conf)])
        self._wait(lambda: self.run("scontrol", "ping", check=False).returncode == 0, 30,
                   "slurmctld does not answer `scontrol ping`")
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf), "-N", "localhost"])
        self._wait(lambda: self.node_state() == "idle", timeout, "the node did not become idle in sinfo")
        return self

    def stop(self) -> None:
        """Cancel the cluster's jobs (so their slurmstepd and ranks exit), then stop our daemons."""
        if "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            jobs = self.run("squeue", "-h", "-o", "%i", check=False).stdout.split()
            if jobs:
                self.run("scancel", *jobs, check=False)
                deadline = time.monotonic() + 20
                while time.monotonic() < deadline and self.run("squeue", "-h", "-o", "%i", check=False).stdout.strip():
                    time.sleep(0.5)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._remove_orphaned_shm()

    def _remove_orphaned_shm(self) -> None:
        """Delete the MPICH shared-memory segments that steps killed during this cluster's life left
        behind (written since it started, mapped by no process): /dev/shm is small on many machines."""
        in_use = set()
        for maps in Path("/proc").glob("[0-9]*/maps"):
            try:
                in_use.update(re.findall(r"/dev/shm/mpich_\S+", maps.read_text()))
            except OSError:  # processes come and go
                continue
        for seg in Path("/dev/shm").glob("mpich_*"):
            try:
                st = seg.stat()
                if str(seg) not in in_use and st.st_mtime >= self.started and st.st_uid == os.geteuid():
                    seg.unlink()
            except OSError:
                continue

    def _spawn(self, name: str, cmd: list[str]) -> None:
        log = open(self.root / f"{name}.stdout", "wb")
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            cwd=self.root, env=self.env)
        log.close()

    def _wait(self, ready, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [(n, p.returncode) for n, p in self.procs.items() if p.poll() is not None]
            if dead:
                self.stop()
                raise ClusterError(f"{dead[0][0]} exited with status {dead[0][1]} while starting the test "
                                   f"cluster\n{self.logs()}")
            if ready():
                return
            time.sleep(0.2)
        self.stop()
        raise ClusterError(f"{what} within {timeout:.0f} s\n{self.logs()}")

    def logs(self, lines: int = 25) -> str:
        """The tail of every daemon log, for failure messages."""
        parts = []
        for f in sorted(self.root.glob("*.log")) + sorted(self.root.glob("*.stdout")) + [self.root / "munge/munged.log"]:
            if f.exists():
                tail = f.read_text(errors="replace").splitlines()[-lines:]
                parts.append(f"--- {f.name}\n" + "\n".join(tail))
        return "\n".join(parts)

    # -- queries -------------------------------------------------------------------------------------------
    def run(self, *cmd: str, check: bool = True, timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
        """Run a SLURM client command against this cluster."""
        try:
            proc = subprocess.run(list(cmd), capture_output=True, text=True, env=self.env, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise ClusterError(f"`{' '.join(cmd)}` did not return within {timeout} s\n{self.logs()}") from None
        if check and proc.returncode != 0:
            raise ClusterError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): {proc.stderr.strip()}")
        return proc

    def node_state(self) -> str:
        return self.run("sinfo", "-h", "-n", "localhost", "-o", "%T", check=False).stdout.strip()

    def job(self, job_id: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (it knows finished jobs for MinJobAge, 300 s by default)."""
        out = self.run("scontrol", "show", "job", "-o", str(job_id)).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait_for(self, job_id: str, states: set[str], timeout: float) -> dict[str, str]:
        """Poll until the job is in one of ``states``; fail with the job record and logs otherwise."""
        deadline = time.monotonic() + timeout
        info = {}
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info.get("JobState") in states:
                return info
            time.sleep(0.3)
        raise ClusterError(f"job {job_id} not in {sorted(states)} after {timeout} s: {info}\n{self.logs()}")
