"""xhyp: extreme multi-label classification with a joint hyperbolic embedding of examples and labels.

Data flow (one subpackage per stage)::

    datasets/ (xhyp.datasets)  files -> X (CSR N x F), Y (CSR N x L)
    xhyp/embedding/            X -> r = p(f_theta(x)) in the Poincaré ball; labels W (L x n)
    xhyp/training/             sampled softmax over -alpha * d(r, W[l]), Riemannian Adam -> model directory
    xhyp/knn/                  kNN of a query among training embeddings (exact | ann | clustered | faiss),
                               neighbours' labels -> top-K label scores (vote)
    xhyp/prediction/           model directory -> Predictor -> scores; ensembles sum their votes
    xhyp/metrics.py            P@k, nDCG@k, PSP@k, PSnDCG@k

Every stage's options are the dataclasses of :mod:`xhyp.config`; the entry points are
``xhyp.training.train``, ``xhyp.prediction.Predictor`` and ``xhyp.prediction.train_ensemble``.

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
