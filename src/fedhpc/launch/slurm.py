"""SLURM: render sbatch scripts from a run config, submit, watch and cancel them.

A rendered script has three parts: ``#SBATCH`` directives from the options,
the *knobs* (shell variables ``FEDHPC_*`` that the launch code reads), and the
launch code itself, composed from the fragments below. ``jobs/slurm/*.sbatch``
are the same launch code under hand-documented knobs; ``tests/test_slurm.py``
checks that they stay identical and runs them on a real SLURM.

Every SLURM client command runs with a timeout, and a missing command or an
unreachable controller raises :class:`~fedhpc.launch.LaunchError` saying
what to do.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from fedhpc.launch import LaunchError

#: Seconds any SLURM client command may take before we give up on the controller.
COMMAND_TIMEOUT_S = 30.0

#: First line of the launch code in every script (rendered or in jobs/slurm).
LAUNCH_MARKER = "# ---- launch code: identical in jobs/slurm/*.sbatch and `fedhpc slurm render` output ----\n"

# Finds python with fedhpc (FEDHPC_VENV first: the mpich wheel's libmpi lives
# in the venv too), sets the threads, and builds the `fedhpc run` arguments.
_PROLOGUE = r"""set -o pipefail

if [ -n "$FEDHPC_VENV" ]; then
    if [ ! -x "$FEDHPC_VENV/bin/python" ]; then
        echo "fedhpc job: FEDHPC_VENV=$FEDHPC_VENV has no bin/python; point it at the virtual environment fedhpc is installed in" >&2
        exit 2
    fi
    PATH="$FEDHPC_VENV/bin:$PATH"
fi
PYTHON=$(command -v python3)
if [ -z "$PYTHON" ] || ! "$PYTHON" -c "import fedhpc" 2>/dev/null; then
    echo "fedhpc job: cannot import fedhpc with '${PYTHON:-python3}'; submit with FEDHPC_VENV=/path/to/venv, e.g. sbatch --export=ALL,FEDHPC_VENV=\$PWD/.venv ..." >&2
    exit 2
fi
# torch and the kernels use exactly the CPUs SLURM gave each rank
export PATH OMP_NUM_THREADS="$FEDHPC_THREADS"
mkdir -p "$FEDHPC_OUT"

run_args=(--out "$FEDHPC_OUT")
if [ -n "$FEDHPC_CONFIG" ]; then run_args+=(--config "$FEDHPC_CONFIG"); fi
set_args=(--set "local.threads=$FEDHPC_THREADS")
set -f  # FEDHPC_SET is split on whitespace, never globbed
for kv in $FEDHPC_SET; do set_args+=(--set "$kv"); done
set +f
# always name the PMI: with a site default of `none`, srun would start N one-rank jobs
srun_args=(--mpi="$FEDHPC_MPI")
# SLURM 22.05's srun no longer inherits --cpus-per-task from the allocation
if [ -n "$SLURM_CPUS_PER_TASK" ]; then srun_args+=(--cpus-per-task="$SLURM_CPUS_PER_TASK"); fi
launcher=()
"""

# One trainer rank per GPU, rank 0 (the orchestrator) on the CPU: an explicit
# host list puts rank 0 plus one rank per GPU on the first node and one rank
# per GPU on the others, and each rank keeps only its own GPU visible.
_GPU = r"""
if ! [[ "$FEDHPC_GPUS_PER_NODE" =~ ^[1-9][0-9]*$ ]]; then
    echo "fedhpc job: FEDHPC_GPUS_PER_NODE='$FEDHPC_GPUS_PER_NODE' is not a GPU count; submit with --gpus-per-node=N" >&2
    exit 2
fi
hostfile="$FEDHPC_OUT/hosts-$SLURM_JOB_ID"
: > "$hostfile"
extra=1
for host in $(scontrol show hostnames "$SLURM_JOB_NODELIST"); do
    for ((k = 0; k < FEDHPC_GPUS_PER_NODE + extra; k++)); do echo "$host" >> "$hostfile"; done
    extra=0
