"""Architecture: the import contracts of pyproject.toml hold, and no package has an import cycle.

``lint-imports`` checks the contracts (the library never imports the tools, layers inside
``llava_wb``, registries below their implementations). The cycle test counts an edge for EVERY
import a module makes, at module level or inside a function (only ``if TYPE_CHECKING:`` imports
are left out, since they never run): a lazy import inside a function still couples two modules,
so hiding a cycle in one does not make it go away. Cycles are looked for between all modules of
each top-level package (strongly connected components of the module graph, by grimp).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parent.parent


def import_graph(package: str) -> dict[str, set[str]]:
    """Module -> the modules of the same top-level package it imports (any import, run or lazy)."""
    graph = grimp.build_graph(
        package, include_external_packages=False, exclude_type_checking_imports=True, cache_dir=None
    )
    return {
        m: {x for x in graph.find_modules_directly_imported_by(m) if x.split(".")[0] == package}
        for m in graph.modules
        if m.split(".")[0] == package
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(edges):
        if root in index:
            continue
        work = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_cycle_and_accepts_a_chain():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


@pytest.mark.parametrize("package", ["llava_wb", "data_tools", "recipes"])
def test_no_import_cycle(package):
    edges = import_graph(package)
    assert len(edges) >= 3  # the graph was really built (recipes is small: 4 edges)
    assert cycles(edges) == []


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " 0 broken" in proc.stdout
