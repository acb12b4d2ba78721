"""Experiment scripts (eval/table*.py, eval/fig2.py), `xhyp plot` and the label-space analysis."""
import json

import numpy as np
import pytest

from xhyp.cli import main
from xhyp.eval import common as eval_common
from xhyp.eval import fig2, table2, table4, table5, table6
from xhyp.datasets.formats import read_xc, write_xc
from xhyp.metrics import evaluate, most_common_baseline
from xhyp.embedding import manifold
from xhyp.plot import distance_to_origin, project_2d, spearman_frequency_distance

from test_ensemble import L, toy_data

TINY = ["--epochs", "1", "--negatives", "5", "--knn", "5", "--threads", "1"]  # xhyp train's flags


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    (d / "toy").mkdir()
    write_xc(d / "toy" / "train.txt", *toy_data(200, seed=0))
    write_xc(d / "toy" / "test.txt", *toy_data(60, seed=1))
    return d


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory, data_dir):
    """One tiny Table-4 sweep shared by the tests that reuse its cache."""
    out = tmp_path_factory.mktemp("t4")
    assert table4.main(["--datasets", "toy", "--data-dir", str(data_dir), "--out", str(out), "--dims", "2", "5",
                        "--learners", "1", "2", *TINY]) == 0
    return out


def test_table2_most_common(tmp_path, data_dir):
    assert table2.main(["--datasets", "toy", "--data-dir", str(data_dir), "--out", str(tmp_path)]) == 0
    res = json.loads((tmp_path / "table2.json").read_text())["results"]["toy"]
    _, Ytr = read_xc(data_dir / "toy" / "train.txt")
    _, Yte = read_xc(data_dir / "toy" / "test.txt")
    ref = evaluate(Yte, most_common_baseline(Ytr, Yte.shape[0], 5), ks=(1, 3, 5))
    assert res["P@1"] == pytest.approx(ref["P@1"]) and res["P@5"] == pytest.approx(ref["P@5"])
    md = (tmp_path / "table2.md").read_text()
    assert "| toy |" in md and "P@3" in md


def test_table4_sweep_tables_and_cache(sweep_dir, data_dir):
    data = json.loads((sweep_dir / "table4.json").read_text())
    cells = data["results"]["toy"]
    assert set(cells) == {"poincare", "euclidean"} and set(cells["poincare"]) == {"2", "5"}
    for cell in (c for g in cells.values() for c in g.values()):
        assert set(cell["prefix"]) == {"1", "2"} and len(cell["per_learner"]) == 2
        assert 0.0 < cell["prefix"]["2"]["P@1"] <= 1.0
        # the 1-learner prefix is learner 0 alone
        assert cell["prefix"]["1"]["P@1"] == pytest.approx(cell["per_learner"][0]["P@1"])
    md = (sweep_dir / "table4.md").read_text()
    assert "| Poincaré | 5 |" in md and "| Euclidean | 2 |" in md and "2 learners" in md
    # content: a cell's numbers are its cached learners' test metrics, recomputed here
    from xhyp.prediction.ensemble import Ensemble
    from xhyp.prediction import Predictor

    Xt, Yt = read_xc(data_dir / "toy" / "test.txt")
    cell_dir = sweep_dir / "cache" / "toy" / "poincare_d5_epochs1_knn5_negatives5"
    cell = cells["poincare"]["5"]
    for i in range(2):
        S = Predictor.load(cell_dir / f"learner_{i:02d}").predict(Xt, top_k=100)
        assert cell["per_learner"][i]["P@1"] == pytest.approx(evaluate(Yt, S)["P@1"])
        assert cell["per_learner"][i]["P@5"] == pytest.approx(evaluate(Yt, S)["P@5"])
    S2 = Ensemble.load(cell_dir, n_members=2).predict(Xt, top_k=100)
    assert cell["prefix"]["2"]["P@1"] == pytest.approx(evaluate(Yt, S2)["P@1"])
    assert cell["prefix"]["2"]["P@3"] == pytest.approx(evaluate(Yt, S2)["P@3"])
    # the markdown shows those numbers (percentages, 2 decimals)
    assert f"{100 * cell['prefix']['2']['P@1']:.2f}" in md
    assert data["timing"]["toy"]["trained_now"] == 8
    # resuming a finished sweep trains nothing and gives the same numbers
    assert table4.main(["--datasets", "toy", "--data-dir", str(data_dir), "--out", str(sweep_dir), "--dims", "2",
                        "5", "--learners", "1", "2", *TINY]) == 0
    again = json.loads((sweep_dir / "table4.json").read_text())
    assert again["timing"]["toy"]["trained_now"] == 0
    assert again["results"]["toy"]["poincare"]["5"]["prefix"] == cells["poincare"]["5"]["prefix"]


