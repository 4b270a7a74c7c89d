"""The project's modules import one another without a cycle: lib (the engine) imports only helpers that
do not import it, and every other module sits above lib. Read from the source with ast, so an import
inside a function body (a lazy import) counts as much as one at the top of a file."""
import ast
from pathlib import Path

import pytest

from conftest import ROOT


def project_modules(root: Path) -> dict[str, str]:
    """Module name -> source, for the repository's own modules (its top-level .py files and bench/)."""
    files = sorted(root.glob("*.py")) + sorted((root / "bench").glob("*.py"))
    return {(f"bench.{f.stem}" if f.parent.name == "bench" else f.stem): f.read_text() for f in files}


def imports(source: str, modules) -> set[str]:
    """The modules of `modules` that a source imports anywhere in it (at the top or inside a function)."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]   # from bench import throughput
        else:
            continue
        found |= {n for n in names if n in modules}
    return found


def cycle_through(module: str, graph: dict[str, set[str]]) -> list[str] | None:
    """A path of imports from `module` back to itself, or None."""
    stack, seen = [(module, [module])], set()
    while stack:
        name, path = stack.pop()
        for dep in sorted(graph.get(name, ())):
            if dep == module:
                return path + [dep]
            if dep not in seen:
                seen.add(dep)
                stack.append((dep, path + [dep]))
    return None


def import_graph(sources: dict[str, str]) -> dict[str, set[str]]:
    return {name: imports(src, sources) - {name} for name, src in sources.items()}


GRAPH = import_graph(project_modules(ROOT))


def test_the_graph_sees_the_project():
    assert {"lib", "levers", "cuda_graphs", "robustness", "experiments", "report", "bench.throughput"} <= set(GRAPH)
    assert "lib" in GRAPH["robustness"] and "lib" in GRAPH["bench.throughput"]


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_no_module_imports_itself_through_others(module):
    cycle = cycle_through(module, GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_nothing_lib_imports_imports_lib():
    for helper in sorted(GRAPH["lib"]):
        assert "lib" not in GRAPH[helper], f"lib imports {helper}, which imports lib"


def test_the_check_finds_a_cycle_even_through_a_lazy_import():
    # The shape this project had: lib imported a helper inside a function, the helper imported lib.
    sources = {"lib": "def train():\n    from cuda_graphs import Step\n",
               "cuda_graphs": "from lib import forward_loss\n",
               "report": "import lib\n"}
    graph = import_graph(sources)
    assert cycle_through("lib", graph) == ["lib", "cuda_graphs", "lib"]
    assert cycle_through("report", graph) is None
