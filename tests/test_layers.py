"""The package's shape: layers import downward only, no import cycles, and no MPI under a plain worker.

Read from the source with ``ast``, so imports inside functions count too.
"""

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

SRC = Path(__file__).resolve().parents[1] / "src"

# lowest first: a module may import its own layer and those below it
LAYERS = [
    ["fedhpc", "fedhpc._kernels", "fedhpc.kernels", "fedhpc.errors", "fedhpc.env", "fedhpc.types", "fedhpc.seeds",
     "fedhpc.registry", "fedhpc.clock", "fedhpc.update", "fedhpc.ring", "fedhpc.table"],
    ["fedhpc.compress", "fedhpc.strategy", "fedhpc.selection", "fedhpc.data", "fedhpc.models", "fedhpc.privacy",
     "fedhpc.attack", "fedhpc.secagg", "fedhpc.staleness"],
    ["fedhpc.config", "fedhpc.checkpoint", "fedhpc.record", "fedhpc.report", "fedhpc.tracking"],
    ["fedhpc.runtime", "fedhpc.gateway"],
    ["fedhpc.launch", "fedhpc.bench", "fedhpc.cli", "fedhpc.__main__", "fedhpc.watch"],
]


def modules() -> dict[str, Path]:
    out = {}
    for p in SRC.rglob("*.py"):
        parts = p.relative_to(SRC).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    return out


def imports(name: str, path: Path, known: dict) -> set[str]:
    """Modules ``name`` imports anywhere in its source (``from pkg import mod`` counts as ``pkg.mod``)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            subs = {f"{base}.{a.name}" for a in node.names} & known.keys()
            found |= subs or {base}
    return found - {name}


GRAPH = {name: imports(name, path, modules()) for name, path in modules().items()}


def layer(name: str) -> int:
    best = max(((len(prefix), i) for i, names in enumerate(LAYERS) for prefix in names
                if name == prefix or name.startswith(prefix + ".")), default=None)
    assert best is not None, f"{name} is in no layer: add it to LAYERS"
    return best[1]


def test_every_module_has_a_layer_and_imports_only_downward():
    upward = [f"{m} (layer {layer(m)}) imports {d} (layer {layer(d)})"
              for m, deps in sorted(GRAPH.items()) for d in sorted(deps) if d in GRAPH and layer(d) > layer(m)]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    cycles, state, stack = [], {}, []

    def visit(m):
        state[m] = "open"
        stack.append(m)
        for d in sorted(GRAPH[m] & GRAPH.keys()):
            if state.get(d) == "open":
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in state:
                visit(d)
        stack.pop()
        state[m] = "done"

    for m in sorted(GRAPH):
        if m not in state:
            visit(m)
    # a package's __init__ re-exporting its submodules is not a cycle of their code
    real = [c for c in cycles if not any(c.startswith(p + " -> " + p + ".") for p in GRAPH)]
    assert not real, "\n".join(real)


@pytest.mark.parametrize("entry", ["fedhpc.gateway.worker", "fedhpc.runtime.step", "fedhpc.update"])
def test_what_a_plain_worker_needs_never_imports_mpi(entry):
    seen, todo = set(), [entry]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        assert not any(d == "mpi4py" or d.startswith("mpi4py.") for d in GRAPH.get(m, ())), \
            f"{m}, which {entry} needs, imports mpi4py"
        todo += [d for d in GRAPH.get(m, ()) if d in GRAPH]
    assert "fedhpc.update" in seen and "fedhpc.kernels" in seen  # the walk really followed the imports ...
    assert "mpi4py" in GRAPH["fedhpc.runtime.transport"]  # ... and sees an import of MPI where there is one
