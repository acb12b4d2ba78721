"""xhyp: extreme multi-label classification with a joint hyperbolic embedding of examples and labels.

Data flow (one module per arrow)::

    datasets/ (xhyp.datasets)  files -> X (CSR N x F), Y (CSR N x L)
    xhyp/model.py              X -> r = p(f_theta(x)) in the Poincaré ball; labels W (L x n)
    xhyp/train.py              sampled softmax over -alpha * d(r, W[l]), Riemannian Adam
    xhyp/index.py              kNN of a query among training embeddings (exact | clustered | faiss)
    xhyp/vote.py               neighbours' labels -> top-K label scores (and across an ensemble)
    eval/ (xhyp.eval)          P@k, nDCG@k, PSP@k, PSnDCG@k

The scikit-learn-style estimator :class:`xhyp.XHypClassifier` (``fit``, ``predict``, ``save``,
``load``; :mod:`xhyp.estimator`) wraps the whole flow. It is imported on first use, so
``import xhyp`` stays light (no torch).
"""
__version__ = "0.1.0"

# public name -> module that defines it, imported on first attribute access (PEP 562)
_LAZY = {"XHypClassifier": "xhyp.estimator"}

__all__ = ["XHypClassifier", "__version__"]


def __getattr__(name):
    """Import the lazily exported names (:class:`XHypClassifier`) on first access."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'xhyp' has no attribute {name!r}")


def __dir__():
    """Module attributes, the lazily exported names included."""
    return sorted(set(globals()) | set(_LAZY))
