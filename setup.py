"""Build script for xhyp.

The library lives in three folders that map onto one installed package so that the data flow is
visible from the checkout:

    datasets/  -> xhyp.datasets   (file formats, registry, download, synthetic data)
    xhyp/      -> xhyp            (Poincaré ball, model, training, index, voting, CLI)
    eval/      -> xhyp.eval       (metrics and experiment scripts)
    cpp_ext/   -> xhyp._C         (C++/CUDA kernels, optional at import time)

Install with ``pip install --no-build-isolation -e .`` after ``pip install torch==2.13.0``: the
extension is compiled against the torch that is already installed (build isolation would fetch
an unpinned, multi-GB torch).
"""
import os

from setuptools import setup

packages = ["xhyp", "xhyp.datasets", "xhyp.eval"]
package_dir = {"xhyp": "xhyp", "xhyp.datasets": "datasets", "xhyp.eval": "eval"}

ext_modules = []
cmdclass = {}
if os.environ.get("XHYP_NO_EXT", "0") != "1":
    try:
        from cpp_ext_build import get_extensions  # noqa: E402  (local helper, see cpp_ext_build.py)
    except ImportError:  # pragma: no cover - helper not present yet
        get_extensions = None
    if get_extensions is not None:
        ext_modules, cmdclass = get_extensions()

setup(
    packages=packages,
    package_dir=package_dir,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
