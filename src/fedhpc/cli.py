"""The ``fedhpc`` command line: ``fedhpc <command> --help`` for each command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _cmd_info(args: argparse.Namespace) -> int:
    import fedhpc
    from fedhpc import kernels as K

    print(f"fedhpc {fedhpc.__version__}")
    print(f"kernels: OpenMP threads {K.get_num_threads()}, built with CUDA: {K.built_with_cuda()}, "
          f"CUDA devices: {K.cuda_device_count()}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from fedhpc import env

    if not env.launched():
        return _self_launch(args)
    if args.np is not None:
        print("fedhpc run: error: --np is for a run started without mpiexec or srun; under a launcher its own "
              "-n / --ntasks sets the ranks", file=sys.stderr)
        return 2
    from mpi4py import MPI

    from fedhpc.config import load_config, load_config_text
    from fedhpc.runtime.job import collective, finish, main_guarded, run_job
    from fedhpc.runtime.transport import STARTUP_S, bcast_object

    comm = MPI.COMM_WORLD

    def go():
        out, resume, base = Path(args.out), None, None
        if args.resume:
            resume, out, base = collective(comm, lambda: _resume_target(args.resume, out))
        if base is not None:
            # every rank must build the same config: rank 0 reads it, the others receive the text
            text = bcast_object(comm, base.read_text() if comm.rank == 0 else None, STARTUP_S,
                                "rank 0 to read the resumed run's config")
        cfg = collective(comm, lambda: load_config(args.config, args.set) if args.config or base is None
                         else load_config_text(text, args.set, source=f"config of the resumed run ({base})"))
        return run_job(cfg, out, resume)

    finish(main_guarded(go), MPI.COMM_WORLD.rank)


def _self_launch(args: argparse.Namespace) -> int:
    """``fedhpc run`` started as a plain process: become ``mpiexec -n NP`` of the same run (its
    signals and exit status are then the job's); 2 with a message if that cannot be done."""
    import os

    from fedhpc.errors import FedHPCError
    from fedhpc.launch import local

    np_ = args.np if args.np is not None else max(3, (os.cpu_count() or 1) + 1)
    try:
        config = Path(args.config) if args.config else None
        cmd = local.command(np_, config, Path(args.out), args.set, args.resume)
        print(f"fedhpc run: not started by mpiexec or srun: running {np_} ranks under {cmd[0]} (rank 0 "
              f"orchestrates, the others train; --np N to choose)", file=sys.stderr)
        local.start(cmd, config, args.set, args.resume)
    except FedHPCError as exc:
        print(f"fedhpc run: error: {exc}", file=sys.stderr)
        return 2


def _resume_target(arg: str, out: Path) -> tuple[Path, Path, Path | None]:
    """(checkpoint file or directory, output directory, config file to reuse) for --resume."""
    from fedhpc.errors import ConfigError

    target = out if arg == "latest" else Path(arg)
    if target.is_file():
        return target, out, None
    if (target / "checkpoints").is_dir():
        return target / "checkpoints", target, target / "config.toml"
    raise ConfigError(f"--resume {arg}: no checkpoint file and no run directory with checkpoints/ at {target}")


def _cmd_inspect(args: argparse.Namespace) -> int:
    from fedhpc.errors import FedHPCError
    from fedhpc.report import inspect

    try:
        print(inspect(Path(args.path)))
    except FedHPCError as exc:
        print(f"fedhpc inspect: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from fedhpc.errors import FedHPCError
    from fedhpc.report import report

    try:
        for p in report(Path(args.out)):
            print(p)
    except FedHPCError as exc:
        print(f"fedhpc report: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_watch(args: argparse.Namespace) -> int:
    from fedhpc.watch import watch

    return watch(args.out, args.interval, args.once)


def _cmd_worker(args: argparse.Namespace) -> int:
    from fedhpc.gateway.worker import run_worker

    return run_worker(args)


def _cmd_certs(args: argparse.Namespace) -> int:
    from fedhpc.errors import FedHPCError
    from fedhpc.gateway import certs

    try:
        if args.certs == "init":
            files = certs.init(Path(args.dir), args.hosts.split(","))
        elif args.count is None:
            files, _ = certs.issue(Path(args.dir), args.name)
        else:
            files = certs.issue_slots(Path(args.dir), args.name, args.count)
    except FedHPCError as exc:
        print(f"fedhpc certs: error: {exc}", file=sys.stderr)
        return 2
    for f in files:
        print(f)
    return 0


def _cmd_bench_kernels(args: argparse.Namespace) -> int:
    from fedhpc.bench import kernels

    return kernels.main(args)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for documentation and tests)."""
    from fedhpc.bench import kernels as bench_kernels
    from fedhpc.data.cli import add_data_commands

    parser = argparse.ArgumentParser(prog="fedhpc", description="Federated learning as one MPI job.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("info", help="print the version and what the kernels were built with")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("run", help="run a federated training job (under mpiexec/srun: rank 0 orchestrates)",
                       description="Run a federated job. Launch under MPI, e.g. `mpiexec -n 5 fedhpc run "
                       "--config run.toml --out runs/exp1`. With no --config, runs the embedded default: "
                       "sklearn digits, 20 non-IID clients (2 classes each), an MLP, FedAvg.")
    p.add_argument("--config", metavar="TOML", help="run configuration (default: the embedded default run)")
    p.add_argument("--out", metavar="DIR", default="runs/latest", help="output directory (default: runs/latest)")
    p.add_argument("--set", metavar="KEY=VALUE", action="append", default=[],
                   help="override a config key, e.g. --set local.lr=0.1 --set codec.name=topk (repeatable)")
    p.add_argument("--resume", metavar="OUT|CKPT|latest",
                   help="continue a run: from the newest valid checkpoint of run directory OUT (which also becomes "
                        "--out and supplies the config), from one checkpoint file, or 'latest' = the --out directory. "
                        "Extend a finished run with --set rounds=N")
    p.add_argument("--np", type=int, metavar="N",
                   help="started without mpiexec or srun, run the job under mpiexec with N ranks (default: one per "
                        "core plus rank 0, at least 3); under a launcher, its own -n sets the ranks")
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("inspect", help="summarise a checkpoint (ckpt-*.h5) or a run record (run.h5)")
    p.add_argument("path", help="checkpoint or run.h5 file")
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser("report", help="draw PNG plots and a markdown summary of a run into OUT/report/")
    p.add_argument("out", help="run directory (holds run.h5)")
    p.set_defaults(func=_cmd_report)

    add_data_commands(sub)

    from fedhpc.watch import add_arguments as add_watch_arguments

    p = sub.add_parser("watch", help="follow a running (or finished) job in the terminal",
                       description="Show a run directory as the job writes it: rounds done, the accuracy curve, the "
                                   "last rounds' clients, traffic, time and overhead, and each client's status. "
                                   "Ends when the run is over; Ctrl-C leaves at any time.")
    add_watch_arguments(p)
    p.set_defaults(func=_cmd_watch)

    from fedhpc.gateway.cli import add_arguments as add_worker_arguments

    p = sub.add_parser("worker", help="join a running job through its gateway (no MPI needed)",
                       description="Register with a job's gateway, train the tasks it sends on local data, "
                                   "stream the updates back; reconnects with backoff. Exit 0 when the job ends, "
                                   "2 when refused (token/certificate), 1 after --retry-s without the gateway.")
    add_worker_arguments(p)
    p.set_defaults(func=_cmd_worker)

    certs = sub.add_parser("certs", help="create a CA, the gateway certificate, worker certificates and tokens")
    csub = certs.add_subparsers(dest="certs", required=True, metavar="ACTION")
    p = csub.add_parser("init", help="new CA + server certificate + empty tokens.txt in --dir")
    p.add_argument("--dir", required=True, help="directory for the files (keys are written 0600)")
    p.add_argument("--hosts", default="localhost,127.0.0.1",
                   help="comma-separated DNS names / IPs workers use to reach the gateway (certificate SANs)")
    p.set_defaults(func=_cmd_certs)
    p = csub.add_parser("issue", help="a worker certificate NAME.pem/.key and a token (appended to tokens.txt)")
    p.add_argument("--dir", required=True, help="the directory made by `fedhpc certs init`")
    p.add_argument("--name", required=True, help="worker name")
    p.add_argument("--count", type=int, metavar="N",
                   help="credentials for N workers, one per remote client slot: NAME-0 .. NAME-(N-1) (what "
                        "`fedhpc slurm add-workers --pki` and `fedhpc k8s render --pki` mount, one per task/pod)")
    p.set_defaults(func=_cmd_certs)

    from fedhpc.launch.cli import add_launch_commands
    add_launch_commands(sub)

    bench = sub.add_parser("bench", help="microbenchmarks to run on your own nodes")
    bsub = bench.add_subparsers(dest="bench", required=True, metavar="BENCHMARK")
    p = bsub.add_parser("kernels", help="time the compression/aggregation kernels against torch/numpy baselines",
                        description=bench_kernels.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench_kernels.add_arguments(p)
    p.set_defaults(func=_cmd_bench_kernels)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
