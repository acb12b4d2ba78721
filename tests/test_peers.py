"""bench/peers.py on a tiny synthetic problem, with whichever peers this environment has.

xhyp always runs (2 learners, 2 epochs); PLT when napkinxc is installed (the test extra has it);
Parabel/Bonsai when omikuji is installed (the bench extra); XR-Linear is left out (its own venv
takes minutes to make). Checks the table and JSON structure, metric ranges, and that every
method's reported P@1/PSP@1 are what :mod:`xhyp.metrics` gives on its saved predictions.
"""
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from xhyp.datasets.synthetic import make_hierarchical
from xhyp.metrics import inv_propensity, precision_at_k, psprecision_at_k

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("bench_peers", ROOT / "bench" / "peers.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny():
    d = make_hierarchical(n_train=300, n_test=120, n_features=120, branching=(3, 4), seed=3)
    return d


def _installed(name):
    return importlib.util.find_spec(name) is not None


@pytest.fixture(scope="module")
def run(peers, tiny, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("peers")
    names = ["xhyp", "plt", "parabel", "bonsai"]
    args = peers.parse_args(["--peers", *names, "--xhyp-learners", "2", "--threads", "1",
                             "--xhyp-set", "epochs=2", "patience=5", "--work", str(tmp / "work"),
                             "--out", str(tmp / "peers.json")])
    data = peers.make_data("tiny", tiny["X_train"], tiny["Y_train"], tiny["X_test"], tiny["Y_test"])
    res = peers.run_dataset(data, names, Path(args.work) / "tiny", args, log=lambda *_: None)
    return res, data


def test_methods_present_and_skipped_cleanly(run):
    res, _ = run
    m = res["methods"]
    assert m["xhyp"]["status"] == "ok" and m["xhyp-ens2"]["status"] == "ok"
    for peer, pkg in (("plt", "napkinxc"), ("parabel", "omikuji"), ("bonsai", "omikuji")):
        if _installed(pkg):
            assert m[peer]["status"] == "ok", m[peer]
        else:
            assert m[peer]["status"] == "unavailable" and pkg in m[peer]["reason"]


def test_metrics_in_range_and_match_saved_predictions(run):
    res, data = run
    q = inv_propensity(data["Y_train"], 0.55, 1.5)
    n_ok = 0
    for method, r in res["methods"].items():
        if r["status"] != "ok":
            continue
        n_ok += 1
        for key in ("P@1", "P@3", "P@5", "PSP@1", "PSP@3", "PSP@5"):
            assert 0.0 <= r["metrics"][key] <= 1.0
        assert r["metrics"]["P@1"] > 0.2, (method, r["metrics"])  # a learnable problem, not noise
        assert r["train_seconds"] > 0 and r["predict_ms_per_point"] > 0 and r["model_bytes"] > 0
        S = sp.load_npz(r["predictions"])
        assert S.shape == data["Y_test"].shape
        assert S.getnnz(axis=1).max() <= 5
        assert r["metrics"]["P@1"] == pytest.approx(float(precision_at_k(data["Y_test"], S, k=1)[0]), abs=1e-12)
        assert r["metrics"]["PSP@1"] == pytest.approx(float(psprecision_at_k(data["Y_test"], S, q, k=1)[0]),
                                                      abs=1e-12)
    assert n_ok >= 2


def test_xhyp_best_epoch_time_and_ensemble_sums(run):
    m = run[0]["methods"]
    one, ens = m["xhyp"], m["xhyp-ens2"]
    assert 0 < one["to_best_seconds"] <= one["train_seconds"]
    assert len(ens["learners"]) == 2
    assert ens["learners"][0] == one["learners"][0]  # learner 0 of the ensemble is the single learner
    assert ens["train_seconds"] == pytest.approx(sum(s["train_seconds"] for s in ens["learners"]))
    assert ens["model_bytes"] == sum(s["model_bytes"] for s in ens["learners"])


def test_markdown_table(peers, run):
    res, _ = run
    md = peers.markdown_table([res])
    lines = md.splitlines()
    assert lines[0].startswith("| dataset | method | P@1 | P@3 | P@5 | PSP@1 | PSP@3 | PSP@5 | train (s)")
    rows = [l for l in lines[2:] if l.startswith("| tiny |")]
    assert len(rows) == len(res["methods"])
    n_cols = lines[0].count("|")
    assert all(r.count("|") == n_cols for r in rows)
    x = next(r for r in rows if r.startswith("| tiny | xhyp |"))
    p1 = float(x.split("|")[3])
    assert p1 == pytest.approx(100 * res["methods"]["xhyp"]["metrics"]["P@1"], abs=0.006)


def test_missing_package_is_reported_unavailable(peers, tiny, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "omikuji", None)  # makes `import omikuji` raise ImportError
    args = peers.parse_args(["--peers", "parabel", "--work", str(tmp_path)])
    data = peers.make_data("tiny", tiny["X_train"], tiny["Y_train"], tiny["X_test"], tiny["Y_test"])
    res = peers.run_dataset(data, ["parabel"], tmp_path, args, log=lambda *_: None)
    assert res["methods"]["parabel"]["status"] == "unavailable"
    assert "omikuji" in res["methods"]["parabel"]["reason"]
    assert "parabel" in peers.markdown_table([res]).split("Not run:")[1]


def test_main_writes_json_and_md(peers, tiny, tmp_path, monkeypatch):
    monkeypatch.setattr(peers, "prepare", lambda name, data_dir: peers.make_data(
        name, tiny["X_train"], tiny["Y_train"], tiny["X_test"], tiny["Y_test"]))
    out = tmp_path / "p.json"
    peers.main(["--datasets", "tiny", "--peers", "plt", "--out", str(out), "--work", str(tmp_path / "w"),
                "--threads", "1"])
    doc = json.loads(out.read_text())
    assert doc["datasets"][0]["name"] == "tiny" and "plt" in doc["datasets"][0]["methods"]
    assert "environment" in doc and doc["command"].startswith("python bench/peers.py")
    md = out.with_suffix(".md").read_text()
    assert "| tiny | plt |" in md and "Command:" in md
    assert doc["complete"] is True
    # --render: two runs merged into one table, each run's command kept
    merged = tmp_path / "merged.json"
    peers.main(["--render", str(out), str(out), "--out", str(merged)])
    mdoc = json.loads(merged.read_text())
    assert len(mdoc["datasets"]) == 1 and len(mdoc["runs"]) == 2  # same data set: merged, first run wins
    assert mdoc["runs"][0]["command"] == doc["command"]
    assert "| tiny | plt (1) |" in merged.with_suffix(".md").read_text()
    assert mdoc["datasets"][0]["methods"]["plt"]["run"] == 1


def test_l2_rows(peers):
    X = sp.csr_matrix(np.array([[3.0, 4.0, 0.0], [0.0, 0.0, 0.0], [0.0, 2.0, 0.0]], dtype=np.float32))
    Z = peers.l2_rows(X).toarray()
    np.testing.assert_allclose(Z, [[0.6, 0.8, 0.0], [0, 0, 0], [0, 1, 0]], rtol=1e-6)
