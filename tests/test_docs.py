"""Every public name has a documented signature; the API docs have a page per data-flow stage.

The modules are found with :mod:`pkgutil`, so modules added later are checked too. The Sphinx
build itself (warnings are errors) runs in CI after the tests: ``bash scripts/docs.sh``.
"""
import importlib
import importlib.util
import inspect
import re
from pathlib import Path

import pytest

import xhyp

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "api"


def _docs_conf():
    spec = importlib.util.spec_from_file_location("xhyp_docs_conf", DOCS / "conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    return conf


def public_modules() -> list[str]:
    """``xhyp`` and every module below it (the docs' own walk), private ones (``_C``, ``_x``) aside."""
    return _docs_conf().public_modules()


def _public_names(mod):
    """Functions and classes a module defines (or lists in ``__all__``) under public names."""
    names = getattr(mod, "__all__", None)
    for name in names if names is not None else vars(mod):
        if name.startswith("_"):
            continue
        obj = getattr(mod, name, None)
        if not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if names is None and getattr(obj, "__module__", None) != mod.__name__:
            continue  # imported from elsewhere: checked in its own module
        yield name, obj


def _own_methods(cls):
    """Public methods, class/static methods and properties defined in the class body itself."""
    for name, raw in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(raw, (staticmethod, classmethod)):
            yield name, raw.__func__
        elif isinstance(raw, property):
            yield name, raw.fget
        elif inspect.isfunction(raw):
            yield name, raw


def _undocumented() -> list[str]:
    missing = []
    for modname in public_modules():
        mod = importlib.import_module(modname)
        if not (mod.__doc__ or "").strip():
            missing.append(f"{modname} (module)")
        for name, obj in _public_names(mod):
            if not (obj.__doc__ or "").strip():
                missing.append(f"{modname}.{name}")
            if inspect.isclass(obj) and obj.__module__.startswith("xhyp"):
                for mname, fn in _own_methods(obj):
                    if not (inspect.getdoc(fn) or "").strip() and not _documented_in_base(obj, mname):
                        missing.append(f"{modname}.{name}.{mname}")
    return missing


def _documented_in_base(cls, name: str) -> bool:
    """An override of a documented method of a base class (``forward``, ``__call__``...) inherits its docs."""
    for base in cls.__mro__[1:]:
        fn = base.__dict__.get(name)
        if fn is not None and (getattr(fn, "__doc__", None) or "").strip():
            return True
    return False


def test_module_walk_finds_the_package():
    mods = public_modules()
    for m in ("xhyp", "xhyp.estimator", "xhyp.training.loop", "xhyp.datasets.formats", "xhyp.metrics", "xhyp.knn.vote",
              "xhyp.prediction.ensemble", "xhyp.embedding.manifold", "xhyp.eval.common"):
        assert m in mods
    assert not any(m.split(".")[-1].startswith("_") for m in mods)


def test_every_public_function_and_class_has_a_docstring():
    missing = _undocumented()
    assert not missing, "public names without a docstring:\n  " + "\n  ".join(missing)


def test_documented_arguments_exist():
    """A docstring's ``Args:`` section names only real parameters (stale docs are caught)."""
    stale = []
    for modname in public_modules():
        mod = importlib.import_module(modname)
        for name, obj in _public_names(mod):
            targets = [(name, obj)]
            if inspect.isclass(obj):
                targets = [(name, obj.__init__)] + [(f"{name}.{m}", f) for m, f in _own_methods(obj)]
            for label, fn in targets:
                doc = inspect.getdoc(fn) or (inspect.getdoc(obj) if fn is getattr(obj, "__init__", None) else "")
                try:
                    params = set(inspect.signature(fn).parameters)
                except (TypeError, ValueError):
                    continue
                for arg in _args_section(doc or ""):
                    if arg not in params and not any(p.kind == p.VAR_KEYWORD for p in
                                                      inspect.signature(fn).parameters.values()):
                        stale.append(f"{modname}.{label}: documents {arg!r}, not a parameter")
    assert not stale, "\n".join(stale)


def _args_section(doc: str) -> list[str]:
    """Parameter names listed at the start of the ``Args:`` entries of a Google-style docstring."""
    lines = doc.splitlines()
    try:
        start = next(i for i, ln in enumerate(lines) if ln.strip() in ("Args:", "Arguments:"))
    except StopIteration:
        return []
    names, indent = [], None
    for ln in lines[start + 1:]:
        if not ln.strip():
            continue
        cur = len(ln) - len(ln.lstrip())
        if indent is None:
            indent = cur
        if cur < indent:
            break
        if cur == indent:
            m = re.match(r"\s*([\w*, ]+?)\s*(\([^)]*\))?:\s", ln + " ")
            if m:
                names += [n.strip().lstrip("*") for n in m.group(1).split(",") if n.strip()]
    return names


STAGES = {  # page -> modules it must document
    "data.rst": ["xhyp.datasets.formats", "xhyp.datasets.registry"],
    "features.rst": ["xhyp.embedding.features"],
    "model.rst": ["xhyp.embedding", "xhyp.embedding.model", "xhyp.embedding.manifold", "xhyp.config"],
    "training.rst": ["xhyp.training", "xhyp.training.loop", "xhyp.training.batches", "xhyp.training.loss",
                     "xhyp.training.optim", "xhyp.training.distributed"],
    "knn.rst": ["xhyp.knn", "xhyp.knn.index", "xhyp.knn.kernels", "xhyp.knn.extension", "xhyp.knn.reference"],
    "voting.rst": ["xhyp.knn.vote", "xhyp.prediction", "xhyp.prediction.predictor"],
    "ensemble.rst": ["xhyp.prediction.ensemble"],
    "metrics.rst": ["xhyp.metrics"],
    "cli.rst": ["xhyp.cli", "xhyp.commands"],
    "estimator.rst": ["xhyp.estimator"],
}


@pytest.mark.parametrize("page", sorted(STAGES))
def test_a_docs_page_per_stage(page):
    text = (DOCS / page).read_text()
    for mod in STAGES[page]:
        assert f".. automodule:: {mod}" in text
    assert page[:-4] in (DOCS / "index.rst").read_text()  # in the table of contents


def test_references_and_readme_link():
    refs = (DOCS / "references.rst").read_text()
    for paper in ("Gerald", "Nickel", "Bécigneul", "Jain"):
        assert paper in refs
    readme = (ROOT / "README.md").read_text()
    assert "## Python API" in readme and "scripts/docs.sh" in readme and "XHypClassifier" in readme
