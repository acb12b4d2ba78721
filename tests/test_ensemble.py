"""Ensembles: training M learners, resuming, summed votes, `xhyp ensemble|predict|aggregate`."""
import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from xhyp.cli import main
from xhyp.prediction.ensemble import (Ensemble, aggregate_files, expand_model_dirs, is_complete, is_ensemble_dir,
                           train_ensemble)
from xhyp.datasets.formats import write_xc
from xhyp.prediction import Predictor
from conftest import np_top_k, np_vote

L = 12
TINY = {"epochs": 2, "negatives": 5, "batch_size": 32, "val_fraction": 0.1, "knn": 5, "threads": 1, "rerank": "none",
        "knn_grid": ""}


def toy_data(n, n_feat=60, n_lab=L, seed=0):
    """Each label owns 5 features; an example has 1-2 labels (Zipf-like frequencies) and their features."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_lab + 1)
    p /= p.sum()
    X = sp.lil_matrix((n, n_feat), dtype=np.float32)
    Y = sp.lil_matrix((n, n_lab), dtype=np.float32)
    for i in range(n):
        for lab in rng.choice(n_lab, size=rng.integers(1, 3), replace=False, p=p):
            Y[i, lab] = 1
            for f in rng.choice(5, size=3, replace=False):
                X[i, lab * 5 + f] = 1
        X[i, rng.integers(0, n_feat)] = 1
    return X.tocsr(), Y.tocsr()


@pytest.fixture(scope="module")
def data():
    return toy_data(200, seed=0), toy_data(60, seed=1)


@pytest.fixture(scope="module")
def ens(tmp_path_factory, data):
    (X, Y), _ = data
    out = tmp_path_factory.mktemp("ens") / "e"
    res = train_ensemble(X, Y, out, n_learners=3, model_config={"dim": 4}, train_config=TINY, progress=False)
    return out, res


def test_ensemble_layout_and_seeds(ens):
    out, res = ens
    meta = json.loads((out / "ensemble.json").read_text())
    assert meta["members"] == ["learner_00", "learner_01", "learner_02"]
    assert res["trained"] == 3 and res["skipped"] == 0
    assert is_ensemble_dir(out) and not is_ensemble_dir(out / "learner_00")
    seeds = [json.loads((out / m / "config.json").read_text())["train"]["seed"] for m in meta["members"]]
    assert seeds == [0, 1, 2]
    for m in meta["members"]:
        assert is_complete(out / m)
        Predictor.load(out / m)  # an ordinary model directory
    assert expand_model_dirs([out]) == [out / m for m in meta["members"]]


def test_ensemble_predict_is_sum_of_member_votes(ens, data, tmp_path):
    out, _ = ens
    _, (Xt, _) = data
    members = [Predictor.load(out / f"learner_{i:02d}").predict(Xt, top_k=L) for i in range(3)]
    dense_sum = sum(S.toarray().astype(np.float64) for S in members)
    S = Ensemble.load(out).predict(Xt, top_k=L)
    np.testing.assert_allclose(S.toarray(), dense_sum, rtol=1e-6)
    # aggregate of saved per-learner predictions == sum of member votes == ensemble predict
    paths = []
    for i, M in enumerate(members):
        sp.save_npz(tmp_path / f"p{i}.npz", M)
        paths.append(tmp_path / f"p{i}.npz")
    A = aggregate_files(paths, tmp_path / "sum.npz", top_k=L)
    np.testing.assert_allclose(A.toarray(), dense_sum, rtol=1e-6)
    np.testing.assert_allclose(sp.load_npz(tmp_path / "sum.npz").toarray(), dense_sum, rtol=1e-6)
    # a prefix of the ensemble
    S2 = Ensemble.load(out, n_members=2).predict(Xt, top_k=L)
    np.testing.assert_allclose(S2.toarray(), members[0].toarray() + members[1].toarray(), rtol=1e-6)


def test_aggregate_rejects_mismatching_shapes(tmp_path):
    sp.save_npz(tmp_path / "a.npz", sp.csr_matrix((3, 4), dtype=np.float32))
    sp.save_npz(tmp_path / "b.npz", sp.csr_matrix((3, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="b.npz"):
        aggregate_files([tmp_path / "a.npz", tmp_path / "b.npz"])


def test_resume_skips_complete_learners_and_finishes_interrupted_ones(tmp_path, data):
    (X, Y), _ = data
    out = tmp_path / "e"
    cfg = dict(TINY, epochs=1)
    train_ensemble(X, Y, out, n_learners=2, model_config={"dim": 3}, train_config=cfg, progress=False)
    mtimes = {m: (out / m / "model.pt").stat().st_mtime_ns for m in ("learner_00", "learner_01")}
    # learner_01 "interrupted" after its last checkpoint: final files missing
    for name in ("train_summary.json", "train_emb.pt"):
        (out / "learner_01" / name).unlink()
    res = train_ensemble(X, Y, out, n_learners=3, model_config={"dim": 3}, train_config=cfg, progress=False)
    assert [r["skipped"] for r in res["learners"]] == [True, False, False]
    assert res["learners"][1]["resumed"] is True and res["learners"][2]["resumed"] is False
    assert (out / "learner_00" / "model.pt").stat().st_mtime_ns == mtimes["learner_00"]
    assert all(is_complete(out / f"learner_{i:02d}") for i in range(3))
    # nothing left to do
    res = train_ensemble(X, Y, out, n_learners=3, model_config={"dim": 3}, train_config=cfg, progress=False)
    assert res["trained"] == 0 and res["skipped"] == 3
    # another configuration in the same directory is refused, not silently mixed
    with pytest.raises(ValueError, match="another configuration"):
        train_ensemble(X, Y, out, n_learners=3, model_config={"dim": 5}, train_config=cfg, progress=False)


def test_parallel_jobs(tmp_path, data):
    (X, Y), _ = data
    out = tmp_path / "par"
    res = train_ensemble(X, Y, out, n_learners=2, model_config={"dim": 3}, train_config=dict(TINY, epochs=1),
                         jobs=2, progress=False)
    assert res["trained"] == 2 and all(is_complete(out / m) for m in res["members"])


def test_cli_ensemble_predict_aggregate(tmp_path, data, capsys):
    (X, Y), (Xt, Yt) = data
    write_xc(tmp_path / "train.txt", X, Y)
    write_xc(tmp_path / "test.txt", Xt, Yt)
    out = tmp_path / "ens"
    tiny = ["--epochs", "1", "--negatives", "5", "--dim", "3", "--knn", "5", "--threads", "1"]
    assert main(["ensemble", "--file", str(tmp_path / "train.txt"), "--out", str(out), "--learners", "2",
                 "--no-progress", *tiny]) == 0
    assert json.loads((out / "ensemble.json").read_text())["members"] == ["learner_00", "learner_01"]
    test = ["--file", str(tmp_path / "test.txt"), "--top-k", str(L)]
    assert main(["predict", "--model", str(out), *test, "--out", str(tmp_path / "ens.npz")]) == 0
    for i in range(2):
        assert main(["predict", "--model", str(out / f"learner_{i:02d}"), *test,
                     "--out", str(tmp_path / f"m{i}.npz")]) == 0
    assert main(["aggregate", "--pred", str(tmp_path / "m0.npz"), str(tmp_path / "m1.npz"),
                 "--out", str(tmp_path / "sum.npz"), "--top-k", str(L)]) == 0
    E, A = sp.load_npz(tmp_path / "ens.npz"), sp.load_npz(tmp_path / "sum.npz")
    assert E.shape == (60, L)
    np.testing.assert_allclose(E.toarray(), A.toarray(), rtol=1e-6)
    # `--ensemble DIR` is the same as `--model DIR` for an ensemble directory
    assert main(["predict", "--ensemble", str(out), *test, "--out", str(tmp_path / "ens2.npz")]) == 0
    np.testing.assert_array_equal(sp.load_npz(tmp_path / "ens2.npz").toarray(), E.toarray())
    capsys.readouterr()
    assert main(["predict", "--ensemble", str(out / "learner_00"), *test, "--out", str(tmp_path / "x.npz")]) == 2
    assert "not a directory written by `xhyp ensemble`" in capsys.readouterr().err
    assert not (tmp_path / "x.npz").exists()
    # rerun: nothing retrained
    capsys.readouterr()
    assert main(["ensemble", "--file", str(tmp_path / "train.txt"), "--out", str(out), "--learners", "2",
                 "--no-progress", *tiny]) == 0
    assert json.loads(capsys.readouterr().out)["trained"] == 0


def count_votes_by_hand(pred, X):
    """A member's full float64 ``count`` votes, by hand from its exact neighbours: each neighbour
    adds ``1 + 1e-3 exp(-(d - d_1))`` to each of its labels (summed in neighbour-id order)."""
    tc = pred.config["train"]
    assert tc.get("weighting", "count") == "count"
    D, I = pred.index("exact").search(pred.embed(X), tc["knn"])
    return np_vote(I, D, pred.train_labels, "count", id_order=True)


@pytest.mark.parametrize("top_k", [2, 4])
def test_ensemble_sum_with_top_k_below_labels(ens, data, tmp_path, top_k):
    """With top_k < L: each member is cut to top_k, the cut votes summed, the sum cut to top_k
    (member_top_k=None); member_top_k=L sums the full votes.

    The per-member cut ranks the float64 votes (a member's float32 scores can tie where the
    float64 votes do not: labels of neighbours a few 1e-9 apart), so the expected cut is taken on
    votes computed by hand in float64, then rounded to float32 as a member's prediction is."""
    out, _ = ens
    _, (Xt, Yt) = data
    preds = [Predictor.load(out / f"learner_{i:02d}") for i in range(3)]
    full = [P.predict(Xt, top_k=L).toarray().astype(np.float64) for P in preds]
    full64 = [count_votes_by_hand(P, Xt) for P in preds]
    for F, F64 in zip(full, full64):
        np.testing.assert_allclose(F, F64, rtol=1e-6)  # the by-hand vote is the members' vote
    assert max((F > 0).sum(1).max() for F in full) > top_k  # the per-member cut matters
    want = np_top_k(sum(np_top_k(F, top_k).astype(np.float32).astype(np.float64) for F in full64), top_k)
    S = Ensemble.load(out).predict(Xt, top_k=top_k).toarray()
    np.testing.assert_allclose(S, want, rtol=1e-6)
    want_full = np_top_k(sum(full), top_k)
    np.testing.assert_allclose(Ensemble.load(out).predict(Xt, top_k=top_k, member_top_k=L).toarray(), want_full,
                               rtol=1e-6)
    # the CLI predicts the same from the ensemble directory
    write_xc(tmp_path / "t.txt", Xt, Yt)
    assert main(["predict", "--model", str(out), "--file", str(tmp_path / "t.txt"), "--top-k", str(top_k),
                 "--out", str(tmp_path / "e.npz")]) == 0
    np.testing.assert_allclose(sp.load_npz(tmp_path / "e.npz").toarray(), want, rtol=1e-6)


