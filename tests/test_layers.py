"""The project's architecture holds: qworker's layers point one way (pyproject.toml's
import-linter contracts) and no module imports itself back through others, function-local
imports included."""

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_are_kept():
    run = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0 and "0 broken" in run.stdout, run.stdout[-3000:] + run.stderr[-2000:]


def cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Every module that reaches itself, with one path back (depth-first search)."""
    found, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for imported in sorted(graph.find_modules_directly_imported_by(module)):
            if state.get(imported) == "open":
                found.append(path[path.index(imported) :] + [imported])
            elif imported not in state:
                visit(imported, path + [imported])
        state[module] = "done"

    for module in sorted(graph.modules):
        if module not in state:
            visit(module, [module])
    return found


def test_no_import_cycle_function_local_imports_included():
    graph = grimp.build_graph("qworker", "trainer", cache_dir=None)
    # the graph sees imports inside functions (this one keeps Ray out of an in-process server)
    assert graph.direct_import_exists(importer="qworker.server.service", imported="qworker.server.ray_pool")
    assert cycles(graph) == []
    graph.add_import(importer="qworker.circuit", imported="qworker.server.service")  # the check can fail
    assert any(c[0] == "qworker.circuit" for c in cycles(graph))


def test_the_public_api_loads_neither_grpc_nor_ray():
    """`import qworker` is the simulators and gradients: the service's stack comes with a grpc:// or ray backend."""
    code = "import qworker, sys; print(sorted(m for m in sys.modules if m.split('.')[0] in ('grpc', 'ray')))"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stdout + run.stderr
