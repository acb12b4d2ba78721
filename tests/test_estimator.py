"""xhyp.XHypClassifier: scikit-learn conventions, and the same predictions as the CLI for the same seed."""
import json
import subprocess
import sys
from dataclasses import fields

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from xhyp.cli import main
from xhyp.datasets import read_xc, write_xc
from xhyp.datasets.synthetic import make_hierarchical
from xhyp.estimator import EXTRA_PARAMS, XHypClassifier, param_defaults, topk_arrays
from xhyp.metrics import precision_at_k, topk_from_scores
from xhyp.config import ModelConfig
from xhyp.prediction import Predictor
from xhyp.config import TrainConfig

# training is bit-reproducible on CPU with one thread (several threads sum sparse gradients in
# varying order), so every comparison with the CLI trains with threads=1 on both sides
FAST = {"epochs": 2, "threads": 1}


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _same_csr(A, B):
    A, B = sp.csr_matrix(A), sp.csr_matrix(B)
    A.sort_indices()
    B.sort_indices()
    assert A.shape == B.shape
    np.testing.assert_array_equal(A.indptr, B.indptr)
    np.testing.assert_array_equal(A.indices, B.indices)
    np.testing.assert_array_equal(A.data, B.data)


@pytest.fixture(scope="module")
def synthetic_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("syn")
    data = make_hierarchical(n_train=600, n_test=200, n_features=200, seed=3)
    write_xc(d / "train.txt", data["X_train"], data["Y_train"])
    write_xc(d / "test.txt", data["X_test"], data["Y_test"])
    return d / "train.txt", d / "test.txt"


def test_parameters_are_the_dataclass_fields_with_their_defaults():
    p = XHypClassifier().get_params()
    model = {f.name: f.default for f in fields(ModelConfig) if f.name not in ("n_features", "n_labels")}
    train = {f.name: f.default for f in fields(TrainConfig)}
    assert p == {**model, **train, **EXTRA_PARAMS}
    assert list(param_defaults()) == [*model, *train, *EXTRA_PARAMS]  # constructor order
    # scikit-learn conventions: clone, set_params, repr of changed parameters, keyword-only signature
    from sklearn.base import clone

    est = XHypClassifier(dim=8, alpha=7.0, n_learners=2)
    c = clone(est)
    assert c is not est and c.get_params() == est.get_params()
    assert c.set_params(lr=0.1) is c and c.lr == 0.1 and est.lr == TrainConfig.lr
    assert repr(est) == "XHypClassifier(alpha=7.0, dim=8, n_learners=2)"
    with pytest.raises(ValueError, match="Invalid parameter"):
        est.set_params(no_such=1)
    with pytest.raises(TypeError, match="no_such"):
        XHypClassifier(no_such=1)
    with pytest.raises(TypeError):
        XHypClassifier(8)  # keywords only


def test_topk_arrays_ranks_like_the_metrics_and_pads():
    rng = np.random.default_rng(0)
    S = sp.random(40, 30, density=0.15, random_state=1, format="csr", dtype=np.float32)
    S.data = rng.integers(1, 4, S.nnz).astype(np.float32)  # many ties: broken by lower label id
    S = S.tolil()
    S[3] = 0
    S = S.tocsr()
    S.eliminate_zeros()
    for k in (1, 3, 7):
        ids, scores = topk_arrays(S, k)
        assert ids.shape == scores.shape == (40, k) and ids.dtype == np.int64 and scores.dtype == np.float32
        np.testing.assert_array_equal(ids, topk_from_scores(S, k))
        dense = S.toarray()
        for i in range(40):
            n = min(k, S[i].nnz)
            assert (ids[i, n:] == -1).all() and (scores[i, n:] == 0).all()
            np.testing.assert_array_equal(scores[i, :n], dense[i, ids[i, :n]])
    assert (topk_arrays(S, 2)[0][3] == -1).all()
    with pytest.raises(ValueError):
        topk_arrays(S, 0)


