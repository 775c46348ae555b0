# Two commands from a fresh clone: `make demo` and `make test`. Both create
# .venv when it is missing and install fedhpc into it with every dependency.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
NP     ?= 5
export OMP_NUM_THREADS ?= 1

.PHONY: setup demo test test-unit test-mpi test-e2e test-slurm lint bench clean

setup: $(VENV)/.installed

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# Build tools go in first so the editable install can build without isolation
# (no download of a second cmake, and incremental rebuilds in build/).
$(VENV)/.build-tools: | $(BIN)/python
	$(BIN)/pip install --quiet scikit-build-core pybind11 ninja cmake
	touch $@

$(VENV)/.installed: $(VENV)/.build-tools pyproject.toml CMakeLists.txt $(wildcard csrc/*.cpp csrc/*.hpp csrc/cuda/*.cu)
	$(BIN)/pip install --quiet --no-build-isolation -e ".[test,mpich,mlflow,llm]"
	touch $@

demo: setup
	$(BIN)/mpiexec -n $(NP) $(BIN)/python -m mpi4py -m fedhpc run --out runs/demo

# the README's test command: the linter, the type checker, then every tier
test: lint
	$(BIN)/python -m pytest tests -q --durations=25

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy

test-unit: setup
	$(BIN)/python -m pytest tests -q -m unit

test-mpi: setup
	$(BIN)/python -m pytest tests -q -m mpi

test-e2e: setup
	$(BIN)/python -m pytest tests -q -m e2e

test-slurm: setup
	$(BIN)/python -m pytest tests -q -m slurm

bench: setup
	$(BIN)/python benchmarks/kernels.py --json benchmarks/results/kernels.json

clean:
	rm -rf build $(VENV)

.PHONY: bench-paper bench-overhead bench-peers bench-aggregation bench-clients
bench-paper: setup
	$(BIN)/python benchmarks/paper.py

bench-overhead: setup
	$(BIN)/python benchmarks/overhead.py

bench-peers: setup
	$(BIN)/python benchmarks/peers/compare.py

bench-aggregation: setup
	$(BIN)/python benchmarks/aggregation.py

bench-clients: setup
	$(BIN)/python benchmarks/clients.py
