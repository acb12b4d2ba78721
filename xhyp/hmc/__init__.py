"""Hierarchical multi-label classification (HMC): HiddeN's flat, cascaded and joint hyperbolic
label embeddings (Chatterjee et al., EACL 2021) and HiMulCon's hierarchy-preserving contrastive
losses (Zhang et al., CVPR 2022) on the Clus-HMC benchmarks.

* :mod:`~xhyp.hmc.models`: :class:`~xhyp.hmc.models.HMCModel` (flat / cascaded / joint);
* :mod:`~xhyp.hmc.losses`: Poincaré label loss, :func:`~xhyp.hmc.losses.himulcon_loss`;
* :mod:`~xhyp.hmc.train`: :func:`~xhyp.hmc.train.train_hmc`, :class:`~xhyp.hmc.train.HMCPredictor`,
  :func:`~xhyp.hmc.train.train_hmc_dataset` (what ``xhyp train --method ...`` runs).

The data (:class:`~xhyp.datasets.hmc.Hierarchy`, :func:`~xhyp.datasets.hmc.load_hmc`) live in
:mod:`xhyp.datasets.hmc`; the metrics in :mod:`xhyp.metrics` (``hmc_evaluate``, ``choose_threshold``,
``hierarchy_reconstruction``, ``norm_depth_spearman``).
"""
