"""Stage 3 of the data flow: fitting the embedding (Gerald & Baskiotis, CAp 2019, sections 2.3-2.4).

* :mod:`~xhyp.training.batches`: batches of (example, positive label) pairs and sampled negatives,
  prepared ahead by a background thread;
* :mod:`~xhyp.training.loss`: the sampled-softmax loss over hyperbolic distances and one
  optimiser step;
* :mod:`~xhyp.training.optim`: Riemannian Adam, the paper's rule and their row-sparse variants;
* :mod:`~xhyp.training.distributed`: data-parallel training with torch.distributed;
* :mod:`~xhyp.training.loop`: :func:`~xhyp.training.loop.train`, the epoch loop with early
  stopping, resume and the model directory it writes;
* :mod:`~xhyp.training.prediction_fit`: after the epochs, the shortlist scorers of
  :mod:`xhyp.knn.rerank` and the prediction settings chosen on the validation split.

The entry point is re-exported here: ``from xhyp.training import train`` (its configuration is
:class:`xhyp.config.TrainConfig`).
"""
from .loop import TrainResult, train

__all__ = ["train", "TrainResult"]
