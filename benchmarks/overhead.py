#!/usr/bin/env python
"""Orchestration overhead and data plane vs raw MPI and pickling: see --help."""

import argparse
import sys
from pathlib import Path

from fedhpc.bench import overhead

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=overhead.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    overhead.add_arguments(parser)
    parser.set_defaults(json=Path("benchmarks/results/overhead.json"), readme=Path("benchmarks/README.md"))
    sys.exit(overhead.main(parser.parse_args()))
