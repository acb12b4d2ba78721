"""`xhyp evaluate`: propensities from the TRAINING labels with each dataset's (A, B), against napkinxc.

The score matrices are random (evaluation does not depend on how they were made), so these
tests train nothing; the real Bibtex and Delicious splits give realistic label frequencies.
"""
import json

import numpy as np
import pytest
import scipy.sparse as sp

from xhyp.cli import main
from xhyp.datasets.formats import read_xc, write_xc
from xhyp.datasets.registry import get_spec

from conftest import require


def random_scores(Y, seed, k=5):
    """``(Q, L)`` CSR with ``k`` positive scores a row, biased towards the true labels."""
    rng = np.random.default_rng(seed)
    Q, L = Y.shape
    S = rng.random((Q, L)) + 0.4 * Y.toarray()
    keep = np.argsort(-S, axis=1)[:, :k]
    rows = np.repeat(np.arange(Q), k)
    return sp.csr_matrix((S[rows, keep.ravel()].astype(np.float32), (rows, keep.ravel())), shape=(Q, L))


def napkin_metrics(Y, S, Y_train, A, B, k=5):
    nm = require("napkinxc.metrics")
    q = nm.Jain_et_al_inverse_propensity(Y_train, A, B)
    Sd = S.toarray()
    ranking = [[int(j) for j in np.argsort(-row, kind="stable")[:k] if row[j] > 0] for row in Sd]
    y = [list(map(int, Y.indices[Y.indptr[i]:Y.indptr[i + 1]])) for i in range(Y.shape[0])]
    out = {}
    for name, f in (("P", nm.precision_at_k), ("nDCG", nm.ndcg_at_k)):
        v = f(y, ranking, k=k)
        out.update({f"{name}@{i}": v[i - 1] for i in (1, 3, 5)})
    for name, f in (("PSP", nm.psprecision_at_k), ("PSnDCG", nm.psndcg_at_k)):
        v = f(y, ranking, q, k=k)
        out.update({f"{name}@{i}": v[i - 1] for i in (1, 3, 5)})
    return out


def ps_gap(a, b):
    """Largest difference between two metric dicts over the propensity-scored metrics."""
    return max(abs(a[k] - b[k]) for k in a if k.startswith("PS"))


@pytest.mark.parametrize("dataset", ["bibtex", "delicious"])
def test_evaluate_dataset_uses_training_propensities(dataset, shared_data_dir, tmp_path):
    _, Ytr = read_xc(shared_data_dir / dataset / "train.txt")
    _, Yte = read_xc(shared_data_dir / dataset / "test.txt")
    S = random_scores(Yte, seed=len(dataset))
    sp.save_npz(tmp_path / "s.npz", S)
    common = ["evaluate", "--pred", str(tmp_path / "s.npz"), "--dataset", dataset, "--data-dir", str(shared_data_dir)]
    assert main([*common, "--out", str(tmp_path / "m.json")]) == 0
    got = json.loads((tmp_path / "m.json").read_text())
    spec = get_spec(dataset)
    want = napkin_metrics(Yte, S, Ytr, spec.propensity_a, spec.propensity_b)
    assert set(got) == set(want)
    for name, v in want.items():
        assert got[name] == pytest.approx(v, rel=1e-6), name
    # the propensities are the training split's, with (A, B) in that order: other choices differ
    for other in (napkin_metrics(Yte, S, Yte, spec.propensity_a, spec.propensity_b),
                  napkin_metrics(Yte, S, Ytr, spec.propensity_b, spec.propensity_a)):
        assert ps_gap(other, got) > 2e-3
    # --A/--B override the registry's values
    assert main([*common, "--A", "0.6", "--B", "2.6", "--out", str(tmp_path / "m2.json")]) == 0
    got2 = json.loads((tmp_path / "m2.json").read_text())
    want2 = napkin_metrics(Yte, S, Ytr, 0.6, 2.6)
    for name in ("PSP@1", "PSP@5", "PSnDCG@3"):
        assert got2[name] == pytest.approx(want2[name], rel=1e-6), name
    assert got2["P@1"] == pytest.approx(got["P@1"]) and ps_gap(got2, got) > 2e-3


def test_evaluate_files_with_train_file(tmp_path):
    """`--file TEST --train-file TRAIN`: propensities (default A=0.55, B=1.5) from TRAIN; no
    --train-file: no propensity-scored metrics."""
    rng = np.random.default_rng(0)
    L = 30
    freq = rng.uniform(0.01, 0.4, size=L)
    Ytr = sp.csr_matrix((rng.random((400, L)) < freq).astype(np.float32))
    Yte = sp.csr_matrix((rng.random((100, L)) < freq[::-1]).astype(np.float32))  # other frequencies
    X = lambda n: sp.csr_matrix(rng.random((n, 4)).astype(np.float32))  # noqa: E731
    write_xc(tmp_path / "train.txt", X(400), Ytr)
    write_xc(tmp_path / "test.txt", X(100), Yte)
    S = random_scores(Yte, seed=5)
    sp.save_npz(tmp_path / "s.npz", S)
    common = ["evaluate", "--pred", str(tmp_path / "s.npz"), "--file", str(tmp_path / "test.txt")]
    assert main([*common, "--train-file", str(tmp_path / "train.txt"), "--out", str(tmp_path / "m.json")]) == 0
    got = json.loads((tmp_path / "m.json").read_text())
    want = napkin_metrics(Yte, S, Ytr, 0.55, 1.5)
    for name, v in want.items():
        assert got[name] == pytest.approx(v, rel=1e-6), name
    assert ps_gap(napkin_metrics(Yte, S, Yte, 0.55, 1.5), got) > 2e-3
    assert main([*common, "--out", str(tmp_path / "m0.json")]) == 0
    got0 = json.loads((tmp_path / "m0.json").read_text())
    assert not any(k.startswith("PS") for k in got0) and got0["nDCG@5"] == pytest.approx(want["nDCG@5"])
    # --k picks the cut-offs
    assert main([*common, "--k", "2", "--out", str(tmp_path / "m1.json")]) == 0
    assert set(json.loads((tmp_path / "m1.json").read_text())) == {"P@2", "nDCG@2"}
