"""The CLI end to end: synthetic data (no download), the real Bibtex split, resume by content."""
import json

import io

import pytest
import scipy.sparse as sp
import torch

from xhyp.cli import main
from xhyp.datasets.formats import read_xc, write_xc

from test_evaluate import napkin_metrics
from test_learning import noisy_toy

# the settings these tests depend on, passed explicitly (defaults may change)
FLAGS = ["--batch-size", "64", "--negatives", "50", "--alpha", "30", "--lr", "0.003", "--lr-labels", "0.003",
         "--knn", "20", "--weighting", "count", "--input-dropout", "0.5", "--dim", "50", "--val-fraction", "0.05",
         "--patience", "5", "--features", "l2", "--optimizer", "radam", "--sampling", "uniform", "--seed", "0",
         "--device", "cpu"]


def test_run_synthetic_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["run", "--dataset", "synthetic-hier", "--out", str(out), "--epochs", "3", "--no-progress", *FLAGS])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    # measured: untrained (--epochs 0) 0.60, 3 epochs 0.87
    assert metrics["metrics"]["P@1"] > 0.75
    hist = json.loads((out / "model" / "history.json").read_text())
    assert len(hist) == 3 and hist[-1]["loss"] < hist[0]["loss"]
    # the metrics are `xhyp evaluate`'s on the saved scores (propensities from the training split)
    from xhyp.commands import evaluate_predictions

    again = evaluate_predictions(out / "test_scores.npz", dataset="synthetic-hier")
    assert again == pytest.approx(metrics["metrics"], rel=1e-9) and "PSP@5" in again
    for name in ("config.json", "model.pt", "features.npz", "train_emb.pt", "train_labels.npz", "history.json"):
        assert (out / "model" / name).exists(), name
    assert "P@1" in capsys.readouterr().out


def test_train_predict_evaluate_on_bibtex(tmp_path, shared_data_dir, capsys):
    model = tmp_path / "m"
    common = ["--dataset", "bibtex", "--data-dir", str(shared_data_dir)]
    assert main(["train", *common, "--out", str(model), "--epochs", "2", "--no-progress", *FLAGS]) == 0
    assert main(["predict", "--model", str(model), *common, "--out", str(tmp_path / "s.npz")]) == 0
    S = sp.load_npz(tmp_path / "s.npz")
    assert S.shape == (2515, 159)
    assert main(["evaluate", "--pred", str(tmp_path / "s.npz"), *common, "--out", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert 0.5 < m["P@1"] <= 1.0  # measured: untrained 0.336, 2 epochs 0.556
    # every metric against napkinxc, propensities from Bibtex's training labels (A=0.55, B=1.5)
    _, Ytr = read_xc(shared_data_dir / "bibtex" / "train.txt")
    _, Yte = read_xc(shared_data_dir / "bibtex" / "test.txt")
    want = napkin_metrics(Yte, S.tocsr(), Ytr, 0.55, 1.5)
    assert set(m) == set(want)
    for name, v in want.items():
        assert m[name] == pytest.approx(v, rel=1e-6), name
    # resume a finished run: nothing left to do, same model and history
    before = (model / "model.pt").read_bytes(), json.loads((model / "history.json").read_text())
    assert main(["train", *common, "--out", str(model), "--epochs", "2", "--resume", "--no-progress", *FLAGS]) == 0
    assert json.loads((model / "history.json").read_text()) == before[1] and len(before[1]) == 2
    a = torch.load(model / "model.pt", weights_only=True)
    for name, v in torch.load(io.BytesIO(before[0]), weights_only=True).items():
        torch.testing.assert_close(a[name], v, rtol=0, atol=0)


def test_cli_resume_continues_the_run(tmp_path, capsys):
    """`xhyp train --resume` with more epochs: history continues, the model equals an uninterrupted run."""
    X, Y = noisy_toy(300, seed=4)
    write_xc(tmp_path / "train.txt", X, Y)
    flags = ["--file", str(tmp_path / "train.txt"), "--no-progress", "--dim", "6", "--batch-size", "32",
             "--negatives", "5", "--alpha", "10", "--lr", "0.03", "--lr-labels", "0.03", "--knn", "5",
             "--val-fraction", "0.1", "--patience", "10", "--input-dropout", "0.5", "--seed", "3", "--threads", "1",
             "--device", "cpu"]
    assert main(["train", "--out", str(tmp_path / "full"), "--epochs", "4", *flags]) == 0
    assert main(["train", "--out", str(tmp_path / "part"), "--epochs", "2", *flags]) == 0
    first = json.loads((tmp_path / "part" / "history.json").read_text())
    assert len(first) == 2
    capsys.readouterr()
    assert main(["train", "--out", str(tmp_path / "part"), "--epochs", "4", "--resume", *flags]) == 0
    summary = json.loads(capsys.readouterr().out)
    full = json.loads((tmp_path / "full" / "history.json").read_text())
    resumed = json.loads((tmp_path / "part" / "history.json").read_text())
    assert [h["epoch"] for h in resumed] == [1, 2, 3, 4] and resumed[:2] == first
    assert [h["loss"] for h in resumed] == pytest.approx([h["loss"] for h in full], rel=1e-5)
    assert [h["val_p1"] for h in resumed] == pytest.approx([h["val_p1"] for h in full])
    assert summary["epochs_run"] == 4
    a = torch.load(tmp_path / "part" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "full" / "model.pt", weights_only=True)
    for name in b:
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=1e-6)
    ea = torch.load(tmp_path / "part" / "train_emb.pt", weights_only=True)
    torch.testing.assert_close(ea, torch.load(tmp_path / "full" / "train_emb.pt", weights_only=True),
                               rtol=1e-5, atol=1e-6)
    # resuming with another setting that changes what is learned is refused in one line
    assert main(["train", "--out", str(tmp_path / "part"), "--epochs", "5", "--resume", *flags, "--alpha", "3"]) == 2
    assert "alpha" in capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("2 3 2\n0 0:1\n5 1:1\n")
    rc = main(["train", "--file", str(bad), "--out", str(tmp_path / "m"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.startswith("xhyp: error:") and "bad.txt:3" in err and "Traceback" not in err
    rc = main(["predict", "--model", str(tmp_path / "nope"), "--file", str(bad), "--out", str(tmp_path / "o.npz")])
    assert rc == 2
    rc = main(["data", "info", "no-such-dataset"])
    assert rc == 2
    assert "no-such-dataset" in capsys.readouterr().err


def test_hyperparameter_flags_are_documented_from_the_dataclasses():
    from xhyp.cli import build_parser

    text = build_parser()._subparsers._group_actions[0].choices["train"].format_help()
    # every training/model flag carries its dataclass attribute's description and its default
    assert "softmax scale on distances. (default: 5.0)" in " ".join(text.split())
    assert "embedding dimension n. (default: 50)" in " ".join(text.split())
    assert "--input-dropout FLOAT" in text and "--seed INT" in text
    assert ":class:" not in text and "``" not in text
