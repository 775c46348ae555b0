"""``fedhpc slurm ...``, ``fedhpc k8s render`` and ``fedhpc local run``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fedhpc.errors import FedHPCError


def add_launch_commands(subparsers) -> None:
    """Register the launch commands on the ``fedhpc`` command's subparsers."""
    _add_slurm(subparsers)
    _add_k8s(subparsers)
    _add_local(subparsers)


def _guarded(name: str, fn):
    """Run a command body; fedhpc's own errors print as one line and exit 2."""
    def run(args: argparse.Namespace) -> int:
        try:
            return fn(args)
        except FedHPCError as exc:
            print(f"fedhpc {name}: error: {exc}", file=sys.stderr)
            return 2
    return run


# ---------------------------------------------------------------------------------------------------------------
# slurm

def _add_job_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", nargs="?", type=Path, metavar="CONFIG",
                   help="run configuration TOML (default: the embedded default run)")
    p.add_argument("--out", type=Path, default=Path("runs/slurm-%j"), metavar="DIR",
                   help="run directory, made absolute; %%j stands for the job id (default: runs/slurm-%%j, as the "
                        "jobs/slurm scripts). The job's log is DIR/slurm-JOBID.out, or DIR.out when DIR has %%j")
    p.add_argument("--nodes", type=int, default=1, help="nodes (default: 1)")
    p.add_argument("--ntasks", type=int, help="MPI ranks: rank 0 orchestrates, the others train (default: 5; with "
                                              "--gpus: nodes x gpus + 1)")
    p.add_argument("--cpus-per-task", type=int, default=1, metavar="N",
                   help="CPUs per rank, also its torch/OpenMP threads (local.threads) (default: 1)")
    p.add_argument("--gpus", type=int, default=0, metavar="G",
                   help="GPUs per node: one trainer rank per GPU, rank 0 on the CPU, whole nodes (default: 0)")
    p.add_argument("--time", default="01:00:00", help="time limit, SLURM syntax (default: 01:00:00)")
    p.add_argument("--partition", default="", help="partition (default: the cluster's default)")
    p.add_argument("--account", default="", help="account to charge (default: yours)")
    p.add_argument("--job-name", default="fedhpc", help="job name (default: fedhpc)")
    p.add_argument("--preemptible", action="store_true",
                   help="--requeue and --signal=B:USR1@LEAD: checkpoint before the time limit or on preemption, "
                        "requeue, and resume from the newest checkpoint, so short allocations finish a long run")
    p.add_argument("--signal-lead", type=int, default=120, metavar="S",
                   help="with --preemptible: seconds before the time limit to signal (default: 120)")
    p.add_argument("--gateway", type=int, nargs="?", const=50051, default=0, metavar="PORT",
                   help="run the gateway rank for cloud workers on PORT (default 50051) of the last node; the job "
                        "prints the address and writes it to OUT/gateway.address")
    p.add_argument("--overcommit", action="store_true",
                   help="allow more ranks than CPUs (otherwise such a job pends forever)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key in the job, e.g. --set rounds=200 (repeatable; no spaces in values)")
    p.add_argument("--venv", default=None, metavar="DIR",
                   help="virtual environment with fedhpc on the compute nodes (default: the one running this "
                        "command)")
    p.add_argument("--mpi", default="pmi2", help="srun --mpi plugin matching your MPI (default: pmi2, for MPICH; "
                                                "pmix for Open MPI)")
    p.add_argument("--sbatch", action="append", default=[], metavar="OPTION",
                   help="extra #SBATCH line, e.g. --sbatch=--qos=high (repeatable)")


def _slurm_request(args: argparse.Namespace):
    from fedhpc.launch.slurm import SlurmRequest, current_venv

    return SlurmRequest(
        config=args.config, out=args.out, nodes=args.nodes, ntasks=args.ntasks, cpus_per_task=args.cpus_per_task,
        gpus_per_node=args.gpus, time=args.time, partition=args.partition, account=args.account,
        job_name=args.job_name, preemptible=args.preemptible, signal_lead_s=args.signal_lead,
        gateway_port=args.gateway, overcommit=args.overcommit, sets=args.set,
        venv=current_venv() if args.venv is None else args.venv, mpi=args.mpi, sbatch_options=args.sbatch)