def test_same_predictions_as_the_cli_on_bibtex(tmp_path, shared_data_dir, capsys):
    train_f, test_f = shared_data_dir / "bibtex" / "train.txt", shared_data_dir / "bibtex" / "test.txt"
    cli_dir = tmp_path / "cli"
    assert main(["train", "--file", str(train_f), "--out", str(cli_dir), "--epochs", "2", "--threads", "1",
                 "--no-progress"]) == 0
    assert main(["predict", "--model", str(cli_dir), "--file", str(test_f), "--out", str(tmp_path / "s.npz")]) == 0
    assert main(["evaluate", "--pred", str(tmp_path / "s.npz"), "--file", str(test_f), "--train-file", str(train_f),
                 "--out", str(tmp_path / "m.json")]) == 0
    S_cli = sp.load_npz(tmp_path / "s.npz")
    p1_cli = json.loads((tmp_path / "m.json").read_text())["P@1"]

    X, Y = read_xc(train_f)
    X_test, Y_test = read_xc(test_f)
    clf = XHypClassifier(**FAST).fit(X, Y)
    _same_csr(clf.predict_scores(X_test), S_cli)
    ids, scores = clf.predict(X_test, k=5)
    assert ids.shape == scores.shape == (2515, 5)
    np.testing.assert_array_equal(ids, topk_from_scores(S_cli, 5))
    hits = np.asarray(Y_test[np.arange(2515), ids[:, 0]]).astype(np.int64)  # no query is short of labels here
    p1 = int(hits.sum()) / 2515
    assert p1 == pytest.approx(p1_cli, abs=1e-12) and p1 > 0.3
    assert clf.score(X_test, Y_test) == pytest.approx(p1_cli, abs=1e-12)
    assert clf.n_features_in_ == 1836 and clf.n_labels_ == 159
    assert clf.best_epoch_ == json.loads((cli_dir / "train_summary.json").read_text())["best_epoch"]
    assert [r["loss"] for r in clf.history_] == [r["loss"] for r in json.loads((cli_dir / "history.json").read_text())]

    # save -> the CLI's directory layout and configuration; load (ours and the CLI's) -> same predictions
    saved = clf.save(tmp_path / "saved")
    assert sorted(p.name for p in saved.iterdir()) == sorted(p.name for p in cli_dir.iterdir())
    c1, c2 = (json.loads((d / "config.json").read_text()) for d in (saved, cli_dir))
    assert c1["model"] == c2["model"] and c1["train"] == c2["train"] and c1["data"] == c2["data"]
    for d in (saved, cli_dir):
        back = XHypClassifier.load(d)
        assert back.get_params() == clf.get_params()
        _same_csr(back.predict_scores(X_test), S_cli)
    assert main(["predict", "--model", str(saved), "--file", str(test_f), "--out", str(tmp_path / "s2.npz")]) == 0
    _same_csr(sp.load_npz(tmp_path / "s2.npz"), S_cli)
    with pytest.raises(FileExistsError):
        clf.save(saved)  # not empty
    assert clf.save(saved, overwrite=True) == saved and XHypClassifier.load(saved).get_params() == clf.get_params()
    assert clf.save(clf.model_dir_) == clf.model_dir_  # saving onto itself: nothing to do


def test_ensemble_and_prediction_options_match_the_cli(tmp_path, synthetic_files, capsys):
    train_f, test_f = synthetic_files
    ens = tmp_path / "ens"
    assert main(["ensemble", "--file", str(train_f), "--out", str(ens), "--learners", "2", "--epochs", "2",
                 "--threads", "1", "--dim", "8", "--no-progress"]) == 0
    assert main(["predict", "--ensemble", str(ens), "--file", str(test_f), "--out", str(tmp_path / "e.npz")]) == 0
    X, Y = read_xc(train_f)
    X_test, _ = read_xc(test_f)
    clf = XHypClassifier(n_learners=2, dim=8, **FAST).fit(X, Y, out_dir=tmp_path / "mine")
    assert clf.model_dir_ == tmp_path / "mine" and (tmp_path / "mine" / "ensemble.json").is_file()
    S = sp.load_npz(tmp_path / "e.npz")
    _same_csr(clf.predict_scores(X_test), S)
    assert len(clf.best_epoch_) == len(clf.history_) == 2
    back = XHypClassifier.load(ens)
    assert back.n_learners == 2 and back.dim == 8 and back.seed == 0
    _same_csr(back.predict_scores(X_test), S)

    # prediction options: index/nprobe as `xhyp predict --index clustered --nprobe 2`
    one = tmp_path / "one"
    single = XHypClassifier(dim=8, **FAST).fit(X, Y, out_dir=one)
    assert main(["predict", "--model", str(one), "--file", str(test_f), "--index", "clustered", "--nprobe", "2",
                 "--k", "5", "--weighting", "distance", "--top-k", "7", "--out", str(tmp_path / "c.npz")]) == 0
    single.set_params(index="clustered", nprobe=2, knn=5, knn_grid="", weighting="distance", top_k=7)
    S_c = single.predict_scores(X_test)
    _same_csr(S_c, sp.load_npz(tmp_path / "c.npz"))
    assert np.diff(S_c.indptr).max() <= 7
    assert type(single.predictor_.index("clustered", nprobe=2)).__name__ == "ClusteredIndex"
    assert single.predictor_._index_key == ("clustered", (("nprobe", 2),))  # the options reached the index
    count = Predictor.load(one).predict(X_test, k=5, weighting="count", top_k=7)
    assert (S_c != count).nnz > 0  # and the weighting the votes
    loaded = XHypClassifier.load(one, index="clustered", nprobe=2, knn=5, knn_grid="", weighting="distance", top_k=7)
    _same_csr(loaded.predict_scores(X_test), S_c)
    # with the knn_grid (the default) predictions use the k chosen after training, as `xhyp predict` does
    chosen = json.loads((one / "config.json").read_text())["predict"]["k"]
    single.set_params(knn_grid=TrainConfig.knn_grid, index="exact", nprobe=None)
    _same_csr(single.predict_scores(X_test), Predictor.load(one).predict(X_test, k=chosen, weighting="distance",
                                                                          top_k=7))


