"""Stage 2 of the data flow: sparse features -> points of the Poincaré ball.

* :mod:`~xhyp.embedding.features`: the feature preprocessing saved with a model (row L2, tf-idf);
* :mod:`~xhyp.embedding.manifold`: the Poincaré ball itself: every distance, map and geometry
  name of the library, with a float64 reference distance;
* :mod:`~xhyp.embedding.model`: the joint example/label embedding model
  (:class:`~xhyp.embedding.model.HyperbolicXMC`, Gerald & Baskiotis, CAp 2019, section 2).
"""