def test_table5_reuses_cache(tmp_path, sweep_dir, data_dir):
    assert table5.main(["--datasets", "toy", "--data-dir", str(data_dir), "--out", str(tmp_path), "--cache",
                        str(sweep_dir / "cache"), "--dim", "5", "--max-learners", "2", *TINY]) == 0
    data = json.loads((tmp_path / "table5.json").read_text())
    assert data["results"]["toy"]["poincare"]["5"]["trained_now"] == 0
    assert set(data["plateau"]["toy"]["poincare"]) == {"P@1", "P@3", "P@5"}
    assert "Plateau" in (tmp_path / "table5.md").read_text()


def test_plateau_definition():
    assert table5.plateau({1: 0.50, 2: 0.55, 3: 0.559, 4: 0.56}, tolerance=0.25) == 3
    assert table5.plateau({1: 0.6, 2: 0.5}) == 1


def test_table6_and_fig2(tmp_path, sweep_dir, data_dir):
    common = ["--datasets", "toy", "--data-dir", str(data_dir), "--cache", str(sweep_dir / "cache"), *TINY]
    assert table6.main([*common, "--out", str(tmp_path), "--dim", "5"]) == 0
    res = json.loads((tmp_path / "table6.json").read_text())["results"]
    assert set(res) == {"toy Poincaré n=5", "toy Euclidean n=5"}
    r = res["toy Poincaré n=5"]
    assert -1.0 <= r["spearman_rho"] <= 1.0 and sum(b["labels"] for b in r["bins"]) == L
    # content: rho of the training label frequencies against d(0, w) of the cached model's labels
    import torch
    from scipy.stats import spearmanr

    model = sweep_dir / "cache" / "toy" / "poincare_d5_epochs1_knn5_negatives5" / "learner_00"
    W = torch.load(model / "model.pt", weights_only=True)["labels"].double().numpy()
    _, Ytr = read_xc(data_dir / "toy" / "train.txt")
    freq = np.asarray(Ytr.sum(0)).ravel()
    d0 = 2 * np.arctanh(np.linalg.norm(W, axis=1))
    assert r["spearman_rho"] == pytest.approx(spearmanr(freq, d0)[0], abs=1e-9)
    assert r["n_labels"] == L
    assert "Spearman" in (tmp_path / "table6.md").read_text()
    assert fig2.main([*common, "--out", str(tmp_path)]) == 0
    png = tmp_path / "fig2_toy.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size < 300_000
    assert "fig2_toy.png" in (tmp_path / "fig2.md").read_text()