def test_parallel_jobs_equal_sequential(tmp_path, data):
    """`jobs=2` trains exactly the learners `jobs=1` trains (same weights, same votes)."""
    (X, Y), (Xt, _) = data
    cfg = dict(TINY, epochs=2)
    runs = {}
    for jobs in (1, 2):
        out = tmp_path / f"j{jobs}"
        res = train_ensemble(X, Y, out, n_learners=2, model_config={"dim": 3}, train_config=cfg, jobs=jobs,
                             progress=False)
        assert res["trained"] == 2
        runs[jobs] = out
    for m in ("learner_00", "learner_01"):
        a = torch.load(runs[1] / m / "model.pt", weights_only=True)
        b = torch.load(runs[2] / m / "model.pt", weights_only=True)
        assert set(a) == set(b)
        for name in a:
            torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
        ha = json.loads((runs[1] / m / "history.json").read_text())
        hb = json.loads((runs[2] / m / "history.json").read_text())
        assert [h["loss"] for h in ha] == [h["loss"] for h in hb]
    # the two learners differ (different seeds)
    a0 = torch.load(runs[1] / "learner_00" / "model.pt", weights_only=True)["labels"]
    a1 = torch.load(runs[1] / "learner_01" / "model.pt", weights_only=True)["labels"]
    assert (a0 - a1).abs().max() > 1e-4
    np.testing.assert_array_equal(Ensemble.load(runs[1]).predict(Xt, top_k=4).toarray(),
                                  Ensemble.load(runs[2]).predict(Xt, top_k=4).toarray())


