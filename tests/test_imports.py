"""The package's import graph (read with ast, every import including those inside functions): no
circle, and no module imports one above it in the flow

    envs → replay → nets, diffusion → algos → storage → loop (multiseed) → cli → sweep → train → the package

with the readers beside the loop: results reads storage (and algos, to rebuild an agent), and
fields, theory, viz, video and widgets use results, algos and below, never the loop or the CLI.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "qsm_tutorial"

# The trunk, bottom up; a layer may import its own layer and those before it. A module belongs to
# the layer of its first name under the package (qsm_tutorial.algos.qsm → algos).
TRUNK = [{"envs"}, {"replay"}, {"nets", "diffusion"}, {"algos"}, {"storage"}, {"loop", "multiseed"}, {"cli"}, {"sweep"}, {"train"},
         {"__init__", "__main__"}]  # fmt: skip
# Readers: the trunk up to storage, and each other; results only the trunk (it is what they read).
READERS = {"results", "fields", "theory", "viz", "video", "widgets"}
READERS_MAY_IMPORT = {"envs", "replay", "nets", "diffusion", "algos", "storage"}
# Edges that cross the layers on purpose, each with its reason.
ALLOWED = {
    ("widgets", "loop"): "widgets.train_bandit_snapshots trains a bandit with the loop's train",
    ("sweep", "results"): "sweep() returns the grid's runs as results.load_runs reads them",
}


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports_of(tree: ast.AST):
    """Every Import/ImportFrom node, at any depth, except under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and is_type_checking(node):
            yield from (n for child in node.orelse for n in imports_of(ast.Module(body=[child], type_ignores=[])))
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        yield from imports_of(node)


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: {package modules it imports}}`` for every .py file under ``root``."""
    files = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    packages = {module_name(p, root) for p in root.rglob("__init__.py")}
    graph: dict[str, set[str]] = {m: set() for m in files}
    for module, path in files.items():
        here = module if module in packages else module.rpartition(".")[0]
        for node in imports_of(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = here.split(".")[: len(here.split(".")) - node.level + 1] if node.level else []
                source = ".".join([*base, *([node.module] if node.module else [])])
                # `from pkg import name`: the submodule pkg.name if there is one, else pkg itself
                targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in files else source for a in node.names]
            graph[module] |= {t for t in targets if t in files and t != module}
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import circles ``[a, b, ..., a]``: the shortest through each module that is on one and
    not yet on a circle found."""
    cycles, on_cycle = [], set()
    for start in sorted(graph):
        if start in on_cycle:
            continue
        parent, queue = {start: None}, deque([start])
        while queue:
            node = queue.popleft()
            if start in graph[node]:
                chain = [node]
                while chain[-1] != start:
                    chain.append(parent[chain[-1]])
                cycles.append([*reversed(chain), start])
                on_cycle |= set(chain)
                break
            for nxt in sorted(graph[node] - parent.keys()):
                parent[nxt] = node
                queue.append(nxt)
    return cycles


def layer_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def may_import(importer: str, imported: str) -> bool:
    if importer == imported or (importer, imported) in ALLOWED:
        return True
    if importer in READERS:
        return imported in READERS_MAY_IMPORT or (importer != "results" and imported in READERS)
    if importer in ("__init__", "__main__"):  # the package's front doors: anything
        return True
    rank = {name: i for i, layer in enumerate(TRUNK) for name in layer}
    if importer not in rank:
        raise AssertionError(f"module group {importer!r} has no place in TRUNK or READERS: add it to this test")
    return imported in rank and rank[imported] <= rank[importer]


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    return [f"{m} imports {t}" for m, targets in sorted(graph.items()) for t in sorted(targets)
            if not may_import(layer_of(m), layer_of(t))]  # fmt: skip


def test_the_package_has_no_import_circle():
    graph = import_graph()
    assert {"qsm_tutorial.storage", "qsm_tutorial.loop", "qsm_tutorial.cli"} <= graph.keys()
    cycles = find_cycles(graph)
    assert cycles == [], "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_no_module_imports_one_above_it():
    assert layer_violations(import_graph()) == []


def test_the_allowed_crossings_are_still_used():
    graph = import_graph()
    edges = {(layer_of(m), layer_of(t)) for m, targets in graph.items() for t in targets}
    assert ("widgets", "loop") in edges, "drop the widgets -> loop allowance if widgets no longer trains"


def write_package(root: Path, files: dict[str, str]) -> Path:
    pkg = root / "qsm_tutorial"
    for name, text in {"__init__.py": "", **files}.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    return pkg


@pytest.mark.parametrize("lazy", [False, True])
def test_the_checks_catch_a_circle_and_an_upward_import(tmp_path, lazy):
    """Guards this file: a circle (also one through an import inside a function, as results'
    load_agent once closed one with train) and a storage module that imports the loop are found."""
    upward = "def f():\n    from .loop import train\n" if lazy else "from .loop import train\n"
    pkg = write_package(tmp_path, {"storage.py": upward, "loop.py": "from . import storage\n",
                                   "algos/__init__.py": "from .qsm import A\n", "algos/qsm.py": "from . import common\n",
                                   "algos/common.py": "import math\n"})  # fmt: skip
    graph = import_graph(pkg)
    assert graph["qsm_tutorial.algos.qsm"] == {"qsm_tutorial.algos.common"}  # `from . import submodule`
    assert find_cycles(graph) == [["qsm_tutorial.loop", "qsm_tutorial.storage", "qsm_tutorial.loop"]]
    assert layer_violations(graph) == ["qsm_tutorial.storage imports qsm_tutorial.loop"]
    (pkg / "storage.py").write_text("if TYPE_CHECKING:\n    from .loop import Run\n")
    assert find_cycles(import_graph(pkg)) == [] and layer_violations(import_graph(pkg)) == []
