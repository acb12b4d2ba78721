"""`xhyp run --train-file/--test-file`, `xhyp info`, `xhyp export`, `xhyp plot --history`."""
import gzip
import json
import shutil

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from xhyp.cli import main
from xhyp.datasets import read_xc, write_xc
from xhyp.datasets.synthetic import make_hierarchical
from xhyp.embedding.model import HyperbolicXMC

FAST = ["--epochs", "2", "--threads", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small model directory and a 2-learner ensemble directory trained by the CLI."""
    d = tmp_path_factory.mktemp("info")
    data = make_hierarchical(n_train=500, n_test=100, n_features=150, seed=5)
    write_xc(d / "train.txt", data["X_train"], data["Y_train"])
    assert main(["train", "--file", str(d / "train.txt"), "--out", str(d / "m"), "--dim", "6", "--epochs", "3",
                 "--threads", "1", "--no-progress"]) == 0
    assert main(["ensemble", "--file", str(d / "train.txt"), "--out", str(d / "e"), "--learners", "2", "--dim", "6",
                 *FAST]) == 0
    return d


def _gz_supported(tmp_path_factory=None) -> bool:
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as t:
        p = Path(t) / "a.txt.gz"
        with gzip.open(p, "wt") as f:
            f.write("1 2 2\n0 0:1\n")
        try:
            read_xc(p)
            return True
        except Exception:
            return False


def test_run_on_own_files_gives_the_registry_outputs(tmp_path, shared_data_dir, capsys):
    bib = shared_data_dir / "bibtex"
    assert main(["run", "--dataset", "bibtex", "--data-dir", str(shared_data_dir), "--out", str(tmp_path / "reg"),
                 *FAST]) == 0
    assert main(["run", "--train-file", str(bib / "train.txt"), "--test-file", str(bib / "test.txt"),
                 "--out", str(tmp_path / "own"), *FAST]) == 0
    reg, own = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("reg", "own"))
    assert reg["metrics"] == own["metrics"] and reg["best_epoch"] == own["best_epoch"]  # PS metrics included
    assert own["dataset"] == str(bib / "train.txt") and reg["dataset"] == "bibtex"
    a, b = (sp.load_npz(tmp_path / d / "test_scores.npz") for d in ("reg", "own"))
    assert a.shape == (2515, 159) and (a != b).nnz == 0
    assert sorted(p.name for p in (tmp_path / "own" / "model").iterdir()) == \
        sorted(p.name for p in (tmp_path / "reg" / "model").iterdir())
    capsys.readouterr()
    assert main(["info", "--model", str(tmp_path / "own"), "--json"]) == 0  # a run directory: its model/
    info = json.loads(capsys.readouterr().out)
    assert info["path"] == str(tmp_path / "own" / "model") and info["dataset"] == str(bib / "train.txt")
    capsys.readouterr()
    assert main(["run", "--train-file", str(bib / "train.txt"), "--out", str(tmp_path / "x")]) == 2
    assert "--test-file" in capsys.readouterr().err
    assert main(["run", "--dataset", "bibtex", "--train-file", "a", "--test-file", "b",
                 "--out", str(tmp_path / "x")]) == 2
    assert "not both" in capsys.readouterr().err


@pytest.mark.skipif(not _gz_supported(), reason="the XC reader does not read gzip-compressed files yet")
def test_run_on_compressed_files(tmp_path, trained, capsys):
    data = make_hierarchical(n_train=300, n_test=80, n_features=120, seed=2)
    write_xc(tmp_path / "tr.txt", data["X_train"], data["Y_train"])
    write_xc(tmp_path / "te.txt", data["X_test"], data["Y_test"])
    for name in ("tr.txt", "te.txt"):
        with open(tmp_path / name, "rb") as src, gzip.open(tmp_path / (name + ".gz"), "wb") as dst:
            shutil.copyfileobj(src, dst)
    for suffix, out in (("", "plain"), (".gz", "gz")):
        assert main(["run", "--train-file", str(tmp_path / ("tr.txt" + suffix)), "--test-file",
                     str(tmp_path / ("te.txt" + suffix)), "--out", str(tmp_path / out), "--dim", "6", *FAST]) == 0
    m = [json.loads((tmp_path / d / "metrics.json").read_text())["metrics"] for d in ("plain", "gz")]
    assert m[0] == m[1]


def test_info_model_and_ensemble(trained, capsys):
    m, e = trained / "m", trained / "e"
    capsys.readouterr()
    assert main(["info", "--model", str(m), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    hist = json.loads((m / "history.json").read_text())
    cfg = json.loads((m / "config.json").read_text())
    assert info["kind"] == "model" and info["complete"] is True
    assert info["model"] == cfg["model"] and info["train"] == cfg["train"] and info["model"]["dim"] == 6
    assert info["data"] == {"n": 500, "n_features": 150, "n_labels": cfg["model"]["n_labels"],
                            "nnz_x": cfg["data"]["nnz_x"], "nnz_y": cfg["data"]["nnz_y"]}
    best = max(hist, key=lambda r: r["val_p1"])  # first epoch of the best validation P@1
    assert info["best_epoch"] == best["epoch"] and info["best_val_p1"] == best["val_p1"]
    c = info["curve"]
    assert c["epochs"] == info["epochs_run"] == 3
    assert (c["loss_first"], c["loss_last"]) == (hist[0]["loss"], hist[-1]["loss"])
    assert (c["val_p1_first"], c["val_p1_best"], c["val_p1_last"]) == (hist[0]["val_p1"], best["val_p1"],
                                                                        hist[-1]["val_p1"])
    sizes = {f["name"]: f["bytes"] for f in info["files"]}
    assert sizes == {p.name: p.stat().st_size for p in m.iterdir()}
    assert info["total_bytes"] == sum(sizes.values())

    assert main(["info", "--model", str(m)]) == 0
    text = capsys.readouterr().out
    assert "dim=6" in text and "model.pt" in text and f"{sizes['model.pt']:,}" in text and "n=500" in text

    assert main(["info", "--model", str(e), "--json"]) == 0
    ens = json.loads(capsys.readouterr().out)
    assert ens["kind"] == "ensemble" and [x["name"] for x in ens["members"]] == ["learner_00", "learner_01"]
    assert [x["train"]["seed"] for x in ens["members"]] == [0, 1] and ens["complete"] is True
    assert len(ens["best_epoch"]) == 2 and ens["data"]["n"] == 500
    assert "learner_01/model.pt" in {f["name"] for f in ens["files"]}
    assert main(["info", "--model", str(e)]) == 0
    assert "learner_01" in capsys.readouterr().out

    assert main(["info", "--model", str(trained / "nope")]) == 2
    assert main(["info", "--model", str(trained)]) == 2  # a directory without config.json
    assert "config.json" in capsys.readouterr().err


def test_export_embeddings(trained, tmp_path, capsys):
    m = trained / "m"
    out = tmp_path / "emb.npz"
    assert main(["export", "--model", str(m), "--out", str(out)]) == 0
    z = np.load(out)
    W = HyperbolicXMC.load(m).labels.detach().numpy()
    E = torch.load(m / "train_emb.pt", weights_only=True).numpy()
    Y = sp.load_npz(m / "train_labels.npz").tocsr()
    assert z["label_embeddings"].dtype == z["train_embeddings"].dtype == np.float32
    np.testing.assert_array_equal(z["label_embeddings"], W)
    np.testing.assert_array_equal(z["train_embeddings"], E)
    np.testing.assert_array_equal(z["label_ids"], np.arange(W.shape[0]))
    np.testing.assert_array_equal(z["label_frequency"], np.asarray(Y.sum(0)).ravel().astype(np.int64))
    Y2 = sp.csr_matrix((np.ones(len(z["train_label_ids"])), z["train_label_ids"], z["train_label_indptr"]),
                       shape=Y.shape)
    assert (Y2 != Y).nnz == 0
    assert str(z["geometry"]) == "poincare" and int(z["dim"]) == 6
    assert (np.linalg.norm(z["label_embeddings"], axis=1) < 1).all()  # points of the ball
    assert [p.name for p in tmp_path.iterdir()] == ["emb.npz"]  # written atomically: no temporary left

    assert main(["export", "--model", str(trained / "e"), "--member", "1", "--out", str(tmp_path / "e1.npz")]) == 0
    W1 = HyperbolicXMC.load(trained / "e" / "learner_01").labels.detach().numpy()
    np.testing.assert_array_equal(np.load(tmp_path / "e1.npz")["label_embeddings"], W1)
    capsys.readouterr()
    assert main(["export", "--model", str(trained / "e"), "--member", "2", "--out", str(tmp_path / "x.npz")]) == 2
    assert main(["export", "--model", str(tmp_path), "--out", str(tmp_path / "x.npz")]) == 2
    assert "missing" in capsys.readouterr().err and not (tmp_path / "x.npz").exists()


def test_plot_history(trained, tmp_path, capsys):
    out = tmp_path / "h.png"
    capsys.readouterr()
    assert main(["plot", "--history", str(trained / "m"), "--out", str(out)]) == 0
    res = json.loads(capsys.readouterr().out)
    hist = json.loads((trained / "m" / "history.json").read_text())
    assert res["series"][0]["epochs"] == len(hist) == 3
    assert res["series"][0]["best_epoch"] == max(hist, key=lambda r: r["val_p1"])["epoch"]
    import matplotlib.image as mpimg

    img = mpimg.imread(out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and img.shape[0] > 200 and img.shape[1] > 400
    assert img[..., :3].std() > 0.05  # something is drawn
    assert main(["plot", "--history", str(trained / "e"), "--out", str(tmp_path / "e.png")]) == 0
    assert [s["name"] for s in json.loads(capsys.readouterr().out)["series"]] == ["learner_00", "learner_01"]
    assert main(["plot", "--history", str(trained / "m" / "history.json"), "--out", str(tmp_path / "f.png")]) == 0
    assert main(["plot", "--history", str(tmp_path / "nope"), "--out", str(tmp_path / "g.png")]) == 2
    assert not (tmp_path / "g.png").exists()
    assert main(["plot", "--model", str(trained / "m"), "--out", str(tmp_path / "labels.png")]) == 0  # still there
    with pytest.raises(SystemExit):  # --model and --history are exclusive
        main(["plot", "--model", str(trained / "m"), "--history", str(trained / "m"), "--out", str(out)])
