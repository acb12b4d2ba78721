"""The package's layering: no import cycle, and the core never imports the experiment drivers.

The graph is built from the source with :mod:`ast` (every ``import`` statement, at module level
or inside a function), over the three folders installed as ``xhyp`` (``xhyp/``, ``datasets/`` as
``xhyp.datasets`` and ``eval/`` as ``xhyp.eval``). Importing ``a.b.c`` also imports the packages
``a.b`` and ``a`` (their ``__init__``), so those count as edges too.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"xhyp": ROOT / "xhyp", "xhyp.datasets": ROOT / "datasets", "xhyp.eval": ROOT / "eval"}


def modules() -> dict:
    """``{module name: source path}`` of every module of the three folders."""
    out = {}
    for pkg, folder in FOLDERS.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([pkg, *parts])] = path
    return out


def _absolute(module: str, is_package: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[:len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def import_graph() -> dict:
    """``{module: set of the modules of the package it imports}`` (function-level imports included)."""
    mods = modules()
    graph = {m: set() for m in mods}
    for mod, path in mods.items():
        targets = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _absolute(mod, path.name == "__init__.py", node.level, node.module)
                targets += [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
        for target in targets:
            parts = target.split(".")
            for i in range(1, len(parts) + 1):  # the module and the packages above it
                dep = ".".join(parts[:i])
                if dep in mods and dep != mod and not mod.startswith(dep + "."):
                    graph[mod].add(dep)
    return graph


def cycles(graph: dict) -> list:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_graph_sees_function_level_imports():
    g = import_graph()
    # xhyp.training.loop imports the kNN index inside a function only
    assert "xhyp.knn.index" in g["xhyp.training.loop"]
    assert "xhyp.knn" in g["xhyp.training.loop"]  # the package above it
    # a planted cycle is found
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_in_the_core():
    core = {m: {d for d in deps if not d.startswith(("xhyp.datasets", "xhyp.eval"))}
            for m, deps in import_graph().items() if not m.startswith(("xhyp.datasets", "xhyp.eval"))}
    assert cycles(core) == []


def test_no_import_cycle_between_the_core_and_the_experiment_drivers():
    g = {m: deps for m, deps in import_graph().items() if not m.startswith("xhyp.datasets")}
    g = {m: {d for d in deps if not d.startswith("xhyp.datasets")} for m, deps in g.items()}
    assert cycles(g) == []


def test_the_core_never_imports_the_experiment_drivers():
    bad = {m: sorted(d for d in deps if d.startswith("xhyp.eval"))
           for m, deps in import_graph().items() if not m.startswith("xhyp.eval")}
    assert {m: d for m, d in bad.items() if d} == {}


def test_every_stage_is_a_package():
    """xhyp/ keeps its modules in stage packages; at the top only cross-cutting ones."""
    top = sorted(p.stem for p in (ROOT / "xhyp").glob("*.py") if p.stem != "__init__")
    assert top == ["cli", "commands", "config", "estimator", "metrics", "modeldir", "plot", "utils"]
    for stage in ("embedding", "training", "knn", "prediction", "hmc"):
        assert (ROOT / "xhyp" / stage / "__init__.py").is_file()


def test_no_import_cycle_anywhere():
    """No cycle in the whole graph either: the data loaders, the HMC data and the generators
    (``xhyp.datasets``) included."""
    assert cycles(import_graph()) == []