done
export SLURM_HOSTFILE="$hostfile"
srun_args+=(--distribution=arbitrary --ntasks="$(wc -l < "$hostfile")" --gpu-bind=none)
launcher=(bash -c '
if [ "$SLURM_PROCID" -eq 0 ]; then
    export CUDA_VISIBLE_DEVICES=
else
    slot=$SLURM_LOCALID
    if [ "$SLURM_NODEID" -eq 0 ]; then slot=$((slot - 1)); fi
    IFS=, read -ra node_gpus <<< "${CUDA_VISIBLE_DEVICES:-}"
    export CUDA_VISIBLE_DEVICES="${node_gpus[$slot]:-$slot}"
fi
exec "$@"' fedhpc-rank)
"""

# The gateway is the last rank; block distribution (or the GPU host list)
# puts it on the last node of the allocation, whose name workers need.
_GATEWAY = r"""
gateway_host=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | tail -n 1)
echo "${gateway_host}:${FEDHPC_GATEWAY_PORT}" > "$FEDHPC_OUT/gateway.address"
echo "fedhpc job $SLURM_JOB_ID: cloud workers connect to ${gateway_host}:${FEDHPC_GATEWAY_PORT} (written to $FEDHPC_OUT/gateway.address)"
set_args+=(--set gateway.enabled=true --set "gateway.listen=0.0.0.0:${FEDHPC_GATEWAY_PORT}")
"""
_BLOCK = """srun_args+=(--distribution=block)
"""

_ANNOUNCE = r"""
echo "fedhpc job $SLURM_JOB_ID on $SLURM_JOB_NODELIST: $FEDHPC_THREADS threads per rank, run directory $FEDHPC_OUT"
"""

# Not `python -m mpi4py`: its MPI_Abort on a non-zero exit makes srun kill the
# step, which would turn the preemption status 75 into 137; `fedhpc run`
# aborts the whole job by itself when a rank fails.
_LAUNCH = r"""exec srun "${srun_args[@]}" "${launcher[@]}" "$PYTHON" -m fedhpc run "${run_args[@]}" "${set_args[@]}"
"""

# Resume when a checkpoint exists; forward USR1/TERM (the batch shell gets
# them: --signal=B:USR1@120, preemption) to srun, which hands them to every
# rank; the ranks checkpoint and exit 75, and the job requeues itself.
#
# MPICH names its shared-memory segment after the job and step ids, which a
# requeued job reuses: a segment left in /dev/shm by a killed incarnation (an
# `scontrol requeue`, a preemption past its grace time) makes the new ranks
# hang in MPI_Init on that node. So a restart first removes, on every node,
# this user's MPICH segments that no process maps any more.
_PREEMPTIBLE = r"""if [ "${SLURM_RESTART_COUNT:-0}" -gt 0 ]; then
    srun --mpi=none --ntasks-per-node=1 --ntasks="$SLURM_JOB_NUM_NODES" bash -c '
    in_use=$(cat /proc/[0-9]*/maps 2>/dev/null | grep -o "/dev/shm/mpich_[^ ]*" | sort -u)
    for f in /dev/shm/mpich_shm_* /dev/shm/mpich_vci_*; do
        if [ -O "$f" ] && ! grep -qxF "$f" <<< "$in_use"; then rm -f "$f"; fi
    done'
fi
if compgen -G "$FEDHPC_OUT/checkpoints/ckpt-*.h5" > /dev/null; then
    echo "fedhpc job $SLURM_JOB_ID: resuming from the newest checkpoint in $FEDHPC_OUT/checkpoints (restart ${SLURM_RESTART_COUNT:-0})"
    run_args=(--resume "$FEDHPC_OUT")