def test_dense_input_errors_and_sklearn_clone(tmp_path, synthetic_files):
    train_f, test_f = synthetic_files
    X, Y = read_xc(train_f)
    X_test, Y_test = read_xc(test_f)
    est = XHypClassifier(dim=8, epochs=1, threads=1)
    with pytest.raises(RuntimeError, match="not fitted"):
        est.predict(X_test)
    with pytest.raises(ValueError, match="rows"):
        est.fit(X, Y[:10])
    with pytest.raises(ValueError, match="alpha"):
        XHypClassifier(alpha=-1.0, epochs=1).fit(X, Y)
    from sklearn.base import clone

    a = clone(est).fit(X.toarray(), Y.toarray())  # dense input is accepted (converted to CSR)
    b = clone(est).fit(X, Y)
    _same_csr(a.predict_scores(X_test.toarray()), b.predict_scores(X_test))
    with pytest.raises(ValueError, match="features"):
        b.predict(X_test[:, :50])
    with pytest.raises(ValueError, match="k must be"):
        b.predict(X_test, k=0)
    ids, scores = b.predict(X_test, k=150)  # more than the 100 labels there are: padded
    assert ids.shape == (200, 150) and (ids[:, -1] == -1).all() and (scores[:, -1] == 0).all()
    assert 0.0 < b.score(X_test, Y_test, k=3) <= 1.0
    with pytest.raises(FileNotFoundError, match="config.json"):
        XHypClassifier.load(tmp_path)
    with pytest.raises(TypeError, match="pickled"):  # its model lives in a temporary directory
        import pickle

        pickle.dumps(b)
    tmp_dir = b.model_dir_
    del b, a
    import gc

    gc.collect()
    assert not tmp_dir.exists()  # the temporary model directory goes with the estimator


def test_grid_search_uses_fit_and_score(synthetic_files):
    from sklearn.model_selection import GridSearchCV

    X, Y = read_xc(synthetic_files[0])
    g = GridSearchCV(XHypClassifier(dim=6, epochs=1, threads=1), {"alpha": [5.0, 30.0]}, cv=2).fit(X, Y)
    assert g.best_params_["alpha"] in (5.0, 30.0) and len(g.cv_results_["mean_test_score"]) == 2
    assert all(0.0 < v <= 1.0 for v in g.cv_results_["mean_test_score"])  # P@1 of each setting


def test_import_xhyp_stays_light():
    code = ("import sys, xhyp; assert 'torch' not in sys.modules, 'torch imported'; "
            "assert 'XHypClassifier' in dir(xhyp) and 'XHypClassifier' in xhyp.__all__; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"
    import xhyp
    import xhyp.estimator

    assert xhyp.XHypClassifier is xhyp.estimator.XHypClassifier
    from xhyp import XHypClassifier as C

    assert C is XHypClassifier
    with pytest.raises(AttributeError):
        xhyp.no_such_name
