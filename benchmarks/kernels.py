#!/usr/bin/env python
"""Kernel microbenchmark: same code as ``fedhpc bench kernels``; see --help."""

import argparse
import sys

from fedhpc.bench import kernels

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=kernels.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    kernels.add_arguments(parser)
    parser.set_defaults(json="benchmarks/results/kernels.json")
    sys.exit(kernels.main(parser.parse_args()))
