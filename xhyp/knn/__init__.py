"""Stage 4 of the data flow: a query's nearest training examples in the ball, and their votes.

* :mod:`~xhyp.knn.extension`: loading of the compiled operators (``xhyp._C``) and the fallback
  warning;
* :mod:`~xhyp.knn.kernels`: the operator wrappers (exact, clustered and inverted-file kNN,
  pairwise distances, label voting) with their pure-torch fallbacks;
* :mod:`~xhyp.knn.reference`: float64 references of those operators, for tests;
* :mod:`~xhyp.knn.index`: the faiss-style ``add`` / ``search -> (D, I)`` indexes;
* :mod:`~xhyp.knn.vote`: neighbours' labels -> top-K label scores (Gerald & Baskiotis, CAp
  2019, section 2.5); the voting weights and the scipy reference of the vote;
* :mod:`~xhyp.knn.rerank`: the neighbours' labels as a shortlist, re-scored by per-label linear
  scorers fused with the vote.
"""
