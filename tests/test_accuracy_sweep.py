"""eval/accuracy_sweep.py: held-out protocol, cached learners, ensembles and vote-only rows."""
import json

import numpy as np
import pytest
import scipy.sparse as sp

from xhyp.datasets import load_split
from xhyp.datasets.formats import write_xc
from xhyp.eval import accuracy_sweep as S
from xhyp.eval.common import holdout_split
from xhyp.knn.vote import sum_top_scores
from xhyp.metrics import evaluate, inv_propensity
from xhyp.prediction import Predictor
from xhyp.training import train

from test_ensemble import toy_data

TINY = {"v-vote": {"model": {"dim": 4}, "train": {"epochs": 1, "rerank": "none", "knn_grid": "", "knn": 5}},
        "v-rr": {"model": {"dim": 4}, "train": {"epochs": 1, "rerank": "linear", "knn_grid": "3,5", "rerank_knn": 10,
                                                 "rerank_weights": "0,1"}}}


@pytest.fixture
def setup(tmp_path, monkeypatch):
    d = tmp_path / "data"
    (d / "toy").mkdir(parents=True)
    write_xc(d / "toy" / "train.txt", *toy_data(200, seed=0))
    write_xc(d / "toy" / "test.txt", *toy_data(60, seed=1))
    monkeypatch.setattr(S, "VARIANTS", dict(TINY))
    return d, tmp_path / "out"


def run(d, out, *extra):
    assert S.main(["--datasets", "toy", "--data-dir", str(d), "--out", str(out), "--variants", "v-vote", "v-rr",
                   "--learners", "1", "2", "--threads", "1", *extra]) == 0
    return {(r["split"], r["method"], r["learners"]): r for r in json.loads((out / "accuracy_sweep.json").read_text())["rows"]}


def test_holdout_rows_are_learners_trained_on_the_rest_of_train(setup):
    d, out = setup
    rows = run(d, out)
    methods = ("v-vote", "v-rr", "v-rr (vote only)")
    assert set(rows) == ({("holdout", m, n) for m in methods for n in (1, 2)}
                         | {("holdout", m + " (mean of single learners)", 2) for m in methods})
    X, Y = load_split("toy", "train", data_dir=d)
    fit, held = holdout_split(X.shape[0], 0.2, 0)
    # learner 0 of v-rr, retrained here on the fit part only, scores the held-out part as the sweep says
    cfg = S.variant_config("v-rr")
    res = train(X[fit], Y[fit], cfg["model"], dict(cfg["train"], seed=0, threads=1), progress=False)
    pred = Predictor.from_train_result(res)
    ip = inv_propensity(Y[fit])
    m = evaluate(Y[held], pred.predict(X[held], top_k=S.TOP_K), ks=(1, 3, 5), inv_prop=ip)
    assert rows["holdout", "v-rr", 1]["P@1"] == pytest.approx(m["P@1"])
    assert rows["holdout", "v-rr", 1]["PSP@5"] == pytest.approx(m["PSP@5"])
    m0 = evaluate(Y[held], pred.predict(X[held], top_k=S.TOP_K, rerank_weight=0), ks=(1, 3, 5), inv_prop=ip)
    assert rows["holdout", "v-rr (vote only)", 1]["P@3"] == pytest.approx(m0["P@3"])
    # an ensemble of 2 is the sum of the two cached learners' scores
    cell = S.cell_dir(out / "cache" / "holdout0.2_seed0" / "toy", "v-vote", S.variant_config("v-vote"))
    both = sum_top_scores([sp.load_npz(cell / f"learner_{i:02d}" / "eval_scores.npz") for i in (0, 1)], S.TOP_K)
    assert rows["holdout", "v-vote", 2]["P@1"] == pytest.approx(evaluate(Y[held], both, ks=(1,), inv_prop=ip)["P@1"])
    cfg = json.loads((cell / "learner_01" / "config.json").read_text())
    assert cfg["train"]["seed"] == 1 and cfg["model"]["dim"] == 4 and cfg["train"]["knn"] == 5
    assert -1.0 <= rows["holdout", "v-vote", 1]["rho"] <= 1.0
    # the mean of the two single learners
    one = [evaluate(Y[held], sp.load_npz(cell / f"learner_{i:02d}" / "eval_scores.npz"), ks=(1, 3, 5), inv_prop=ip)
           for i in (0, 1)]
    assert rows["holdout", "v-vote (mean of single learners)", 2]["P@3"] == pytest.approx(np.mean([o["P@3"] for o in one]))


def test_cache_is_reused_and_invalidated_by_a_changed_variant(setup, monkeypatch):
    d, out = setup
    first = run(d, out)
    base = out / "cache" / "holdout0.2_seed0" / "toy"
    model = S.cell_dir(base, "v-vote", S.variant_config("v-vote")) / "learner_00" / "model.pt"
    stamp = model.stat().st_mtime_ns
    assert run(d, out) == first and model.stat().st_mtime_ns == stamp  # nothing retrained
    monkeypatch.setitem(S.VARIANTS, "v-vote", {"model": {"dim": 3}, "train": TINY["v-vote"]["train"]})
    run(d, out)
    changed = S.cell_dir(base, "v-vote", S.variant_config("v-vote"))
    assert changed != model.parents[1] and model.stat().st_mtime_ns == stamp
    assert json.loads((changed / "learner_00" / "config.json").read_text())["model"]["dim"] == 3