@pytest.mark.parametrize("dim", [2, 5])
def test_cli_plot(tmp_path, sweep_dir, dim, capsys):
    model = sweep_dir / "cache" / "toy" / f"poincare_d{dim}_epochs1_knn5_negatives5" / "learner_00"
    assert model.is_dir(), sorted(p.name for p in (sweep_dir / "cache" / "toy").iterdir())
    out = tmp_path / f"fig{dim}.png"
    assert main(["plot", "--model", str(model), "--out", str(out), "--examples", "50"]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size < 300_000
    info = json.loads(capsys.readouterr().out)
    assert ("as learned" in info["projection"]) == (dim == 2)
    assert ("log map" in info["projection"]) == (dim == 5)
    # an ensemble directory draws its first learner
    assert main(["plot", "--model", str(model.parent), "--out", str(tmp_path / "e.png")]) == 0


def test_spearman_on_constructed_case():
    freq = np.array([100, 50, 20, 10, 5, 1])
    radius = np.array([0.1, 0.2, 0.4, 0.6, 0.8, 0.95])  # rarer -> farther out
    W = np.stack([radius, np.zeros_like(radius)], 1)
    rho, p = spearman_frequency_distance(freq, distance_to_origin(W))
    assert rho == pytest.approx(-1.0) and p < 0.01
    r = table6.norm_vs_frequency(W, freq)
    assert r["spearman_rho"] == pytest.approx(-1.0)
    assert [b["labels"] for b in r["bins"]] == [1, 1, 1, 1, 1, 1]  # bins 0, 2, 3, 4, 5, 6
    assert r["bins"][0]["freq_min"] == 1 and r["bins"][-1]["freq_max"] == 127
    # monotone but not linear: Spearman still -1
    rho, _ = spearman_frequency_distance(freq, np.exp(-freq))
    assert rho == pytest.approx(-1.0)
    assert np.isnan(spearman_frequency_distance(np.ones(4), np.arange(4))[0])


def test_log_exp_maps_and_projection():
    """The plot's projection uses the manifold's maps: |log_0(x)| = d(0, x) / 2."""
    import torch

    log0 = lambda a: manifold.logmap0(torch.from_numpy(a)).numpy()  # noqa: E731
    exp0 = lambda a: manifold.expmap0(torch.from_numpy(a)).numpy()  # noqa: E731
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 5))
    x = 0.9 * x / (1 + np.linalg.norm(x, axis=1, keepdims=True))
    np.testing.assert_allclose(exp0(log0(x)), x, atol=1e-12)
    np.testing.assert_allclose(2 * np.linalg.norm(log0(x), axis=1), distance_to_origin(x), rtol=1e-12)
    # points in a 2-D subspace keep their distance to the origin through log -> PCA -> exp
    basis = np.linalg.qr(rng.normal(size=(5, 2)))[0]
    y = exp0((rng.normal(size=(30, 2)) * 2) @ basis.T)
    xy, how = project_2d(y, "poincare")
    assert "log map" in how
    np.testing.assert_allclose(distance_to_origin(xy), distance_to_origin(y), rtol=1e-8)
    assert np.all(np.linalg.norm(xy, axis=1) < 1)


def test_vote_sweep_uses_only_the_training_split(tmp_path, data_dir):
    from xhyp.eval import common, vote_sweep

    fit, out = eval_common.holdout_split(200, 0.25, seed=4)
    assert len(out) == 50 and len(np.intersect1d(fit, out)) == 0 and len(fit) + len(out) == 200
    assert np.array_equal(out, eval_common.holdout_split(200, 0.25, seed=4)[1])
    with pytest.raises(ValueError, match="holdout"):
        eval_common.holdout_split(10, 1.0, 0)
    assert vote_sweep.main(["--datasets", "toy", "--data-dir", str(data_dir), "--out", str(tmp_path),
                            "--learners", "2", "--knn", "1", "5", "--dim", "3", "--holdout", "0.25",
                            "--epochs", "1", "--negatives", "5", "--threads", "1"]) == 0
    saved = json.loads((tmp_path / "vote_sweep.json").read_text())
    assert saved["command"].startswith("python -m xhyp.eval.vote_sweep --datasets toy --data-dir ")
    assert saved["environment"]["xhyp_version"] and saved["environment"]["cpu_count"] >= 1
    res = saved["results"]["toy"]
    assert res["fit_rows"] == 150 and res["holdout_rows"] == 50 and len(res["grid"]) == 4
    # the learners were trained on the 150 fit rows only, and the best row is the grid's maximum
    cfg = json.loads((tmp_path / "cache" / "toy" / res["dir"].split("/")[-1] / "learner_00" / "config.json").read_text())
    assert cfg["data"]["n"] == 150
    assert res["best"]["P@1"] == max(g["P@1"] for g in res["grid"])
