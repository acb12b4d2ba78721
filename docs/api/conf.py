"""Sphinx configuration of the xhyp API documentation (built by ``scripts/docs.sh``).

Pages are hand-written, one per stage of the data flow, and pull the docstrings in with
``automodule`` (Google-style sections via napoleon). Two pages are generated at build time into
``_generated/`` (git-ignored):

* ``cli_usage.rst``: the ``--help`` text of every ``xhyp`` verb, from :func:`xhyp.cli.build_parser`;
* ``other_modules.rst``: every module of the ``xhyp`` package (found with :mod:`pkgutil`) that no
  hand-written page documents, so a new module is never left out of the reference.
"""
import importlib
import pkgutil
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT))  # the checkout, if xhyp is not installed (it is, in .venv)

import xhyp  # noqa: E402

project = "xhyp"
author = "xhyp developers"
copyright = "2026, xhyp developers"
release = version = xhyp.__version__

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode"]
exclude_patterns = ["_build"]
html_theme = "alabaster"
html_static_path = []
html_theme_options = {"description": "hyperbolic extreme multi-label classification", "fixed_sidebar": True}

autodoc_default_options = {"members": True, "show-inheritance": True, "member-order": "bysource"}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_preserve_defaults = False  # (True breaks on decorated functions such as xhyp.training.train)
autoclass_content = "both"  # class docstring + __init__ docstring
napoleon_google_docstring = True
napoleon_numpy_docstring = True
napoleon_use_ivar = True  # "Attributes:" sections as fields: no duplicate object descriptions
napoleon_use_rtype = False
# the inherited torch.nn.Module / scikit-learn docstrings are not ours: do not render them
autodoc_inherit_docstrings = False
suppress_warnings = []


def _documented_modules() -> set:
    found = set()
    for page in HERE.glob("*.rst"):
        found.update(re.findall(r"^\.\. automodule:: ([\w.]+)", page.read_text(), flags=re.M))
    return found


def _packages() -> list:
    """The packages of the distribution: ``packages = [...]`` of setup.py (``xhyp`` and its
    subpackages mapped from other folders: an editable install's ``xhyp.__path__`` does not
    contain them, so :func:`pkgutil.walk_packages` alone would miss them)."""
    m = re.search(r"^packages\s*=\s*(\[[^\]]*\])", (ROOT / "setup.py").read_text(), flags=re.M)
    import ast

    names = ast.literal_eval(m.group(1)) if m else []
    return sorted({"xhyp", *names})


def public_modules() -> list:
    """Every importable module of the xhyp package (compiled extension and private modules aside).

    Found with :mod:`pkgutil` below each package of :func:`_packages`, so new modules appear
    without being listed anywhere.
    """
    names = set()
    for pkg_name in _packages():
        pkg = importlib.import_module(pkg_name)
        names.add(pkg_name)
        for info in pkgutil.walk_packages(pkg.__path__, pkg_name + "."):
            if not any(part.startswith("_") for part in info.name.split(".")[1:]):
                names.add(info.name)
    return sorted(names)


def _write_generated(app):
    out = HERE / "_generated"
    out.mkdir(exist_ok=True)
    # every module no page documents
    missing = [m for m in public_modules() if m not in _documented_modules()]
    lines = ["Other modules", "=============", ""]
    if missing:
        lines += ["Modules that no stage page documents yet (listed automatically).", ""]
        for m in missing:
            importlib.import_module(m)
            lines += [f"``{m}``", "-" * (len(m) + 4), "", f".. automodule:: {m}", ""]
    else:
        lines += ["Every module of the package is documented on one of the stage pages.", ""]
    _write_if_changed(out / "other_modules.rst", "\n".join(lines))
    # the command line: one literal block per verb
    import os

    os.environ["COLUMNS"] = "100"  # argparse wraps help text to the terminal width: keep it fixed
    from xhyp.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    lines = ["``xhyp`` usage", "-" * 14, "", ".. code-block:: text", ""]
    lines += ["   " + ln for ln in parser.format_help().splitlines()] + [""]
    for name, p in sub.choices.items():
        title = f"``xhyp {name}``"
        lines += [title, "-" * len(title), "", ".. code-block:: text", ""]
        lines += ["   " + ln if ln else "" for ln in p.format_help().splitlines()] + [""]
    _write_if_changed(out / "cli_usage.rst", "\n".join(lines))


def _write_if_changed(path: Path, text: str) -> None:
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def _skip_foreign(app, what, name, obj, skip, options):
    """Leave out members that libraries attach to our classes (scikit-learn's ``set_*_request``)."""
    module = getattr(obj, "__module__", None) or ""
    if module.startswith(("sklearn.", "torch.", "geoopt.")):
        return True
    return None


def setup(app):
    """Generate the usage and other-modules pages before Sphinx reads the sources."""
    app.connect("builder-inited", _write_generated)
    app.connect("autodoc-skip-member", _skip_foreign)
