"""Pictures of the learned space: label embeddings in the Poincaré disk, coloured by frequency.

Gerald & Baskiotis, CAp 2019, Figure 2: a 2-dimensional model's labels in the unit disk; frequent
labels sit near the centre and rare ones near the boundary.

Models of dimension ``n > 2`` are brought to 2-D with a projection that respects the distance
to the origin as far as a linear map can (stated in the figure's title):

1. log map at the origin, ``v = log_0(x) = artanh(|x|) x / |x|``
   (:func:`xhyp.embedding.manifold.logmap0`: a tangent vector whose length is half the
   hyperbolic distance ``d(0, x)``);
2. PCA of the ``v`` (centred for fitting the axes, then applied to the uncentred ``v`` so that the
   origin stays at the centre of the disk) onto 2 components;
3. exp map back, ``x' = exp_0(v') = tanh(|v'|) v' / |v'|`` (:func:`xhyp.embedding.manifold.expmap0`).

A point whose tangent vector lies in the PCA plane keeps its distance to the origin exactly;
other points move towards the centre. Euclidean models are drawn in the plane (PCA for
``n > 2``), without the disk. When every label lies within radius 0.5 of the centre the view
zooms in (said in the title). Matplotlib runs with the non-interactive ``Agg`` backend.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from .embedding import manifold
from .utils import atomic_write


def distance_to_origin(points: np.ndarray, geometry: str = "poincare") -> np.ndarray:
    """``d(0, x)`` (:func:`xhyp.embedding.manifold.dist64`): ``2 artanh(|x|)`` in the Poincaré ball,
    ``|x|`` in Euclidean space. ``(m, n) -> (m,)`` float64.

    Raises:
        ValueError: an unknown geometry.
    """
    x = torch.from_numpy(np.asarray(points, dtype=np.float64))
    return manifold.dist64(torch.zeros_like(x), x, geometry).numpy()


def _pca_axes(v: np.ndarray, n_components: int = 2) -> np.ndarray:
    """Principal axes ``(n, n_components)`` of the rows of ``v`` (centred)."""
    c = v - v.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(c, full_matrices=False)
    return vt[:n_components].T


def project_2d(points: np.ndarray, geometry: str = "poincare", fit_on: np.ndarray | None = None):
    """Bring ``(m, n)`` embeddings to 2-D for drawing (see the module docstring).

    Args:
        points: ``(m, n)`` embeddings.
        geometry: ``"poincare"`` or ``"euclidean"``.
        fit_on: points the PCA axes are fitted on (default ``points``), e.g. the labels, so that
            examples drawn beside them use the same axes.

    Returns:
        ``(xy (m, 2) float64, description str)``.
    """
    P = np.asarray(points, dtype=np.float64)
    n = P.shape[1]
    if n == 2:
        return P, "coordinates as learned (n=2)"
    if n == 1:
        return np.hstack([P, np.zeros_like(P)]), "coordinates as learned (n=1)"
    F = P if fit_on is None else np.asarray(fit_on, dtype=np.float64)
    if geometry == "poincare":
        v = manifold.logmap0(torch.from_numpy(P)).numpy()
        axes = _pca_axes(manifold.logmap0(torch.from_numpy(F)).numpy())
        return manifold.expmap0(torch.from_numpy(v @ axes)).numpy(), f"n={n}: log map at 0, PCA to 2-D, exp map at 0"
    axes = _pca_axes(F)
    return P @ axes, f"n={n}: PCA to 2-D"


def spearman_frequency_distance(freq: np.ndarray, dist0: np.ndarray):
    """Spearman's rank correlation between label frequency and distance to the origin.

    Returns:
        ``(rho, p_value)`` floats (``nan`` when one side is constant).
    """
    from scipy.stats import spearmanr

    freq = np.asarray(freq, dtype=np.float64)
    dist0 = np.asarray(dist0, dtype=np.float64)
    if freq.size < 2 or np.ptp(freq) == 0 or np.ptp(dist0) == 0:
        return float("nan"), float("nan")
    res = spearmanr(freq, dist0)
    return float(res[0]), float(res[1])


def load_label_space(model_dir: str | Path):
    """A saved model's label embeddings, training label frequencies and geometry.

    Returns:
        dict with ``labels (L, n) float64``, ``freq (L,) int64`` (training examples per label),
        ``geometry``, ``dim``, ``train_emb (N, n) float32`` or ``None``.
    """
    from .embedding.model import HyperbolicXMC

    d = Path(model_dir)
    model = HyperbolicXMC.load(d)
    W = model.labels.detach().double().numpy()
    Y = sp.load_npz(d / "train_labels.npz").tocsc()
    freq = np.diff(Y.indptr).astype(np.int64)
    emb = torch.load(d / "train_emb.pt", weights_only=True).numpy() if (d / "train_emb.pt").is_file() else None
    return {"labels": W, "freq": freq, "geometry": model.config.geometry, "dim": model.config.dim,
            "train_emb": emb}


def plot_labels(W: np.ndarray, freq: np.ndarray, out: str | Path, geometry: str = "poincare",
                title: str | None = None, examples: np.ndarray | None = None, dpi: int = 110) -> dict:
    """Draw label embeddings in 2-D coloured by label frequency (log colour scale) into a PNG.

    Args:
        W: ``(L, n)`` label embeddings.
        freq: ``(L,)`` training frequency of each label (labels never seen are drawn as frequency 1
            and counted in the returned dict).
        out: PNG path (parent folders are created).
        geometry: ``"poincare"`` (unit circle drawn) or ``"euclidean"``.
        title: first title line (the projection and Spearman's rho are added below it).
        examples: optional ``(m, n)`` example embeddings drawn as small grey dots under the labels.
        dpi: resolution (the default 5.6 x 5 inch figure is well under 300 KB).

    Returns:
        dict: ``projection``, ``n_labels``, ``unseen_labels``, ``spearman_rho``, ``spearman_p``, ``out``.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    W = np.asarray(W, dtype=np.float64)
    freq = np.asarray(freq)
    xy, how = project_2d(W, geometry)
    d0 = distance_to_origin(W, geometry)
    rho, p = spearman_frequency_distance(freq, d0)
    fig, ax = plt.subplots(figsize=(5.6, 5.0))
    zoom = ""
    if geometry == "poincare":
        ax.add_patch(plt.Circle((0, 0), 1.0, fill=False, lw=0.8, color="black"))
        r_max = float(np.linalg.norm(xy, axis=1).max(initial=0.0))
        lim = 1.04 if r_max >= 0.5 or r_max == 0.0 else 1.15 * r_max
        if lim < 1.04:  # everything near the centre: zoom in (the unit circle is then off-screen)
            zoom = f" (zoomed: |x| <= {lim:.3g})"
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
    if examples is not None and len(examples):
        exy, _ = project_2d(np.asarray(examples, dtype=np.float64), geometry, fit_on=W)
        ax.scatter(exy[:, 0], exy[:, 1], s=1, c="0.8", lw=0, rasterized=True, label="training examples")
    order = np.argsort(-freq, kind="stable")  # rare labels drawn last (on top)
    f = np.maximum(freq[order], 1)
    sc = ax.scatter(xy[order, 0], xy[order, 1], c=f, s=9, lw=0, cmap="viridis",
                    norm=LogNorm(vmin=max(1, f.min()), vmax=max(f.max(), 2)))
    fig.colorbar(sc, ax=ax, fraction=0.046, pad=0.04, label="label frequency (training examples, log scale)")
    if zoom:  # inset: the whole unit disk, with the zoomed square
        ins = ax.inset_axes([0.70, 0.70, 0.29, 0.29])
        ins.add_patch(plt.Circle((0, 0), 1.0, fill=False, lw=0.6, color="black"))
        ins.scatter(xy[order, 0], xy[order, 1], c=f, s=1, lw=0, cmap="viridis", norm=sc.norm)
        ins.add_patch(plt.Rectangle((-lim, -lim), 2 * lim, 2 * lim, fill=False, lw=0.5, color="red"))
        ins.set_xlim(-1.05, 1.05)
        ins.set_ylim(-1.05, 1.05)
        ins.set_aspect("equal")
        ins.set_xticks([])
        ins.set_yticks([])
        ins.text(0.5, 0.02, "unit disk", transform=ins.transAxes, ha="center", va="bottom", fontsize=6)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    head = title or f"{len(W)} labels, {geometry}"
    ax.set_title(f"{head}{zoom}\n{how}; Spearman(freq, d(0,w)) = {rho:.2f}", fontsize=8)
    if examples is not None and len(examples):
        ax.legend(loc="lower left", fontsize=6, markerscale=5, frameon=False)
    out = Path(out)
    fig.tight_layout()
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=dpi))
    plt.close(fig)
    return {"projection": how + zoom, "n_labels": int(len(W)), "unseen_labels": int((freq == 0).sum()),
            "spearman_rho": rho, "spearman_p": p, "out": str(out), "png_bytes": out.stat().st_size}


def plot_model_labels(model_dir: str | Path, out: str | Path, examples: int = 0, title: str | None = None,
                      seed: int = 0) -> dict:
    """Draw the labels of a saved model directory (see :func:`plot_labels`).

    Args:
        model_dir: a model directory written by :func:`xhyp.training.loop.train`.
        out: PNG path.
        examples: draw up to this many of the model's training examples (random subset), 0 for none.
        title: first title line (default: the directory name, dataset and dimension).
        seed: seeds the example subset.
    """
    import json

    d = Path(model_dir)
    space = load_label_space(d)
    ex = None
    if examples and space["train_emb"] is not None:
        E = space["train_emb"]
        rng = np.random.default_rng(seed)
        ex = E[rng.choice(len(E), size=min(examples, len(E)), replace=False)]
    if title is None:
        cfg = json.loads((d / "config.json").read_text())
        title = f"{cfg.get('dataset', d.name)}: {space['geometry']} n={space['dim']}, {len(space['freq'])} labels"
    res = plot_labels(space["labels"], space["freq"], out, space["geometry"], title=title, examples=ex)
    res.update(model=str(d), geometry=space["geometry"], dim=space["dim"])
    return res