def _cmd_render(args: argparse.Namespace) -> int:
    from fedhpc.launch import slurm

    sys.stdout.write(slurm.render(_slurm_request(args)))
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    from fedhpc.launch import slurm

    job_id, out = slurm.submit(_slurm_request(args))
    print(job_id)
    log = slurm.log_path(args.out.resolve()).replace("%j", job_id)
    print(f"submitted job {job_id}: run directory {out} (the script is {out}/job.sbatch), log {log}; follow it "
          f"with `fedhpc slurm status {job_id}`", file=sys.stderr)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    from fedhpc.launch import slurm

    info = slurm.status(args.job, args.out)
    print(json.dumps(info, indent=2) if args.json else slurm.format_status(info))
    return 1 if info["state"] == "UNKNOWN" and "progress" not in info else 0


def _cmd_cancel(args: argparse.Namespace) -> int:
    from fedhpc.launch import slurm

    print(slurm.cancel(args.job))
    return 0


def _cmd_add_workers(args: argparse.Namespace) -> int:
    from fedhpc.config import load_config
    from fedhpc.launch import slurm

    if (args.connect is None) == (args.run is None):
        raise slurm.LaunchError("give the gateway either as --connect HOST:PORT or as --run OUT (the job's run "
                                   "directory, which holds gateway.address and config.toml)")
    connect = args.connect or slurm.gateway_address(args.run)
    config = args.config or (args.run / "config.toml" if args.run else None)
    if args.config is None and config is not None and not config.is_file():
        raise slurm.LaunchError(f"{args.run} has no config.toml yet: the job's ranks write it as they start; "
                                   f"retry in a few seconds, or give the job's config with --config")
    cfg = load_config(config)
    first = cfg.clients.total if args.first_client is None else args.first_client
    slots = range(cfg.clients.total, cfg.clients.total + cfg.gateway.clients)
    if first not in slots or first + args.count - 1 not in slots:
        raise slurm.LaunchError(f"--count {args.count} workers from client {first} do not fit the job's remote "
                                   f"client slots {slots.start}..{slots.stop - 1} ([gateway] clients = "
                                   f"{cfg.gateway.clients}); add fewer, or raise gateway.clients in the next run")
    req = slurm.WorkerRequest(
        connect=connect, token_file=args.token_file, first_client=first, pki=args.pki, worker=args.worker,
        count=args.count, ca=args.ca, cert=args.cert, key=args.key, data=args.data or cfg.data.name,
        data_root=args.data_root or cfg.data.root, after=args.after, cpus_per_task=args.cpus_per_task,
        time=args.time, partition=args.partition, account=args.account,
        venv=slurm.current_venv() if args.venv is None else args.venv, sbatch_options=args.sbatch)
    script = slurm.render_workers(req)
    if args.dry_run:
        sys.stdout.write(script)
        return 0
    path = Path(args.script)
    path.write_text(script)
    print(slurm.sbatch(path))
    return 0


