"""xhyp: extreme multi-label classification with a joint hyperbolic embedding of examples and labels.

Data flow (one module per arrow)::

    datasets/ (xhyp.datasets)  files -> X (CSR N x F), Y (CSR N x L)
    xhyp/model.py              X -> r = p(f_theta(x)) in the Poincaré ball; labels W (L x n)
    xhyp/train.py              sampled softmax over -alpha * d(r, W[l]), Riemannian Adam
    xhyp/index.py              kNN of a query among training embeddings (exact | clustered | faiss)
    xhyp/vote.py               neighbours' labels -> top-K label scores (and across an ensemble)
    eval/ (xhyp.eval)          P@k, nDCG@k, PSP@k, PSnDCG@k
"""
__version__ = "0.1.0"
