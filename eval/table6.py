"""Table 6 (analysis of the learned space): label-embedding distance to the origin vs label frequency.

Gerald & Baskiotis (CAp 2019) observe that frequent labels sit near the centre of the Poincaré
ball and rare ones near its boundary. For a trained model this script measures, for every label
``l`` with training frequency ``N_l`` (number of training examples carrying it), the Euclidean
norm ``|w_l|`` and the distance to the origin ``d(0, w_l)`` (``2 artanh |w_l|`` in the ball,
``|w_l|`` in Euclidean space), reports Spearman's rank correlation between ``N_l`` and
``d(0, w_l)`` (``scipy.stats.spearmanr``; negative = frequent labels nearer the centre) and a
table binned by frequency (bins ``[1], [2, 3], [4, 7], ...``, i.e. by ``floor(log2 N_l)``).

The model is ``--model DIR``, or learner 0 of the Table-4 cache cell (data set, geometry,
``--dim``), trained there if missing (so after a Table-4 sweep nothing is trained).

Example::

    python -m xhyp.eval.table6 --datasets bibtex delicious --data-dir ../shared/data \\
        --cache runs/table4/cache --out runs/table6

Writes ``OUT/table6.md`` and ``OUT/table6.json``.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from xhyp.config import GEOMETRIES
from xhyp.eval.common import GEOMETRY_NAMES, log, md_table, model_for, run_script, script_parser
from xhyp.plot import distance_to_origin, load_label_space, spearman_frequency_distance


def frequency_bins(freq: np.ndarray) -> np.ndarray:
    """Bin id of each label: ``-1`` for never-seen labels, else ``floor(log2 N_l)``."""
    freq = np.asarray(freq)
    out = np.full(freq.shape, -1, dtype=np.int64)
    pos = freq > 0
    out[pos] = np.floor(np.log2(freq[pos])).astype(np.int64)
    return out


def norm_vs_frequency(W: np.ndarray, freq: np.ndarray, geometry: str = "poincare") -> dict:
    """Spearman correlation and binned statistics of distance to the origin against frequency.

    Args:
        W: ``(L, n)`` label embeddings. freq: ``(L,)`` training frequencies. geometry: of ``W``.

    Returns:
        ``{"spearman_rho", "spearman_p", "spearman_rho_norm", "n_labels", "bins": [{"bin", "freq_min",
        "freq_max", "labels", "mean_freq", "mean_norm", "mean_dist0", "median_dist0"}, ...]}``.
    """
    W = np.asarray(W, dtype=np.float64)
    freq = np.asarray(freq)
    norm = np.linalg.norm(W, axis=1)
    d0 = distance_to_origin(W, geometry)
    rho, p = spearman_frequency_distance(freq, d0)
    rho_n, _ = spearman_frequency_distance(freq, norm)
    bins = []
    b = frequency_bins(freq)
    for bid in np.unique(b):
        sel = b == bid
        lo, hi = (0, 0) if bid < 0 else (2 ** bid, 2 ** (bid + 1) - 1)
        bins.append({"bin": int(bid), "freq_min": int(lo), "freq_max": int(hi), "labels": int(sel.sum()),
                     "mean_freq": float(freq[sel].mean()), "mean_norm": float(norm[sel].mean()),
                     "mean_dist0": float(d0[sel].mean()), "median_dist0": float(np.median(d0[sel]))})
    return {"spearman_rho": rho, "spearman_p": p, "spearman_rho_norm": rho_n, "n_labels": int(len(W)),
            "geometry": geometry, "bins": bins}


def markdown(results: dict) -> str:
    """Markdown of the results: Spearman's rho and the frequency-binned norm / distance table of each model."""
    lines = []
    for key, r in results.items():
        rows = [["0 (unseen)" if b["bin"] < 0 else (
                    f"{b['freq_min']}" if b["freq_min"] == b["freq_max"] else f"{b['freq_min']}-{b['freq_max']}"),
                 b["labels"], f"{b['mean_freq']:.1f}", f"{b['mean_norm']:.4f}", f"{b['mean_dist0']:.3f}",
                 f"{b['median_dist0']:.3f}"] for b in r["bins"]]
        lines += md_table(f"**{key}: {r['n_labels']} labels, Spearman's rho(frequency, d(0, w)) = "
                          f"{r['spearman_rho']:.3f} (p = {r['spearman_p']:.1e})**",
                          ["label frequency", "labels", "mean frequency", "mean norm", "mean d(0, w)",
                           "median d(0, w)"], rows)
    return "\n".join(lines)


def build_parser():
    """The script's command-line parser (``--help`` lists its options)."""
    p = script_parser("table6", __doc__, dim=50)
    p.add_argument("--model", help="a model directory to analyse instead of the cache's (one data set)")
    p.add_argument("--geometries", nargs="+", default=list(GEOMETRIES), choices=GEOMETRIES)
    return p


def run(args, overrides: dict, cache: str, seed: int) -> tuple[str, dict]:
    """The analysis of ``--model`` or of the cache's models: ``(markdown, data)``."""
    results, models = {}, {}
    if args.model:
        jobs = [(Path(args.model).name, Path(args.model))]
    else:
        jobs = [(f"{ds} {GEOMETRY_NAMES[g]} n={args.dim}",
                 (ds, g)) for ds in args.datasets for g in args.geometries]
    for key, src in jobs:
        d = src if isinstance(src, Path) else model_for(src[0], args.data_dir, cache, src[1], args.dim,
                                                        overrides, seed)
        space = load_label_space(d)
        results[key] = norm_vs_frequency(space["labels"], space["freq"], space["geometry"])
        models[key] = str(d)
        log(f"[table6] {key}: rho = {results[key]['spearman_rho']:.3f}")
    return markdown(results), {"results": results, "models": models}


def main(argv=None) -> int:
    """Run the script on ``argv`` (default: the command line); writes Markdown and JSON; exit status."""
    return run_script("table6", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
