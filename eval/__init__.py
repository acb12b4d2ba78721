"""xhyp.eval: metrics and the scripts that reproduce the paper's experiments.

* :mod:`~xhyp.eval.metrics`: P@k, nDCG@k, PSP@k, PSnDCG@k (pyxclib definitions; Jain, Prabhu &
  Varma, KDD 2016), F1 and AU(PRC);
* ``table2``, ``table4``, ``table5``, ``table6``, ``fig2``, ``vote_sweep``: Tables 2, 4, 5, 6,
  Figure 2 of Gerald & Baskiotis (CAp 2019) and the vote-setting sweep (``python -m
  xhyp.eval.table4 --help``); :mod:`~xhyp.eval.common` holds their shared helpers.
"""
