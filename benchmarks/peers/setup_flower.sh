#!/usr/bin/env bash
# Create benchmarks/peers/.venv-flower: Flower with its Ray simulation backend,
# CPU PyTorch and scikit-learn, for flower_digits.py. Kept apart from the
# project's .venv so that Flower's and Ray's dependencies cannot disturb it.
#
# torch is pinned to the project's version, 2.13.0: with this machine's pip
# configuration that resolves to the CPU wheel, where an unpinned torch pulls
# the multi-GB CUDA build. Idempotent: does nothing when the venv is complete;
# a half-built one (no .installed stamp) is rebuilt.
#
# Usage: bash benchmarks/peers/setup_flower.sh   (PYTHON=python3.11 to pick the interpreter)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.venv-flower"
python="${PYTHON:-python3}"

if [[ -f "$venv/.installed" ]]; then
    echo "$venv is ready ($("$venv/bin/python" -c 'import flwr; print("flwr", flwr.__version__)'))"
    exit 0
fi

rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install --quiet --upgrade pip
"$venv/bin/pip" install --quiet "flwr[simulation]" torch==2.13.0 scikit-learn numpy
touch "$venv/.installed"
echo "$venv is ready ($("$venv/bin/python" -c 'import flwr; print("flwr", flwr.__version__)'))"