fi
srun_pid=
forward() {
    echo "fedhpc job $SLURM_JOB_ID: SIG$1 received, the ranks checkpoint and stop" >&2
    if [ -n "$srun_pid" ]; then kill -s "$1" "$srun_pid" 2>/dev/null; fi
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM
srun "${srun_args[@]}" "${launcher[@]}" "$PYTHON" -m fedhpc run "${run_args[@]}" "${set_args[@]}" &
srun_pid=$!
# A trapped signal interrupts `wait` (status > 128) while srun runs on: wait again.
while :; do
    wait "$srun_pid"; status=$?
    if [ "$status" -le 128 ]; then break; fi
    if ! kill -0 "$srun_pid" 2>/dev/null; then
        wait "$srun_pid"; last=$?  # srun ended meanwhile: its own status (bash 4 may answer 127: unknown)
        if [ "$last" -ne 127 ]; then status=$last; fi
        break
    fi
done
if [ "$status" -eq 75 ]; then
    echo "fedhpc job $SLURM_JOB_ID: checkpoint written after the stop signal; requeueing to resume" >&2
    scontrol requeue "$SLURM_JOB_ID" ||
        echo "fedhpc job $SLURM_JOB_ID: scontrol requeue failed; sbatch this script again with FEDHPC_OUT=$FEDHPC_OUT to resume" >&2
fi
exit "$status"
"""


def launch_code(*, gpus: bool = False, gateway: bool = False, preemptible: bool = False) -> str:
    """The launch part of a job script (everything after the knobs)."""
    parts = [LAUNCH_MARKER, _PROLOGUE]
    if gpus:
        parts.append(_GPU)
    if gateway:
        parts.append(_GATEWAY)
        if not gpus:
            parts.append(_BLOCK)
    parts.append(_ANNOUNCE)
    parts.append(_PREEMPTIBLE if preemptible else _LAUNCH)
    return "".join(parts)


@dataclass
class SlurmRequest:
    """What to run and on what: the options of ``fedhpc slurm render/submit``."""

    config: Path | None  # None = the embedded default run
    out: Path  # run directory; "%j" in it stands for the job id
    nodes: int = 1
    ntasks: int | None = None  # default: 5, or nodes * gpus_per_node + 1 with GPUs
    cpus_per_task: int = 1
    gpus_per_node: int = 0
    time: str = "01:00:00"
    partition: str = ""
    account: str = ""
    job_name: str = "fedhpc"
    preemptible: bool = False
    signal_lead_s: int = 120
    gateway_port: int = 0  # 0 = no gateway rank
    overcommit: bool = False
    sets: list[str] = field(default_factory=list)
    venv: str = ""
    mpi: str = "pmi2"
    sbatch_options: list[str] = field(default_factory=list)

    def tasks(self) -> int:
        if self.gpus_per_node:
            return self.nodes * self.gpus_per_node + 1
        return self.ntasks if self.ntasks is not None else 5


def current_venv() -> str:
    """The virtual environment this fedhpc runs from ('' when it is a system Python)."""
    return sys.prefix if sys.prefix != sys.base_prefix else ""


def _dq(value: str) -> str:
    """``value`` quoted for a bash double-quoted string."""
    return '"' + _escape(value) + '"'


def _escape(value: str) -> str:
    return re.sub(r'(["\\$`])', r"\\\1", value)


def _check(req: SlurmRequest) -> None:
    from fedhpc.config import load_config

    if req.nodes < 1:
        raise LaunchError(f"--nodes must be >= 1, got {req.nodes}")
    if req.gpus_per_node < 0:
        raise LaunchError(f"--gpus must be >= 0, got {req.gpus_per_node}")
    if req.gpus_per_node and req.ntasks is not None and req.ntasks != req.tasks():
        raise LaunchError(f"--ntasks {req.ntasks} does not fit --gpus {req.gpus_per_node} on {req.nodes} node(s): "
                             f"GPU jobs run one rank per GPU plus rank 0, {req.tasks()} tasks; leave --ntasks out")
    if req.tasks() < 2:
        raise LaunchError(f"--ntasks must be >= 2 (rank 0 orchestrates, the others train), got {req.tasks()}")
    if req.cpus_per_task < 1:
        raise LaunchError(f"--cpus-per-task must be >= 1, got {req.cpus_per_task}")
    for s in req.sets:
        if re.search(r"\s", s):
            raise LaunchError(f"--set {s!r}: job scripts pass overrides as whitespace-separated words, so a value "
                                 f"cannot contain spaces; put that key in the config file instead")
    for path in (req.out, req.config):
        if path is not None and re.search(r"\s", str(path)):
            raise LaunchError(f"path {str(path)!r} contains whitespace, which #SBATCH lines cannot carry; "
                                 f"use a path without spaces")
    # a config error should show up now, not after the job waited in the queue
    load_config(req.config, req.sets)


def _placement(req) -> list[str]:
    """The optional --partition / --account lines shared by every rendered script."""
    return ([f"#SBATCH --partition={req.partition}"] if req.partition else []) + (
        [f"#SBATCH --account={req.account}"] if req.account else [])


def log_path(out: Path) -> str:
    """The job's log (#SBATCH --output): inside OUT, or next to it when OUT is named after the job
    id (SLURM opens the log before the script can create OUT)."""
    return f"{out}.out" if "%j" in str(out) else f"{out}/slurm-%j.out"


def render(req: SlurmRequest) -> str:
    """The sbatch script for ``req`` (deterministic: the same request gives the same text)."""
    _check(req)
    out = req.out.resolve()
    kind = ("GPU" if req.gpus_per_node else "CPU") + (" + gateway" if req.gateway_port else "") + \
        (", preemptible" if req.preemptible else "")
    lines = [
        "#!/bin/bash",
        f"# fedhpc {kind} job, rendered by `fedhpc slurm render`. Submit with `sbatch THIS_FILE` (or `fedhpc slurm",
        "# submit`, which also creates the directory that --output below needs). Launch code documented in",
        "# jobs/slurm/*.sbatch of the fedhpc sources.",
        f"#SBATCH --job-name={req.job_name}",
        f"#SBATCH --nodes={req.nodes}",
        f"#SBATCH --ntasks={req.tasks()}",
        f"#SBATCH --cpus-per-task={req.cpus_per_task}",
        f"#SBATCH --time={req.time}",
        f"#SBATCH --output={log_path(out)}",
        # `fedhpc slurm status` finds the run directory here
        f"#SBATCH --comment=fedhpc-out:{out}",
    ]
    lines += _placement(req)
    if req.gpus_per_node:
        lines += [f"#SBATCH --gpus-per-node={req.gpus_per_node}", "#SBATCH --exclusive"]
    if req.preemptible:
        lines += ["#SBATCH --requeue", f"#SBATCH --signal=B:USR1@{req.signal_lead_s}", "#SBATCH --open-mode=append"]
    if req.overcommit:
        lines.append("#SBATCH --overcommit")
    lines += [f"#SBATCH {opt}" for opt in req.sbatch_options]
    knobs = {
        "FEDHPC_CONFIG": str(req.config.resolve()) if req.config else "",
        "FEDHPC_SET": " ".join(req.sets),
        "FEDHPC_VENV": req.venv,
        "FEDHPC_MPI": req.mpi,
        "FEDHPC_GPUS_PER_NODE": str(req.gpus_per_node) if req.gpus_per_node else None,
        "FEDHPC_GATEWAY_PORT": str(req.gateway_port) if req.gateway_port else None,
    }
    lines.append("")
    lines.append('FEDHPC_OUT="' + "${SLURM_JOB_ID}".join(_escape(part) for part in str(out).split("%j")) + '"')
    lines += [f"{k}={_dq(v)}" for k, v in knobs.items() if v is not None]
    lines.append('FEDHPC_THREADS="${SLURM_CPUS_PER_TASK:-1}"')
    lines.append("")
    return "\n".join(lines) + "\n" + launch_code(gpus=bool(req.gpus_per_node), gateway=bool(req.gateway_port),
                                                 preemptible=req.preemptible)


# ------------------------------------------------------------------------------------------------------------
# SLURM client commands

def run_tool(cmd: list[str], timeout: float = COMMAND_TIMEOUT_S, input: str | None = None) -> subprocess.CompletedProcess:
    """Run a SLURM client command; a missing command or a hung controller raises LaunchError."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, input=input)
    except FileNotFoundError:
        raise LaunchError(f"`{cmd[0]}` is not on PATH: run this where the SLURM client commands are (a login "
                             f"node), or install them (Debian/Ubuntu: apt-get install slurm-client)") from None
    except subprocess.TimeoutExpired:
        raise LaunchError(f"`{' '.join(cmd)}` did not answer within {timeout:.0f} s: is the SLURM controller up "
                             f"and reachable? (try `scontrol ping`)") from None


def _failed(cmd: list[str], proc: subprocess.CompletedProcess) -> LaunchError:
    return LaunchError(f"`{' '.join(cmd)}` failed (exit {proc.returncode}): "
                          f"{(proc.stderr or proc.stdout).strip() or 'no message'}")


def submit(req: SlurmRequest) -> tuple[str, Path]:
    """Render and sbatch the script, and keep a copy in OUT/job.sbatch: (job id, run directory)."""
    script = render(req)
    # SLURM does not create the directory of the log
    Path(log_path(req.out.resolve())).parent.mkdir(parents=True, exist_ok=True)
    job_id = sbatch(None, script=script)
    out = Path(str(req.out.resolve()).replace("%j", job_id))
    out.mkdir(parents=True, exist_ok=True)
    (out / "job.sbatch").write_text(script)  # a record of what runs
    return job_id, out


def sbatch(path: Path | None, *options: str, script: str | None = None) -> str:
    """``sbatch --parsable [options] PATH``, or the ``script`` text on stdin: the job id."""
    cmd = ["sbatch", "--parsable", *options] + ([str(path)] if path is not None else [])
    proc = run_tool(cmd, input=script)
    if proc.returncode != 0:
        raise _failed(cmd, proc)
    return proc.stdout.strip().split(";")[0]


#: Job states after which there is nothing left to cancel.
ENDED = {"COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL", "DEADLINE",
         "OUT_OF_MEMORY"}


def cancel(job_id: str) -> str:
    """``scancel JOBID``; what happened, in words. scancel itself says nothing and exits 0 for an
    unknown job id, so the job is looked up first."""
    record = job_record(job_id)
    if record is None:
        raise LaunchError(f"SLURM does not know job {job_id}: a typo, or it ended more than MinJobAge ago")
    if record.get("JobState") in ENDED:
        return f"job {job_id} had already ended: {record['JobState']}"
    cmd = ["scancel", job_id]
    proc = run_tool(cmd)
    if proc.returncode != 0 or "error" in proc.stderr.lower():
        raise _failed(cmd, proc)
    return f"cancelled job {job_id}"


def job_record(job_id: str) -> dict[str, str] | None:
    """The job as SLURM knows it, or None once it has forgotten it.

    ``scontrol show job`` first: it alone carries the requeue count, and it
    keeps finished jobs for MinJobAge (5 minutes by default). Older jobs come
    from ``sacct`` when the site has accounting.
    """
    cmd = ["scontrol", "show", "job", "-o", job_id]
    proc = run_tool(cmd)
    if proc.returncode == 0 and proc.stdout.strip():
        return dict(re.findall(r"(\w+)=(\S*)", proc.stdout), Source="scontrol")
    if "invalid job id" not in proc.stderr.lower():
        raise _failed(cmd, proc)
    fields = ["JobID", "JobName", "State", "Elapsed", "ExitCode", "Reason", "NodeList", "WorkDir", "Comment"]
    cmd = ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", ",".join(fields)]
    try:
        proc = run_tool(cmd)
    except LaunchError:
        return None
    rows = [line.split("|") for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not rows or len(rows[0]) != len(fields):
        return None  # accounting disabled (sacct errors) or the job is unknown there too
    row = dict(zip(fields, rows[0]))
    return {"JobId": row["JobID"], "JobName": row["JobName"], "JobState": row["State"].split()[0],
            "RunTime": row["Elapsed"], "ExitCode": row["ExitCode"], "Reason": row["Reason"],
            "NodeList": row["NodeList"], "WorkDir": row["WorkDir"], "Comment": row["Comment"], "Source": "sacct"}


def run_directory(job_id: str, record: dict[str, str] | None, out: Path | None) -> Path | None:
    """Where the job's run writes: --out, else the comment rendered scripts carry, else the
    default of jobs/slurm/*.sbatch (WorkDir/runs/slurm-JOBID)."""
    if out is not None:
        return out
    if record is None:
        return None
    comment = record.get("Comment", "")
    if comment.startswith("fedhpc-out:"):
        return Path(comment[len("fedhpc-out:"):].replace("%j", job_id))
    guess = Path(record.get("WorkDir", ".")) / "runs" / f"slurm-{job_id}"
    return guess if guess.is_dir() else None


def run_progress(out: Path) -> dict:
    """The run's own progress from OUT/metrics.jsonl, OUT/config.toml and OUT/checkpoints."""
    progress: dict = {"out": str(out)}
    try:
        progress["rounds"] = tomllib.loads((out / "config.toml").read_text()).get("rounds")
    except (OSError, tomllib.TOMLDecodeError):
        progress["rounds"] = None
    metrics = out / "metrics.jsonl"
    last = None
    if metrics.exists():
        for line in reversed(metrics.read_text().splitlines()):
            try:
                last = json.loads(line)
                break
            except json.JSONDecodeError:  # the line being written right now
                continue
        progress["metrics_age_s"] = round(time.time() - metrics.stat().st_mtime, 1)
    if last is not None:
        progress.update(round=last.get("round"), accuracy=last.get("accuracy"), loss=last.get("loss"))
    ckpts = sorted((out / "checkpoints").glob("ckpt-*.h5"))
    progress["checkpoint"] = ckpts[-1].name if ckpts else None
    progress["finished"] = (out / "final_weights.npy").exists()
    return progress


def status(job_id: str, out: Path | None = None) -> dict:
    """State, elapsed time, reason, requeue count, exit code and the run's progress."""
    record = job_record(job_id)
    info: dict = {"job": job_id}
    if record is None:
        info["state"] = "UNKNOWN"
        info["note"] = ("SLURM no longer knows this job (it finished more than MinJobAge ago) and has no accounting "
                        "to ask; the run's own record is below when its directory is known (--out)")
    else:
        info.update(state=record.get("JobState"), elapsed=record.get("RunTime"), reason=record.get("Reason"),
                    restarts=int(record["Restarts"]) if record.get("Restarts", "").isdigit() else None,
                    exit_code=record.get("ExitCode"), nodes=record.get("NodeList"), source=record["Source"])
    where = run_directory(job_id, record, out)
    if where is not None:
        info["progress"] = run_progress(where)
    return info


def format_status(info: dict) -> str:
    """``info`` from :func:`status` as a few human lines."""
    lines = [f"job {info['job']}: {info['state']}"]
    if "note" in info:
        lines.append(f"  {info['note']}")
    if "elapsed" in info:
        restarts = "n/a (sacct)" if info["restarts"] is None else info["restarts"]
        lines.append(f"  elapsed {info['elapsed']}, reason {info['reason']}, requeued {restarts} times, exit code "
                     f"{info['exit_code']}, nodes {info['nodes'] or '-'}")
    p = info.get("progress")
    if p is None:
        lines.append("  run progress: run directory unknown (pass --out OUT)")
    elif p.get("round") is None:
        lines.append(f"  run progress: no round finished yet in {p['out']}")
    else:
        acc = "-" if p.get("accuracy") is None else f"{p['accuracy']:.4f}"
        loss = "-" if p.get("loss") is None else f"{p['loss']:.4f}"
        lines.append(f"  run progress: round {p['round']} of {p['rounds'] or '?'}, accuracy {acc}, loss {loss} "
                     f"(metrics written {p['metrics_age_s']:.0f} s ago) in {p['out']}")
        lines.append(f"  newest checkpoint: {p['checkpoint'] or 'none'}"
                     + ("; finished: final_weights.npy written" if p["finished"] else ""))
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------
# Elastic growth: a separate job of `fedhpc worker` processes that join a running job through its gateway

@dataclass
class WorkerRequest:
    """Options of ``fedhpc slurm add-workers``."""

    connect: str  # HOST:PORT of the gateway
    token_file: Path | None  # one worker's token (count 1); or:
    first_client: int  # remote client slot of task 0; task K takes first_client + K
    pki: Path | None = None  # ... a directory with one worker's credentials per task: WORKER-K.token/.pem/.key
    worker: str = ""
    count: int = 1
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    data: str = "digits"
    data_root: str = ""
    after: str = ""  # start only once this job has started
    cpus_per_task: int = 1
    time: str = "01:00:00"
    partition: str = ""
    account: str = ""
    job_name: str = "fedhpc-workers"
    venv: str = ""
    sbatch_options: list[str] = field(default_factory=list)


def gateway_address(run_dir: Path) -> str:
    """HOST:PORT that a hybrid job wrote to OUT/gateway.address."""
    path = run_dir / "gateway.address"
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        raise LaunchError(f"{path} does not exist: it is written when a job with a gateway rank starts "
                             f"(jobs/slurm/hybrid.sbatch, or `fedhpc slurm render --gateway`); wait for the job "
                             f"to start, or give the address with --connect HOST:PORT") from None


def check_worker_files(token_file: Path, ca: Path | None, cert: Path | None, key: Path | None) -> None:
    """The credentials a worker needs exist (also used by the Kubernetes renderer)."""
    if bool(cert) != bool(key):
        raise LaunchError("--cert and --key go together (mutual TLS)")
    for flag, path in (("--token-file", token_file), ("--ca", ca), ("--cert", cert), ("--key", key)):
        if path is not None and not path.is_file():
            raise LaunchError(f"{flag} {path}: no such file (create the files with `fedhpc certs init` and "
                                 f"`fedhpc certs issue`)")


def check_slot_files(pki: Path | None, worker: str, token_file: Path | None, count: int) -> None:
    """Credentials for ``count`` workers: a token file for one, or a PKI directory with
    ``WORKER-K.token`` (and ``.pem``/``.key`` when it has a CA) for each K < count."""
    from fedhpc.gateway.certs import slot_name

    if (token_file is None) == (pki is None or not worker):
        raise LaunchError("give one worker's --token-file, or --pki DIR --worker NAME for one token and "
                          "certificate per worker (`fedhpc certs issue --dir DIR --name NAME --count N`)")
    if token_file is not None and count > 1:
        raise LaunchError(f"{count} workers cannot share one --token-file: the gateway lets one token play one "
                          f"client slot; issue one per worker with `fedhpc certs issue --dir DIR --name NAME "
                          f"--count {count}` and pass --pki DIR --worker NAME")
    if pki is not None:
        suffixes = (".token", ".pem", ".key") if (pki / "ca.pem").is_file() else (".token",)
        missing = [str(pki / f"{slot_name(worker, k)}{s}") for k in range(count) for s in suffixes
                   if not (pki / f"{slot_name(worker, k)}{s}").is_file()]
        if missing:
            raise LaunchError(f"--pki {pki}: no {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1
                              else "") + f": create them with `fedhpc certs issue --dir {pki} --name {worker} "
                              f"--count {count}`")


def render_workers(req: WorkerRequest) -> str:
    """The sbatch script of ``req.count`` worker tasks: task K runs ``fedhpc worker`` as remote client
    ``first_client + K`` on shard K of N of its data, with its own token and certificate
    (``--pki DIR --worker NAME``: the files NAME-K.*), since one token plays one slot.
    """
    host, _, port = req.connect.rpartition(":")
    if not host or not port.isdigit():
        raise LaunchError(f"--connect must be HOST:PORT, got {req.connect!r}")
    if req.count < 1:
        raise LaunchError(f"--count must be >= 1, got {req.count}")
    check_slot_files(req.pki, req.worker, req.token_file, req.count)
    ca = req.ca or (req.pki / "ca.pem" if req.pki is not None and (req.pki / "ca.pem").is_file() else None)
    if req.token_file is not None:
        check_worker_files(req.token_file, ca, req.cert, req.key)
    worker = ["--connect", req.connect, "--data", req.data]
    if req.data_root:
        worker += ["--data-root", req.data_root]
    for flag, path in (("--token-file", req.token_file), ("--ca", ca), ("--cert", req.cert), ("--key", req.key)):
        if path is not None:
            worker += [flag, str(path.resolve())]
    own = ""  # task K's own credentials, under --pki
    if req.pki is not None:
        own = '--token-file "$FEDHPC_PKI/$FEDHPC_WORKER-$SLURM_PROCID.token" '
        if ca is not None:
            own += ('--cert "$FEDHPC_PKI/$FEDHPC_WORKER-$SLURM_PROCID.pem" '
                    '--key "$FEDHPC_PKI/$FEDHPC_WORKER-$SLURM_PROCID.key" ')
    lines = [
        "#!/bin/bash",
        f"# {req.count} fedhpc worker(s) joining the job whose gateway listens at {req.connect}, rendered by",
        f"# `fedhpc slurm add-workers`. Task K is `fedhpc worker` as remote client {req.first_client}+K on shard K",
        "# of N of its data; workers exit 0 when the job ends.",
        f"#SBATCH --job-name={req.job_name}",
        f"#SBATCH --ntasks={req.count}",
        f"#SBATCH --cpus-per-task={req.cpus_per_task}",
        f"#SBATCH --time={req.time}",
    ]
    lines += _placement(req)
    if req.after:
        lines.append(f"#SBATCH --dependency=after:{req.after}")
    lines += [f"#SBATCH {opt}" for opt in req.sbatch_options]
    args = " ".join(_dq(a) for a in worker)
    lines += [
        "",
        f"FEDHPC_VENV={_dq(req.venv)}",
        f"FEDHPC_FIRST_CLIENT={req.first_client}",
        f"FEDHPC_PKI={_dq(str(req.pki.resolve()) if req.pki else '')}",
        f"FEDHPC_WORKER={_dq(req.worker)}",
        "set -o pipefail",
        'if [ -n "$FEDHPC_VENV" ]; then PATH="$FEDHPC_VENV/bin:$PATH"; fi',
        'export PATH FEDHPC_FIRST_CLIENT FEDHPC_PKI FEDHPC_WORKER OMP_NUM_THREADS="${SLURM_CPUS_PER_TASK:-1}"',
        "# workers are not MPI ranks: no PMI; each task names itself and takes its own slot, shard and credentials",
        "exec srun --mpi=none bash -c 'exec python3 -m fedhpc worker \"$@\" "
        "--name \"$(hostname)-$SLURM_JOB_ID-$SLURM_PROCID\" --client-id $((FEDHPC_FIRST_CLIENT + SLURM_PROCID)) "
        f"--shard \"$SLURM_PROCID/$SLURM_NTASKS\" {own}' "
        f"fedhpc-worker {args}",
    ]
    return "\n".join(lines) + "\n"
