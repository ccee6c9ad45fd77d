"""The package layout's rules, read from the source: imports run one way between the stages, and no
module imports itself back through others (no import circle), lazy imports inside functions included.

    pipeline/ (config, fileio, logs, saved_model_layout, protos)   what every stage shares
    data/  features/  metrics/                                     know only the shared modules
    beam/  training/                                               + data, features, metrics
    serving/                                                       + training
    components/                                                    + beam, serving
    orchestration/                                                 + components
"""
import ast
import os

import pytest

from tests import REPO

# a package may import the shared modules, itself, and the packages of a lower rank only
RANK = {"data": 1, "features": 1, "metrics": 1, "beam": 2, "training": 2, "serving": 3, "components": 4,
        "orchestration": 5}
ROOTS = ("pipeline", "components")


def _modules() -> dict[str, str]:
    """{dotted module name: file path} of every module of the project's packages."""
    out = {}
    for root in ROOTS:
        for folder, _, files in os.walk(os.path.join(REPO, root)):
            if "__pycache__" in folder or os.sep + "protos" in folder:
                continue
            for name in files:
                if name.endswith(".py"):
                    rel = os.path.relpath(os.path.join(folder, name), REPO)[:-3].replace(os.sep, ".")
                    out[rel.removesuffix(".__init__")] = os.path.join(folder, name)
    return out


MODULES = _modules()


def _imports(path: str) -> set[str]:
    """The project modules a file imports, anywhere in it (a function's lazy import counts)."""
    found = set()
    for node in ast.walk(ast.parse(open(path, encoding="utf-8").read(), path)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import mod` imports the module; `from mod import name` the module itself
            subs = [f"{node.module}.{a.name}" for a in node.names]
            names = [s for s in subs if s in MODULES] or [node.module]
        else:
            continue
        for name in names:
            while name and name not in MODULES:       # `from pipeline.data import x` -> pipeline.data.x
                name = name.rpartition(".")[0]
            if name and name not in ROOTS:
                found.add(name)
    return found


GRAPH = {m: _imports(p) - {m} for m, p in MODULES.items()}


def stage(module: str) -> str | None:
    """The stage package a module belongs to (None: a shared top-level module of pipeline/)."""
    parts = module.split(".")
    if parts[0] == "components":
        return "components"
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in RANK) else None


def test_the_graph_was_read():
    # the rules below are only as good as the graph: a few edges every version of the layout has
    assert "pipeline.beam.feature_job" in MODULES and "pipeline.training.train" in MODULES
    assert "pipeline.config" in GRAPH["pipeline.beam.feature_job"]
    assert "pipeline.training.export" in GRAPH["pipeline.training.train"]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_run_downhill(module):
    mine = stage(module)
    for target in sorted(GRAPH[module]):
        theirs = stage(target)
        if theirs is None or theirs == mine:
            continue
        assert mine is not None, f"{module} is shared by every stage but imports {target} of stage {theirs}"
        assert RANK[theirs] < RANK[mine], (f"{module} (stage {mine}) imports {target} (stage {theirs}): "
                                           f"imports run from {theirs} to {mine}, never back or sideways")


def test_no_import_circle():
    """Tarjan's strongly connected components: any component of more than one module is a circle."""
    index, low, stack, on_stack, circles, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert circles == [], f"import circles: {circles}"


def test_stage_packages_stay_small():
    """pipeline/ keeps a handful of shared modules; no stage grows past about a dozen modules, and
    components/ past a dozen components (a TFX component is a folder: component, executor, driver)."""
    shared = [m for m in MODULES if m.count(".") == 1 and m.startswith("pipeline.") and stage(m) is None]
    assert len(shared) <= 6, shared
    for name in RANK:
        members = [m for m in MODULES if stage(m) == name and not m.endswith("__init__")]
        if name == "components":
            members = sorted({m.split(".")[1] for m in members if m.count(".") >= 1})
        assert len(members) <= 12, (name, members)


def test_stage_init_files_are_empty():
    """An import of one module never drags in its siblings (the feature job's process must not
    import Keras through a package's __init__)."""
    for name in RANK:
        if name == "components":
            continue
        path = os.path.join(REPO, "pipeline", name, "__init__.py")
        assert open(path, encoding="utf-8").read().strip() == "", path
