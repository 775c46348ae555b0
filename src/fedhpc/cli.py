"""The ``fedhpc`` command line: ``fedhpc <command> --help`` for each command."""

from __future__ import annotations

import argparse
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    import fedhpc
    from fedhpc import kernels as K

    print(f"fedhpc {fedhpc.__version__}")
    print(f"kernels: OpenMP threads {K.get_num_threads()}, built with CUDA: {K.built_with_cuda()}, "
          f"CUDA devices: {K.cuda_device_count()}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedhpc.config import load_config
    from fedhpc.runtime.job import main_guarded, run_job

    def go():
        cfg = load_config(args.config, args.set)
        run_job(cfg, Path(args.out))

    return main_guarded(go)


def _cmd_bench_kernels(args: argparse.Namespace) -> int:
    from fedhpc.bench import kernels

    return kernels.main(args)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (exposed for documentation and tests)."""
    from fedhpc.bench import kernels as bench_kernels

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
    p.set_defaults(func=_cmd_run)

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
