"""Configuration: every option name and configuration dataclass of xhyp, in one torch-free module.

``xhyp --help`` and ``xhyp data list`` build their parsers from these dataclasses, so this module
imports only the standard library. It holds

* the option names (``GEOMETRIES``, ``WEIGHTINGS``, ``INDEX_KINDS``...), each defined here once and
  re-exported by the module that implements it (:mod:`xhyp.embedding.manifold`,
  :mod:`xhyp.knn.vote`, :mod:`xhyp.knn.index`...), and :func:`check_choice`, the one check of a
  name against them;
* :class:`ConfigBase`, the base of every configuration dataclass (``from_dict`` / ``to_dict``), and
  the dataclasses of the model (:class:`ModelConfig`), of training (:class:`TrainConfig`) and of
  prediction (:class:`PredictConfig`); the HMC ones (:mod:`xhyp.hmc`) derive from the same base;
* :func:`normalise_configs`, the one conversion of user input (dataclasses, dicts, ``None``) into
  the configurations of a run, and :func:`config_changes`, the one comparison of two saved
  configurations (used to resume a run and to complete an ensemble).

The layout follows PECOS (``pecos/xmc/xlinear/model.py``: nested training and prediction
parameter classes with one ``from_dict``/``to_dict`` base).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from .utils import check_finite_fields

MAX_NORM = 1.0 - 1e-5
"""Default max-norm guard: every point the library stores is clipped to ``|x| <= MAX_NORM``
(also :data:`xhyp.embedding.manifold.MAX_NORM`; see :mod:`xhyp.embedding.manifold` for why this
value)."""
GEOMETRIES = ("poincare", "euclidean")  # the spaces of xhyp.embedding.manifold
PROJECTORS = ("linear", "mlp")  # xhyp.embedding.model
FEATURE_KINDS = ("l2", "tfidf", "none")  # xhyp.embedding.features
WEIGHTINGS = ("count", "distance")  # vote weightings (xhyp.knn.vote)
INDEX_KINDS = ("exact", "torch", "clustered", "ann", "faiss-flat", "faiss-ivf", "faiss-hnsw")  # xhyp.knn.index
ANN_CODES = ("int8", "float")  # row codes of the ann index's scan (xhyp.knn.index.AnnIndex)
SAMPLINGS = ("uniform", "frequency")  # negative sampling (xhyp.training.batches)
NEGATIVE_MODES = ("batch", "pair")
NEGATIVE_DRAWS = ("replace", "unique")  # shared negatives with or without replacement (xhyp.training.batches)
LABEL_UPDATES = ("sparse", "dense")
LR_SCALINGS = ("sqrt", "none")  # xhyp.training.optim.scaled_lr
DISTRIBUTED_MODES = ("auto", "on", "off")  # xhyp.training.distributed
OPTIMIZERS = ("radam", "paper")  # xhyp.training.optim
RERANKERS = ("none", "linear")  # shortlist re-rankers (xhyp.knn.rerank)
CONTRASTIVE_KINDS = ("none", "hmc", "hmce")  # HiMulCon terms (xhyp.hmc.losses.himulcon_loss)
RUNTIME_KEYS = ("threads", "device", "prefetch", "distributed")
"""Training options that change how fast a run goes, not what it learns (never compared)."""
RESUMABLE_KEYS = ("epochs", "patience", *RUNTIME_KEYS)
"""Training options a resumed run may change: how long and where it runs, not what it optimises."""
ABSENT_MEANS = {"learn_alpha": False, "lr_alpha": 0.01, "radial_weight": 0.0, "radial_power": 0.0}
"""Training options added after models were saved, each with the value that gives the behaviour from
before it existed: a saved configuration without one of them (an older file) compares as having
that value (:func:`config_changes`), whatever the option's current default (``radial_weight`` and
``radial_power`` became 0.3 and 0.5 later: an older model directory was trained without the term)."""
AFTER_TRAINING_KEYS = ("knn_grid", "rerank", "rerank_knn", "rerank_c", "rerank_weights", "rerank_shortlist",
                       "rerank_negatives", "rerank_prune", "rerank_tol")
"""Training options that act only after the epochs (:mod:`xhyp.training.prediction_fit`: the
shortlist scorers and the choice of ``k`` and ``w``), not on the embedding."""


def parse_grid(text: str, kind=float, name: str = "grid") -> list:
    """``"1,2,4"`` -> ``[1.0, 2.0, 4.0]`` (``kind`` of each item; ``""`` -> ``[]``): the
    comma-separated grids of :class:`TrainConfig` (``knn_grid``, ``rerank_weights``).

    Raises:
        ValueError: an item that is not a number of ``kind``, or a negative one.
    """
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    try:
        vals = [kind(s) for s in items]
    except ValueError:
        raise ValueError(f"{name} must be a comma-separated list of {kind.__name__} values, got {text!r}") from None
    if any(v < 0 for v in vals):
        raise ValueError(f"{name} must hold non-negative values, got {text!r}")
    return vals


def parse_bool(text: str) -> bool:
    """A boolean flag's value: ``true/yes/on/1`` or ``false/no/off/0`` (any case), the type of the
    ``bool`` fields' flags (``--learn-alpha``, the HMC ``--refit`` / ``--coherent``).

    Raises:
        ValueError: any other text.
    """
    t = str(text).strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"expected true or false, got {text!r}")


def check_choice(name: str, value, allowed) -> None:
    """Refuse an option value that is not one of its names.

    Args:
        name: the option (``"geometry"``...), for the message. value: the value given.
        allowed: the valid names (a tuple of this module).

    Raises:
        ValueError: ``value`` is not in ``allowed`` (the message names the option and the choices).
    """
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


class ConfigBase:
    """Base of xhyp's configuration dataclasses (:class:`ModelConfig`, :class:`TrainConfig`,
    :class:`PredictConfig`, the HMC configurations): conversion from and to a saved dict."""

    @classmethod
    def from_dict(cls, d: dict | None):
        """An instance from a dict of its fields (``None``: the defaults), ignoring unknown keys
        (forward compatibility of saved models and configurations).

        Raises:
            ValueError: an invalid field value (see the dataclass's checks).
            TypeError: a required field is missing.
        """
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in (d or {}).items() if k in names})

    def to_dict(self) -> dict:
        """The fields as a plain dict (what ``config.json`` stores)."""
        return asdict(self)


@dataclass
class ModelConfig(ConfigBase):
    """Hyper-parameters that define the model's shape (saved as ``config.json["model"]``).

    Attributes:
        n_features: input dimension ``F``.
        n_labels: number of labels ``L``.
        dim: embedding dimension ``n``.
        projector: ``"linear"`` (one sparse ``F x n`` matrix) or ``"mlp"`` (sparse ``F x hidden``,
            ReLU, dense ``hidden x n``).
        hidden: hidden width of the MLP projector.
        geometry: ``"poincare"`` or ``"euclidean"``.
        max_norm: max-norm guard of the ball (see :mod:`xhyp.embedding.manifold`).
        init_std_projector: std of the normal initialisation of the projector (paper: 1e-3).
        init_std_labels: std of the normal initialisation of the label embeddings (paper: 1e-4).
    """

    n_features: int
    n_labels: int
    dim: int = 50
    projector: str = "linear"
    hidden: int = 256
    geometry: str = "poincare"
    max_norm: float = MAX_NORM
    init_std_projector: float = 1e-3
    init_std_labels: float = 1e-4

    def __post_init__(self):
        check_choice("geometry", self.geometry, GEOMETRIES)
        check_choice("projector", self.projector, PROJECTORS)
        if self.dim < 1 or self.n_features < 1 or self.n_labels < 1:
            raise ValueError(f"dim, n_features and n_labels must be positive: {self}")
        check_finite_fields(self)
        if not 0.0 < self.max_norm < 1.0 or self.init_std_projector < 0 or self.init_std_labels < 0:
            raise ValueError(f"max_norm must be in (0, 1) and the init stds >= 0: {self}")


@dataclass
class TrainConfig(ConfigBase):
    """Training hyper-parameters (saved as ``config.json["train"]``).

    Attributes:
        epochs: maximum number of passes over the training examples.
        batch_size: examples per step (each contributes all its positive labels).
        negatives: sampled negative labels per (example, positive) pair.
        sampling: ``"uniform"`` or ``"frequency"`` (label frequency^0.75, as word2vec).
        alpha: softmax scale on distances.
        learn_alpha: train the softmax scale too, from ``alpha`` (:class:`xhyp.embedding.model.LearnedScale`,
            ``alpha = exp(log_alpha)``, a learned temperature); the value of the best epoch is
            stored as ``config.json["predict"]["alpha"]`` (the ``"distance"`` vote's scale).
        lr_alpha: Adam step size of ``log_alpha`` with ``learn_alpha`` (scaled like ``lr``).
        radial_weight: weight of a radial term added to the sampled-softmax loss: ``radial_weight``
            times the mean over the batch's (example, positive label) pairs of ``d(0, w_pos)``
            (Poincaré: ``2 artanh |w_pos|``; Euclidean: ``|w_pos|``), which pulls every label towards
            the origin once per training pair, i.e. in proportion to its frequency ("frequent labels
            near the centre", Nickel & Kiela 2017, Gerald & Baskiotis 2019;
            :func:`xhyp.training.loss.batch_loss`). Default 0.3 (with ``radial_power`` 0.5: chosen on a
            held-out part of Bibtex and Delicious, docs/accuracy.md); 0: no term is built.
        radial_power: with ``radial_weight``, each pair's share of the radial term is
            ``c_l^radial_power`` (``c_l``: the training count of its label), normalised to a mean of 1
            over the training pairs (:func:`xhyp.training.batches.radial_pair_scale`); a label's pull
            then grows like ``c_l^(1 + radial_power)``. Default 0.5 (a pull ~ ``c_l^1.5``); 0: every
            pair weighs 1.
        lr: Adam step size of the projector.
        lr_labels: step size of the label embeddings (Riemannian Adam or the paper's rule).
        optimizer: ``"radam"`` (geoopt RiemannianAdam) or ``"paper"`` (:class:`xhyp.training.optim.PaperAdam`).
        val_fraction: share of training examples held out for early stopping (0 disables it).
        patience: epochs without a better validation P@1 before stopping.
        knn: neighbours used for validation (and the default for prediction).
        weighting: vote weighting for validation (and the default for prediction).
        features: feature preprocessing, ``"l2"``, ``"tfidf"`` or ``"none"``.
        input_dropout: probability of dropping each non-zero input feature during training
            (inverted dropout: kept values are scaled by ``1 / (1 - p)``); a regulariser.
        seed: seeds the split, initialisation, shuffling and negative sampling.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        threads: torch intra-op threads (0 keeps torch's default).
        negative_mode: ``"batch"`` (one set of ``shared_negatives`` labels per batch, shared by
            its pairs) or ``"pair"`` (the paper's: ``negatives`` labels per pair).
        shared_negatives: negatives drawn per batch with ``negative_mode="batch"``.
        label_update: ``"sparse"`` (row-sparse gradient, only the rows a batch touches are
            stepped: :class:`xhyp.training.optim.SparseRiemannianAdam` / :class:`xhyp.training.optim.SparsePaperAdam`)
            or ``"dense"`` (geoopt's RiemannianAdam / :class:`xhyp.training.optim.PaperAdam` on all rows);
            the projector gets :class:`xhyp.training.optim.LazyAdam` or torch's SparseAdam likewise.
        lr_scaling: ``"sqrt"`` (``lr`` and ``lr_labels`` times ``sqrt(batch_size / 64)``) or ``"none"``.
        prefetch: batches prepared ahead by a background thread (0: prepared inline).
        val_max_queries: validation queries scored per epoch (a fixed random subset when the
            validation split is larger; 0: all).
        val_max_database: training examples in the validation kNN database (a fixed random
            subset when there are more; 0: all).
        max_steps: steps per epoch at most (0: the whole epoch); for benchmarks.
        distributed: ``"auto"`` (data-parallel when launched by torchrun with more than one
            process), ``"on"`` (require a torch.distributed environment) or ``"off"``.
        negative_draw: ``"replace"`` (the ``shared_negatives`` labels of a batch drawn
            independently, with repeats) or ``"unique"`` (drawn without replacement: every label
            at most once, all ``L`` labels, the full softmax, when ``shared_negatives >= L``).
        knn_grid: comma-separated vote neighbour counts; after training the best of them on the
            validation split becomes the model's prediction ``k`` (``config.json["predict"]``,
            :func:`xhyp.training.prediction_fit.fit_prediction`); empty: ``knn``.
        rerank: ``"linear"`` (re-rank the kNN shortlist with per-label linear scorers trained on
            hard negatives mined from the shortlists, :mod:`xhyp.knn.rerank`) or ``"none"`` (the vote).
        rerank_knn: neighbours whose labels form a shortlist (training and prediction).
        rerank_c: inverse regularisation strength of the per-label linear SVMs.
        rerank_weights: comma-separated fusion weights ``w`` of the scorers against the vote; the
            best on the validation split is stored with the model.
        rerank_shortlist: labels of a shortlist at most, those carried by the most neighbours
            (training: the hard negatives mined; prediction: the labels scored); 0: all.
        rerank_negatives: hard negatives a label's scorer trains on at most, the hardest (most
            neighbours carrying the label); 0: all (the default: caps of 100-1000 cost held-out
            accuracy; ``rerank_shortlist`` bounds the negatives of all labels together).
        rerank_prune: scorer weights of smaller magnitude are set to 0 after the fit (Parabel's
            pruning); 0: none.
        rerank_tol: stopping tolerance of each SVM's dual coordinate descent (liblinear's ``eps``;
            scikit-learn's default is 1e-4, liblinear's own 0.1).
        contrastive: ``"none"``, or ``"hmc"``/``"hmce"``: add HiMulCon's contrastive term between the
            examples of a batch (Zhang et al. 2022; without a label hierarchy both are the supervised
            contrastive loss with label-overlap (Jaccard) weighted positives,
            :func:`xhyp.hmc.losses.weighted_supcon_loss`) on the example embeddings. Single process
            only (the term couples all the examples of a batch).
        contrastive_weight: weight of that term (>= 0).
        temperature: its softmax temperature (> 0).
    """

    epochs: int = 30
    batch_size: int = 64
    negatives: int = 50
    sampling: str = "uniform"
    alpha: float = 5.0
    learn_alpha: bool = False
    lr_alpha: float = 0.01
    radial_weight: float = 0.3
    radial_power: float = 0.5
    lr: float = 3e-3
    lr_labels: float = 0.1
    optimizer: str = "radam"
    val_fraction: float = 0.05
    patience: int = 5
    knn: int = 20
    weighting: str = "count"
    features: str = "l2"
    input_dropout: float = 0.5
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    negative_mode: str = "batch"
    shared_negatives: int = 500
    label_update: str = "sparse"
    lr_scaling: str = "sqrt"
    prefetch: int = 2
    val_max_queries: int = 2000
    val_max_database: int = 100_000
    max_steps: int = 0
    distributed: str = "auto"
    negative_draw: str = "replace"
    knn_grid: str = "5,10,20,30,50"
    rerank: str = "linear"
    rerank_knn: int = 50
    rerank_c: float = 1.0
    rerank_weights: str = "0,0.5,1,2,4,8"
    rerank_shortlist: int = 200
    rerank_negatives: int = 0
    rerank_prune: float = 0.1
    rerank_tol: float = 0.01
    contrastive: str = "none"
    contrastive_weight: float = 0.1
    temperature: float = 0.1

    def __post_init__(self):
        for name, allowed in (("sampling", SAMPLINGS), ("optimizer", OPTIMIZERS), ("weighting", WEIGHTINGS),
                              ("features", FEATURE_KINDS), ("negative_mode", NEGATIVE_MODES),
                              ("label_update", LABEL_UPDATES), ("lr_scaling", LR_SCALINGS),
                              ("distributed", DISTRIBUTED_MODES), ("negative_draw", NEGATIVE_DRAWS),
                              ("rerank", RERANKERS), ("contrastive", CONTRASTIVE_KINDS)):
            check_choice(name, getattr(self, name), allowed)
        if self.radial_weight < 0 or not -4.0 <= self.radial_power <= 4.0:
            raise ValueError(f"radial_weight must be >= 0 and radial_power in [-4, 4], got {self.radial_weight}, "
                             f"{self.radial_power}")
        if self.contrastive_weight < 0 or not self.temperature > 0:
            raise ValueError(f"contrastive_weight must be >= 0 and temperature > 0: {self}")
        if not 0.0 <= self.input_dropout < 1.0:
            raise ValueError(f"input_dropout must be in [0, 1), got {self.input_dropout}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.knn < 1:
            raise ValueError(f"knn must be >= 1, got {self.knn}")
        if self.negatives < 1 or self.batch_size < 1 or self.epochs < 0 or self.alpha <= 0:
            raise ValueError(f"negatives, batch_size, alpha must be positive and epochs >= 0: {self}")
        if self.shared_negatives < 1:
            raise ValueError(f"shared_negatives must be >= 1, got {self.shared_negatives}")
        if min(self.prefetch, self.val_max_queries, self.val_max_database, self.max_steps) < 0:
            raise ValueError(f"prefetch, val_max_queries, val_max_database and max_steps must be >= 0: {self}")
        if any(k < 1 for k in parse_grid(self.knn_grid, int, "knn_grid")):
            raise ValueError(f"knn_grid values must be >= 1, got {self.knn_grid!r}")
        parse_grid(self.rerank_weights, float, "rerank_weights")
        if self.rerank_knn < 1 or not self.rerank_c > 0:
            raise ValueError(f"rerank_knn must be >= 1 and rerank_c > 0 (got {self.rerank_knn}, {self.rerank_c})")
        if min(self.rerank_shortlist, self.rerank_negatives, self.rerank_prune) < 0 or not self.rerank_tol > 0:
            raise ValueError(f"rerank_shortlist, rerank_negatives and rerank_prune must be >= 0 and rerank_tol > 0: {self}")
        check_finite_fields(self)
        if self.alpha > 1e6 or not 0 < self.lr <= 1e3 or not 0 < self.lr_labels <= 1e3 or not 0 < self.lr_alpha <= 1e3:
            raise ValueError(f"alpha must be <= 1e6 and lr, lr_labels, lr_alpha in (0, 1e3] (got alpha={self.alpha}, "
                             f"lr={self.lr}, lr_labels={self.lr_labels}, lr_alpha={self.lr_alpha}): larger values "
                             f"overflow float32")
        if not isinstance(self.learn_alpha, bool):
            raise ValueError(f"learn_alpha must be true or false, got {self.learn_alpha!r}")


@dataclass
class PredictConfig(ConfigBase):
    """How a trained learner answers queries (:meth:`xhyp.prediction.predictor.Predictor.predict`,
    ``xhyp predict``).

    ``None`` fields take the settings chosen after training (``config.json["predict"]``, see
    :mod:`xhyp.training.prediction_fit`) and the model's training configuration (:meth:`for_model`):
    the prediction is the one validated while training unless the caller says otherwise.

    Attributes:
        k: neighbours voting for each query (``None``: the ``k`` chosen after training, else the
            model's ``knn``).
        weighting: ``"count"`` or ``"distance"`` (``None``: the model's ``weighting``).
        alpha: softmax scale of the ``"distance"`` weighting (``None``: the learned scale of a model
            trained with ``learn_alpha``, else the model's ``alpha``).
        top_k: labels kept per query.
        index: kNN backend (one of :data:`INDEX_KINDS`, see :func:`xhyp.knn.index.make_index`).
        index_params: extra index constructor arguments (e.g. ``{"nprobe": 8}``).
        batch_size: queries per chunk (bounds memory).
        device: where queries are embedded and searched: ``"auto"`` (a CUDA GPU when there is
            one, else the CPU), ``"cpu"``, ``"cuda"`` or ``"cuda:N"``. On a GPU the ``exact``,
            ``torch`` and ``clustered`` indexes search there (the CUDA kNN kernels); ``ann`` and
            the FAISS indexes search on the CPU (FAISS's own ``gpu`` option aside); the vote is
            computed on the CPU.
        rerank_weight: weight ``w`` of the shortlist scorers in ``vote / k + w * sigmoid(margin)``
            (:func:`xhyp.knn.rerank.fuse`; ``None``: the weight chosen after training, 0 for a
            model without scorers; 0: the plain vote).
        rerank_knn: neighbours whose labels form a query's shortlist (``None``: the model's).
        rerank_shortlist: labels of a shortlist (and of the vote) scored at most, the top ones
            (``None``: the model's; 0: all).
    """

    k: int | None = None
    weighting: str | None = None
    alpha: float | None = None
    top_k: int = 100
    index: str = "exact"
    index_params: dict = field(default_factory=dict)
    batch_size: int = 16384
    device: str = "auto"
    rerank_weight: float | None = None
    rerank_knn: int | None = None
    rerank_shortlist: int | None = None

    def __post_init__(self):
        if self.weighting is not None:
            check_choice("weighting", self.weighting, WEIGHTINGS)
        check_choice("index", self.index, INDEX_KINDS)
        if any(v is not None and v < 1 for v in (self.k, self.rerank_knn)) or self.top_k < 1 or self.batch_size < 1:
            raise ValueError(f"k, rerank_knn, top_k and batch_size must be >= 1: {self}")
        if self.rerank_shortlist is not None and self.rerank_shortlist < 0:
            raise ValueError(f"rerank_shortlist must be >= 0, got {self.rerank_shortlist}")
        if self.rerank_weight is not None and not 0 <= self.rerank_weight < float("inf"):
            raise ValueError(f"rerank_weight must be finite and >= 0, got {self.rerank_weight}")
        self.index_params = dict(self.index_params or {})

    def for_model(self, train_config: dict | None, chosen: dict | None = None) -> "PredictConfig":
        """This configuration with every ``None`` field taken from the settings chosen after
        training (``chosen``: ``config.json["predict"]``) or else from the model's training
        configuration (``config.json["train"]``; a missing key: the :class:`TrainConfig` default).

        Raises:
            ValueError: an invalid value in ``train_config`` or ``chosen``.
        """
        tc = TrainConfig.from_dict(train_config)
        chosen = chosen or {}

        def pick(mine, key, default):  # the caller's value, else the chosen one, else the default
            return mine if mine is not None else default if chosen.get(key) is None else chosen[key]

        return PredictConfig(k=int(pick(self.k, "k", tc.knn)), weighting=self.weighting or tc.weighting,
                             alpha=float(pick(self.alpha, "alpha", tc.alpha)), top_k=self.top_k,
                             index=self.index, index_params=self.index_params, batch_size=self.batch_size,
                             device=self.device, rerank_weight=float(pick(self.rerank_weight, "rerank_weight", 0.0)),
                             rerank_knn=int(pick(self.rerank_knn, "rerank_knn", tc.rerank_knn)),
                             rerank_shortlist=int(pick(self.rerank_shortlist, "rerank_shortlist", tc.rerank_shortlist)))


def normalise_configs(n_features: int, n_labels: int, model_config=None, train_config=None
                      ) -> tuple[ModelConfig, TrainConfig]:
    """``(ModelConfig, TrainConfig)`` of a run from dataclasses, dicts of their fields or ``None``
    (the defaults), with the data's ``n_features`` and ``n_labels`` filled into the model's.

    The one conversion used by :func:`xhyp.training.train`, the ensembles and the model-directory
    checks, so that a setting given as a dict or as a dataclass is the same run.

    Raises:
        ValueError: an invalid field value (see the dataclasses).
    """
    tcfg = train_config if isinstance(train_config, TrainConfig) else TrainConfig.from_dict(train_config)
    mdict = model_config.to_dict() if isinstance(model_config, ModelConfig) else dict(model_config or {})
    mdict.update(n_features=int(n_features), n_labels=int(n_labels))
    return ModelConfig.from_dict(mdict), tcfg


def data_fingerprint(X, Y) -> dict:
    """Shape and non-zero counts of ``(X, Y)`` (scipy sparse ``(N, F)`` and ``(N, L)``):
    ``config.json["data"]``, compared by :func:`config_changes`."""
    return {"n": int(X.shape[0]), "n_features": int(X.shape[1]), "n_labels": int(Y.shape[1]),
            "nnz_x": int(X.nnz), "nnz_y": int(Y.nnz)}


def config_changes(old: dict, new: dict, may_change=RUNTIME_KEYS) -> list[str]:
    """The settings on which two saved configurations of a run differ.

    The one comparison behind ``--resume`` (``may_change``: :data:`RESUMABLE_KEYS`) and behind
    completing an ensemble (:data:`RUNTIME_KEYS`). Both are ``config.json``-style dicts
    ``{"model": {...}, "train": {...}, "data": {...}}``; a section missing from ``old`` (older
    files) is not compared, nor a training key that ``new`` does not have (an option of an older
    version); a key of :data:`ABSENT_MEANS` missing from ``old`` compares as the value it stands
    for there (the behaviour before the option existed).

    Args:
        old: the configuration found on disk. new: the configuration asked for.
        may_change: training keys allowed to differ.

    Returns:
        sorted names: ``"data"`` (other data), ``"model"`` (another model configuration), and
        the training keys that differ (``"alpha"``...); empty when it is the same run.
    """
    out = [s for s in ("data", "model") if old.get(s) is not None and new.get(s) is not None
           and old[s] != new[s]]
    if old.get("train") is not None:
        t_old, t_new = old["train"], new.get("train", {})
        out += sorted(k for k in t_new if k not in may_change and t_old.get(k, ABSENT_MEANS.get(k)) != t_new[k])
    return out
