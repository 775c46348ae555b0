#!/bin/bash
# fedhpc on a workstation: NP MPI ranks on this machine (rank 0 orchestrates, the others host the
# virtual clients and train them), with the mpiexec of the environment fedhpc is installed in.
#
#   jobs/local/mpirun.sh                                        # the embedded default run, 5 ranks
#   NP=3 FEDHPC_CONFIG=run.toml jobs/local/mpirun.sh --set rounds=10
#   jobs/local/mpirun.sh --resume runs/local                    # continue a stopped run
#
# Arguments after the script name go to `fedhpc run` as they are. Ctrl-C (or SIGTERM/SIGUSR1 to
# mpiexec) makes the ranks finish the round, write a checkpoint and exit with status 75.
#
# Knobs (environment variables):
#   NP              MPI ranks, at least 2 (default: 5); more ranks than cores is fine for MPICH
#   FEDHPC_CONFIG   run config TOML (default: empty = the embedded default run)
#   FEDHPC_OUT      run directory (default: runs/local), unless the arguments name --out or --resume
#   FEDHPC_SET      extra config overrides, whitespace-separated KEY=VALUE words
#   FEDHPC_VENV     virtual environment with fedhpc (default: the active one, $VIRTUAL_ENV, else the
#                   repository's .venv next to this script when there is one, else python3 on PATH).
#                   Its own mpiexec is used when it has one: an MPICH-linked environment (the mpich
#                   wheel) aborts under another MPI's mpiexec.
#   FEDHPC_THREADS  torch/OpenMP threads per rank, OMP_NUM_THREADS and local.threads (default: 1)
set -o pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${NP:=5}"
: "${FEDHPC_CONFIG:=}"
: "${FEDHPC_OUT:=runs/local}"
: "${FEDHPC_SET:=}"
if [ -z "${FEDHPC_VENV:-}" ]; then
    if [ -n "${VIRTUAL_ENV:-}" ]; then
        FEDHPC_VENV=$VIRTUAL_ENV
    elif [ -x "$here/../../.venv/bin/python" ]; then
        FEDHPC_VENV=$(cd "$here/../.." && pwd)/.venv
    fi
fi
: "${FEDHPC_THREADS:=1}"

if [ -n "${FEDHPC_VENV:-}" ]; then
    if [ ! -x "$FEDHPC_VENV/bin/python" ]; then
        echo "mpirun.sh: FEDHPC_VENV=$FEDHPC_VENV has no bin/python; point it at the environment fedhpc is installed in" >&2
        exit 2
    fi
    PATH="$FEDHPC_VENV/bin:$PATH"
fi
PYTHON=$(command -v python3)
if [ -z "$PYTHON" ] || ! "$PYTHON" -c "import fedhpc" 2>/dev/null; then
    echo "mpirun.sh: cannot import fedhpc with '${PYTHON:-python3}'; set FEDHPC_VENV=/path/to/venv (make setup creates .venv)" >&2
    exit 2
fi
MPIEXEC=$(command -v mpiexec)
if [ -z "$MPIEXEC" ]; then
    echo "mpirun.sh: no mpiexec in $FEDHPC_VENV/bin or on PATH: pip install mpich into the environment" >&2
    exit 2
fi
export PATH OMP_NUM_THREADS="$FEDHPC_THREADS"

args=()
case " $* " in
    *" --out "* | *" --out="* | *" --resume "* | *" --resume="*) ;;
    *) args+=(--out "$FEDHPC_OUT") ;;
esac
if [ -n "$FEDHPC_CONFIG" ]; then args+=(--config "$FEDHPC_CONFIG"); fi
args+=(--set "local.threads=$FEDHPC_THREADS")
set -f  # FEDHPC_SET is split on whitespace, never globbed
for kv in $FEDHPC_SET; do args+=(--set "$kv"); done
set +f

# `python -m mpi4py`: a rank that fails aborts the whole job instead of leaving the others waiting
exec "$MPIEXEC" -n "$NP" "$PYTHON" -m mpi4py -m fedhpc run "${args[@]}" "$@"
