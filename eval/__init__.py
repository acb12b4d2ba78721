"""xhyp.eval: the drivers of the paper's experiments (the metrics themselves are :mod:`xhyp.metrics`).

* ``table2``, ``table4``, ``table5``, ``table6``, ``fig2``, ``vote_sweep``: Tables 2, 4, 5, 6,
  Figure 2 of Gerald & Baskiotis (CAp 2019) and the vote-setting sweep (``python -m
  xhyp.eval.table4 --help``); ``hmc_table``: the HMC results;
* :mod:`~xhyp.eval.common`: the one module they share (command line, learner cache, outputs);
  no script imports another, and nothing in the ``xhyp`` core imports this package.
"""
