"""Build script for xhyp.

The library lives in four folders that map onto one installed package so that the data flow is
visible from the checkout:

    datasets/  -> xhyp.datasets   (file formats, registry, download, synthetic data)
    xhyp/      -> xhyp            (one subpackage per stage: embedding, training, knn, prediction,
                                   hmc; configuration, metrics, model directory, CLI on top)
    eval/      -> xhyp.eval       (the paper's experiment drivers)
    cpp_ext/   -> xhyp._C         (C++/CUDA kernels, optional at import time)

Install with ``pip install --no-build-isolation -e .`` after ``pip install torch==2.13.0``: the
extension is compiled against the torch that is already installed (build isolation would fetch
an unpinned, multi-GB torch).

The extension (``xhyp._C``, operators ``torch.ops.xhyp_ext.*``, see ``cpp_ext/xhyp_ext.cpp``):

* CPU-only torch: a ``CppExtension`` of three C++ files (``-O3 -fopenmp``, no ``-march``: the
  binary must run on any x86-64/aarch64 machine; the GEMMs go through torch's own BLAS, which
  dispatches on the CPU at run time). About a minute on 2 cores with ``ninja`` installed
  (``pip install ninja``; without it the files are compiled one after another).
* CUDA torch and ``nvcc`` found (``CUDA_HOME``/``PATH``), or ``XHYP_FORCE_CUDA=1``: a
  ``CUDAExtension`` that adds ``cpp_ext/cuda/kernels.cu`` and its torch glue
  ``cpp_ext/cuda/ops_cuda.cpp``; ``XHYP_NO_CUDA=1`` forces the CPU-only build.
* ``XHYP_NO_EXT=1``: no extension at all; xhyp then runs on its pure-torch code paths (with a
  one-time warning, see ``xhyp/knn/extension.py``).
"""
import glob
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))

# xhyp/ holds one subpackage per stage of the data flow (docs/api/conf.py reads this list)
packages = ["xhyp", "xhyp.embedding", "xhyp.training", "xhyp.knn", "xhyp.prediction", "xhyp.hmc", "xhyp.datasets",
            "xhyp.eval"]
package_dir = {"xhyp": "xhyp", "xhyp.datasets": "datasets", "xhyp.eval": "eval"}  # (xhyp.<stage>: xhyp/<stage>)


def _rel(paths):
    return sorted(os.path.relpath(p, HERE) for p in paths)


def get_extensions():
    """The ``xhyp._C`` extension and the ``build_ext`` command (torch's BuildExtension)."""
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    ext_dir = os.path.join(HERE, "cpp_ext")
    sources = _rel([os.path.join(ext_dir, "xhyp_ext.cpp")] + glob.glob(os.path.join(ext_dir, "cpu", "*.cpp")))
    include_dirs = [os.path.join(ext_dir, "include")]
    openmp = [] if sys.platform in ("darwin", "win32") else ["-fopenmp"]
    cxx_flags = ["-O3", *openmp, "-Wno-unknown-pragmas"]
    with_cuda = os.environ.get("XHYP_NO_CUDA", "0") != "1" and (
        os.environ.get("XHYP_FORCE_CUDA", "0") == "1" or (torch.version.cuda is not None and CUDA_HOME is not None))
    if with_cuda:
        sources += _rel(glob.glob(os.path.join(ext_dir, "cuda", "*.cu")) +
                        glob.glob(os.path.join(ext_dir, "cuda", "*.cpp")))
        ext = CUDAExtension("xhyp._C", sources, include_dirs=include_dirs, define_macros=[("WITH_CUDA", None)],
                            extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3"]}, extra_link_args=openmp)
    else:
        ext = CppExtension("xhyp._C", sources, include_dirs=include_dirs,
                           extra_compile_args={"cxx": cxx_flags}, extra_link_args=openmp)
    return [ext], {"build_ext": BuildExtension}


ext_modules = []
cmdclass = {}
if os.environ.get("XHYP_NO_EXT", "0") != "1":
    ext_modules, cmdclass = get_extensions()

setup(
    packages=packages,
    package_dir=package_dir,
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