def _add_slurm(subparsers) -> None:
    slurm = subparsers.add_parser("slurm", help="render, submit, watch and cancel SLURM jobs",
                                  description="Run fedhpc under SLURM: sbatch scripts from a run config, their "
                                              "state, and extra gateway workers. Ready-to-copy scripts: jobs/slurm/.")
    ssub = slurm.add_subparsers(dest="slurm_command", required=True, metavar="ACTION")

    p = ssub.add_parser("render", help="print an sbatch script for a run config",
                        description="Print the sbatch script that runs CONFIG with these resources: srun "
                                    "--mpi=pmi2, threads per rank from --cpus-per-task, the run directory, and "
                                    "optionally GPUs, a gateway rank, or preemption with automatic resume.")
    _add_job_options(p)
    p.set_defaults(func=_guarded("slurm render", _cmd_render))

    p = ssub.add_parser("submit", help="render the sbatch script, sbatch it, print the job id",
                        description="Like `fedhpc slurm render`, then submit the script with sbatch, keep a copy "
                                    "in OUT/job.sbatch and print the job id (only the id on stdout).")
    _add_job_options(p)
    p.set_defaults(func=_guarded("slurm submit", _cmd_submit))

    p = ssub.add_parser("status", help="a job's state, elapsed time, reason, requeues and run progress",
                        description="State, elapsed time, pending reason, requeue count and exit code from "
                                    "`scontrol show job` (sacct once SLURM has forgotten the job), and the run's "
                                    "own progress from OUT/metrics.jsonl. Exit 1 when neither is known.")
    p.add_argument("job", metavar="JOBID")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="the run directory (default: found from the job: rendered scripts record it, "
                        "jobs/slurm scripts use WORKDIR/runs/slurm-JOBID)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=_guarded("slurm status", _cmd_status))

    p = ssub.add_parser("cancel", help="scancel a job", description="Cancel the job now (scancel). To stop a "
                        "preemptible job with a checkpoint instead, `scancel --signal=USR1 --batch JOBID` makes it "
                        "checkpoint and requeue.")
    p.add_argument("job", metavar="JOBID")
    p.set_defaults(func=_guarded("slurm cancel", _cmd_cancel))

    p = ssub.add_parser("add-workers", help="submit a job of `fedhpc worker` processes that join a running job",
                        description="Elastic growth: submit a separate job of COUNT tasks that join a running job "
                                    "through its gateway rank (a job started with jobs/slurm/hybrid.sbatch or "
                                    "--gateway); task K is `fedhpc worker` as remote client FIRST+K on shard K of "
                                    "COUNT of its data.")
    p.add_argument("--run", type=Path, metavar="OUT",
                   help="the job's run directory: its gateway.address and config.toml")
    p.add_argument("--connect", metavar="HOST:PORT", help="or: the gateway's address ...")
    p.add_argument("--config", type=Path, metavar="CONFIG", help="... and the job's run config (default with --run: "
                                                                 "OUT/config.toml)")
    p.add_argument("--first-client", type=int, metavar="ID",
                   help="remote client slot of the first worker; worker K takes ID+K (default: the job's first "
                        "remote slot, clients.total)")
    _add_credentials(p, "task")
    p.add_argument("--count", type=int, default=1, help="workers, one SLURM task each (default: 1)")
    p.add_argument("--data", help="dataset the workers train on (default: the job's data.name)")
    p.add_argument("--data-root", help="directory of the dataset files (default: the job's data.root)")
    p.add_argument("--after", default="", metavar="JOBID", help="start only once job JOBID has started")
    p.add_argument("--cpus-per-task", type=int, default=1, metavar="N", help="CPUs (threads) per worker (default: 1)")
    p.add_argument("--time", default="01:00:00", help="time limit (default: 01:00:00)")
    p.add_argument("--partition", default="", help="partition (default: the cluster's default)")
    p.add_argument("--account", default="", help="account to charge (default: yours)")
    p.add_argument("--venv", default=None, metavar="DIR", help="virtual environment with fedhpc (default: this one)")
    p.add_argument("--sbatch", action="append", default=[], metavar="OPTION", help="extra #SBATCH line (repeatable)")
    p.add_argument("--script", default="fedhpc-workers.sbatch", metavar="FILE",
                   help="where to write the script before submitting (default: ./fedhpc-workers.sbatch)")
    p.add_argument("--dry-run", action="store_true", help="print the script instead of submitting it")
    p.set_defaults(func=_guarded("slurm add-workers", _cmd_add_workers))


def _add_credentials(p: argparse.ArgumentParser, unit: str) -> None:
    """The workers' credentials: one token and certificate per worker (the gateway lets one token play one slot)."""
    p.add_argument("--pki", type=Path, metavar="DIR",
                   help=f"directory of the workers' credentials: {unit} K uses WORKER-K.token, .pem and .key, made by "
                        f"`fedhpc certs issue --dir DIR --name WORKER --count N` (and DIR/ca.pem as --ca)")
    p.add_argument("--worker", default="", metavar="WORKER", help="the name the credentials were issued under")
    p.add_argument("--token-file", type=Path, help="or, for one worker only: its token file")
    p.add_argument("--ca", type=Path, help="CA certificate (PEM) of the gateway; without it the link is NOT encrypted")
    p.add_argument("--cert", type=Path, help="the one worker's certificate (PEM) for mutual TLS, with --token-file")
    p.add_argument("--key", type=Path, help="the one worker's private key (PEM), with --token-file")


# ---------------------------------------------------------------------------------------------------------------
# k8s

def _cmd_k8s_render(args: argparse.Namespace) -> int:
    from fedhpc.launch import k8s

    d = k8s.WorkerSet(
        connect=args.connect, token_file=args.token_file, pki=args.pki, worker=args.worker, ca=args.ca,
        cert=args.cert, key=args.key,
        config=args.config, first_client=args.first_client, image=args.image, name=args.name,
        namespace=args.namespace, replicas=args.replicas, min_replicas=args.min_replicas,
        max_replicas=args.max_replicas, cpu_target=args.cpu_target, cpu=args.cpu, memory=args.memory)
    if args.ca is None and (args.pki is None or not (args.pki / "ca.pem").is_file()):
        print("fedhpc k8s render: warning: no --ca: the workers' link to the gateway will not be encrypted",
              file=sys.stderr)
    if args.out is None:
        sys.stdout.write("---\n".join(k8s.render_files(d).values()))
        return 0
    for path in k8s.write(d, args.out):
        print(path)
    print(f"apply with: kubectl apply -f {args.out}", file=sys.stderr)
    return 0


