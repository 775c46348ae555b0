#!/usr/bin/env python
"""The paper's experiments (Tables 2-4, stragglers, ablations): see --help."""

import argparse
import sys
from pathlib import Path

from fedhpc.bench import paper

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=paper.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    paper.add_arguments(parser)
    results = Path("benchmarks/results")
    parser.set_defaults(json=results / "paper.json", plots=results, readme=Path("benchmarks/README.md"))
    sys.exit(paper.main(parser.parse_args()))
