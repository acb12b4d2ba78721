"""Stage 5 of the data flow: a model directory -> label scores for new examples.

* :mod:`~xhyp.prediction.predictor`: :class:`~xhyp.prediction.predictor.Predictor`, one learner:
  features -> embedding -> kNN -> votes (Gerald & Baskiotis, CAp 2019, section 2.5);
* :mod:`~xhyp.prediction.ensemble`: M learners trained with consecutive seeds, their votes
  summed (section 2.6).

The entry points are re-exported here: ``from xhyp.prediction import Predictor, Ensemble``.
"""
from .ensemble import Ensemble, train_ensemble
from .predictor import Predictor

__all__ = ["Predictor", "Ensemble", "train_ensemble"]