def _add_k8s(subparsers) -> None:
    k8s = subparsers.add_parser("k8s", help="Kubernetes manifests for gateway workers",
                                description="Cloud workers on Kubernetes that join a running job through its "
                                            "gateway. Example manifests: jobs/k8s/.")
    ksub = k8s.add_subparsers(dest="k8s_command", required=True, metavar="ACTION")
    p = ksub.add_parser("render", help="write a worker StatefulSet, its Secret and an autoscaler",
                        description="Write secret.yaml (each pod's token and TLS files), workers.yaml (a StatefulSet of "
                                    "`fedhpc worker` pods with resource requests; pod NAME-K is remote client "
                                    "FIRST+K) and hpa.yaml (HorizontalPodAutoscaler) into --out, ready for "
                                    "`kubectl apply -f DIR`; without --out print them. The files are JSON, which is "
                                    "YAML, with comment headers explaining each knob.")
    p.add_argument("config", nargs="?", type=Path, metavar="CONFIG",
                   help="the job's run configuration: its remote client slots, dataset and threads per worker "
                        "(default: the embedded default run)")
    p.add_argument("--connect", required=True, metavar="HOST:PORT", help="the gateway address as the pods reach it")
    _add_credentials(p, "pod")
    p.add_argument("--image", default="fedhpc:0.1.0", help="container image with fedhpc (default: fedhpc:0.1.0)")
    p.add_argument("--name", default="fedhpc-worker", help="StatefulSet name (default: fedhpc-worker)")
    p.add_argument("--first-client", type=int, metavar="ID",
                   help="remote client slot of pod 0; pod K takes ID+K (default: the job's first remote slot, "
                        "clients.total)")
    p.add_argument("--namespace", default="", help="namespace (default: kubectl's current one)")
    p.add_argument("--replicas", type=int, default=2, help="workers at the start (default: 2, at most the maximum)")
    p.add_argument("--min-replicas", type=int, default=1, help="autoscaler minimum (default: 1)")
    p.add_argument("--max-replicas", type=int,
                   help="autoscaler maximum (default: every remote client slot of the job from --first-client on)")
    p.add_argument("--cpu-target", type=int, default=80, metavar="PERCENT",
                   help="autoscaler target CPU use, percent of the request (default: 80)")
    p.add_argument("--cpu", default="", help="CPU request per worker (default: the config's local.threads)")
    p.add_argument("--memory", default="2Gi", help="memory request and limit per worker (default: 2Gi)")
    p.add_argument("--out", type=Path, metavar="DIR", help="directory for the three files (default: print them)")
    p.set_defaults(func=_guarded("k8s render", _cmd_k8s_render))


# ---------------------------------------------------------------------------------------------------------------
# local

def _cmd_local_run(args: argparse.Namespace) -> int:
    from fedhpc.launch import local

    cmd = local.command(args.n, args.config, args.out, args.set, args.resume)
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    local.start(cmd, args.config, args.set, args.resume)


def _add_local(subparsers) -> None:
    local = subparsers.add_parser("local", help="run on this machine with the environment's own mpiexec")
    lsub = local.add_subparsers(dest="local_command", required=True, metavar="ACTION")
    p = lsub.add_parser("run", help="mpiexec -n N fedhpc run ..., with this environment's mpiexec",
                        description="Start `mpiexec -n N python -m mpi4py -m fedhpc run` with the mpiexec that "
                                    "belongs to this environment (an MPICH-linked environment aborts under another "
                                    "MPI's mpiexec) and OMP_NUM_THREADS from local.threads. See also "
                                    "jobs/local/mpirun.sh.")
    p.add_argument("config", nargs="?", type=Path, metavar="CONFIG",
                   help="run configuration TOML (default: the embedded default run)")
    p.add_argument("-n", type=int, default=5, metavar="N", help="MPI ranks (default: 5)")
    p.add_argument("--out", type=Path, metavar="DIR", help="run directory (default: fedhpc run's, runs/latest)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--resume", metavar="OUT|CKPT|latest", help="continue a run (as `fedhpc run --resume`)")
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    p.set_defaults(func=_guarded("local run", _cmd_local_run))
