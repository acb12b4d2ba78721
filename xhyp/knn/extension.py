"""Loading of the compiled operators (``xhyp._C``) and the one-time warning of their fallbacks.

The compiled extension ``xhyp._C`` (sources in ``cpp_ext/``, built by ``pip install
--no-build-isolation -e .``) registers the operators ``torch.ops.xhyp_ext.*`` with a CPU
implementation (C++/OpenMP) and, when built by a CUDA torch, a CUDA one; an operator dispatches
on the device of its inputs (schemas in ``cpp_ext/xhyp_ext.cpp``). The wrappers of
:mod:`xhyp.knn.kernels` ask :func:`use_ext` whether to call an operator; when the extension is
missing (or was built without CUDA for a CUDA input) they run their pure-torch fallbacks after
one :class:`RuntimeWarning` (:func:`warn_fallback`). ``XHYP_NO_EXT=1`` at install time builds
no extension at all.
"""
from __future__ import annotations

import warnings

import torch

_ext_state = {"loaded": None, "error": None, "warned": False}


def load() -> bool:
    """Import ``xhyp._C`` once (registering ``torch.ops.xhyp_ext``); whether it worked.

    Never raises: the reason of a failure (ImportError, an ABI mismatch...) is kept for
    :func:`ext_error`.
    """
    if _ext_state["loaded"] is None:
        try:
            from .. import _C  # noqa: F401  (registers torch.ops.xhyp_ext)

            torch.ops.xhyp_ext.knn  # noqa: B018  (raises if the registration is missing)
            _ext_state["loaded"] = True
        except Exception as e:  # ImportError, OSError (ABI mismatch), AttributeError/RuntimeError
            _ext_state["loaded"] = False
            _ext_state["error"] = f"{type(e).__name__}: {e}"
    return _ext_state["loaded"]


def ext_available(device: str | torch.device = "cpu") -> bool:
    """Whether the compiled operators can run on ``device`` (``"cpu"`` or a CUDA device)."""
    if not load():
        return False
    dev = torch.device(device)
    if dev.type == "cpu":
        return True
    if dev.type == "cuda":
        return torch._C._dispatch_has_kernel_for_dispatch_key("xhyp_ext::knn", "CUDA")
    return False


def ext_error() -> str | None:
    """Why the extension could not be loaded (``None`` if it loaded or was not tried)."""
    load()
    return _ext_state["error"]


def warn_fallback(what: str, device) -> None:
    """Warn once per process (:class:`RuntimeWarning`) that ``what`` and the other kernels run
    their pure-torch fallbacks on ``device``, and why."""
    if _ext_state["warned"]:
        return
    _ext_state["warned"] = True
    why = ext_error() or f"it was built without {torch.device(device).type.upper()} kernels"
    warnings.warn(f"xhyp: the compiled kernels (xhyp._C) are not available ({why}); {what} and the other "
                  "kernels use their pure-torch fallbacks, which are slower. Build them with "
                  "`pip install --no-build-isolation -e .` (needs a C++ compiler).",
                  RuntimeWarning, stacklevel=3)


def use_ext(what: str, *tensors: torch.Tensor) -> bool:
    """Whether the operator ``what`` runs compiled on these inputs: all float32 and the extension
    available on their device. float32 inputs without it warn once (:func:`warn_fallback`);
    other dtypes (float64) take the fallback silently (it keeps their precision)."""
    dev = tensors[0].device
    if all(t.dtype == torch.float32 for t in tensors) and ext_available(dev):
        return True
    if all(t.dtype == torch.float32 for t in tensors):
        warn_fallback(what, dev)
    return False