def test_test_split_and_unknown_variant(setup):
    d, out = setup
    rows = run(d, out, "--split", "test")
    X, Y = load_split("toy", "train", data_dir=d)
    Xt, Yt = load_split("toy", "test", data_dir=d)
    cfg = S.variant_config("v-vote")
    res = train(X, Y, cfg["model"], dict(cfg["train"], seed=0, threads=1), progress=False)
    S_t = Predictor.from_train_result(res).predict(Xt, top_k=S.TOP_K)
    assert rows["test", "v-vote", 1]["P@1"] == pytest.approx(evaluate(Yt, S_t, ks=(1,))["P@1"])
    assert "**toy, test**" in (out / "accuracy_sweep.md").read_text()
    with pytest.raises(KeyError, match="unknown variant"):
        S.main(["--datasets", "toy", "--data-dir", str(d), "--out", str(out), "--variants", "nope"])
    assert np.isfinite([r["P@5"] for r in rows.values()]).all()


def test_refit_variant_equals_training_it(setup, monkeypatch):
    """A variant that changes only after-training options reuses its base's embeddings; its rows
    equal a learner trained with the variant's whole configuration (one thread: deterministic)."""
    d, out = setup
    refit = {"model": {"dim": 4}, "train": dict(TINY["v-rr"]["train"], rerank_shortlist=3, rerank_negatives=5,
                                                rerank_prune=0.01), "refit_of": "v-rr"}
    monkeypatch.setitem(S.VARIANTS, "v-rr-bounded", refit)
    assert S.main(["--datasets", "toy", "--data-dir", str(d), "--out", str(out), "--variants", "v-rr-bounded",
                   "--learners", "1", "--threads", "1"]) == 0
    rows = {(r["method"], r["learners"]): r for r in json.loads((out / "accuracy_sweep.json").read_text())["rows"]}
    base = out / "cache" / "holdout0.2_seed0" / "toy"
    assert S.cell_dir(base, "v-rr", S.variant_config("v-rr")).is_dir()  # the base learner was trained
    assert not (S.cell_dir(base, "v-rr-bounded", S.variant_config("v-rr-bounded")) / "learner_00" / "model.pt").exists()
    X, Y = load_split("toy", "train", data_dir=d)
    fit, held = holdout_split(X.shape[0], 0.2, 0)
    res = train(X[fit], Y[fit], refit["model"], dict(refit["train"], seed=0, threads=1), progress=False)
    assert res.config["predict"]["rerank_shortlist"] == 3
    m = evaluate(Y[held], Predictor.from_train_result(res).predict(X[held], top_k=S.TOP_K), ks=(1, 3, 5),
                 inv_prop=inv_propensity(Y[fit]))
    for name in ("P@1", "P@5", "PSP@3"):
        assert rows["v-rr-bounded", 1][name] == pytest.approx(m[name]), name
    assert rows["v-rr-bounded", 1]["scorer_nnz"] == res.scorer.coef.nnz
    with pytest.raises(ValueError, match="change the embedding"):
        S._refit("bad", "", "v-rr", alpha=3.0)


def test_paired_differences_seed_by_seed(setup):
    """--paired A B: per metric, the mean over seeds of A's single learner minus B's of the same seed,
    its standard error and the seeds A is ahead on, from the learners' own metrics (by hand here)."""
    d, out = setup
    run(d, out, "--paired", "v-rr", "v-vote")
    data = json.loads((out / "accuracy_sweep.json").read_text())
    (p,) = data["paired"]
    X, Y = load_split("toy", "train", data_dir=d)
    fit, held = holdout_split(X.shape[0], 0.2, 0)
    ip = inv_propensity(Y[fit])
    base = out / "cache" / "holdout0.2_seed0" / "toy"
    m = {v: [evaluate(Y[held], sp.load_npz(S.cell_dir(base, v, S.variant_config(v)) / f"learner_{i:02d}" / "eval_scores.npz"),
                      ks=(1, 3, 5), inv_prop=ip) for i in (0, 1)] for v in ("v-rr", "v-vote")}
    assert (p["a"], p["b"], p["n"], p["dataset"]) == ("v-rr", "v-vote", 2, "toy")
    for k in ("P@1", "PSP@5"):
        diff = np.array([m["v-rr"][i][k] - m["v-vote"][i][k] for i in (0, 1)])
        assert p[k]["mean"] == pytest.approx(diff.mean())
        assert p[k]["se"] == pytest.approx(diff.std(ddof=1) / np.sqrt(2))
        assert p[k]["wins"] == int((diff > 0).sum())
    assert "**paired by seed**" in (out / "accuracy_sweep.md").read_text()
    # a row with one seed has no error; variants outside --variants are refused
    one = S.paired_differences([{"split": "s", "dataset": "x", "method": f"{v} (mean of single learners)",
                                 "each": {k: [0.5 + (v == "a") * 0.1] for k in S.METRICS}} for v in "ab"], "a", "b")
    assert one[0]["n"] == 1 and one[0]["P@1"]["mean"] == pytest.approx(0.1) and np.isnan(one[0]["P@1"]["se"])
    with pytest.raises(SystemExit, match="--paired"):
        run(d, out, "--paired", "v-rr", "nope")
