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
    from mpi4py import MPI

    from fedhpc.config import load_config, load_config_text
    from fedhpc.runtime.job import main_guarded, run_job

    def go():
        out, resume, base = Path(args.out), None, None
        if args.resume:
            resume, out, base = _resume_target(args.resume, out)
        if args.config:
            cfg = load_config(args.config, args.set)
        elif base is not None:
            # every rank must build the same config: rank 0 reads it, the others receive the text
            text = MPI.COMM_WORLD.bcast(base.read_text() if MPI.COMM_WORLD.rank == 0 else None, root=0)
            cfg = load_config_text(text, args.set, source=f"config of the resumed run ({base})")
        else:
            cfg = load_config(None, args.set)
        return run_job(cfg, out, resume)

    return main_guarded(go)


def _resume_target(arg: str, out: Path) -> tuple[Path, Path, Path | None]:
    """(checkpoint file or directory, output directory, config file to reuse) for --resume."""
    from fedhpc.errors import ConfigError

    target = out if arg == "latest" else Path(arg)
    if target.is_file():
        return target, out, None
    if (target / "checkpoints").is_dir():
        return target / "checkpoints", target, target / "config.toml"
    raise ConfigError(f"--resume {arg}: no checkpoint file and no run directory with checkpoints/ at {target}")


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
    p.set_defaults(func=_cmd_run)

    add_data_commands(sub)

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