def test_aggregate_files_cuts_the_sum(ens, data, tmp_path):
    out, _ = ens
    _, (Xt, _) = data
    full = [Predictor.load(out / f"learner_{i:02d}").predict(Xt, top_k=L) for i in range(3)]
    paths = []
    for i, M in enumerate(full):
        sp.save_npz(tmp_path / f"p{i}.npz", M)
        paths.append(tmp_path / f"p{i}.npz")
    want = np_top_k(sum(M.toarray().astype(np.float64) for M in full), 3)
    np.testing.assert_allclose(aggregate_files(paths, top_k=3).toarray(), want, rtol=1e-6)
    assert main(["aggregate", "--pred", *map(str, paths), "--out", str(tmp_path / "s.npz"), "--top-k", "3"]) == 0
    np.testing.assert_allclose(sp.load_npz(tmp_path / "s.npz").toarray(), want, rtol=1e-6)


def test_is_complete_needs_every_predictor_file(ens, tmp_path):
    import shutil

    from xhyp.prediction.predictor import PREDICTOR_FILES

    out, _ = ens
    for name in ("train_summary.json", *PREDICTOR_FILES):
        d = tmp_path / name
        shutil.copytree(out / "learner_00", d)
        assert is_complete(d)
        (d / name).unlink()
        assert not is_complete(d), name


def test_parallel_jobs_train_in_worker_processes(tmp_path, data, monkeypatch):
    """jobs=2: the parent process trains nothing itself (it only checks complete learners)."""
    import xhyp.prediction.ensemble as E

    (X, Y), _ = data
    calls = []
    real = E.train_learner

    def spy(X, Y, out_dir, *a, **kw):
        calls.append(str(out_dir))  # in a forked worker this appends to the worker's copy
        return real(X, Y, out_dir, *a, **kw)

    monkeypatch.setattr(E, "train_learner", spy)
    res = train_ensemble(X, Y, tmp_path / "par", n_learners=2, model_config={"dim": 3},
                         train_config=dict(TINY, epochs=1), jobs=2, progress=False)
    assert res["trained"] == 2 and calls == []
