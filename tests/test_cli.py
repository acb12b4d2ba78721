"""The CLI end to end: synthetic data (no download) and the real Bibtex split."""
import json

import scipy.sparse as sp

from xhyp.cli import main


def test_run_synthetic_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    rc = main(["run", "--dataset", "synthetic-hier", "--out", str(out), "--epochs", "3", "--no-progress"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["metrics"]["P@1"] > 0.5  # generated data is learnable; chance is far below
    for name in ("config.json", "model.pt", "features.npz", "train_emb.pt", "train_labels.npz", "history.json"):
        assert (out / "model" / name).exists(), name
    assert "P@1" in capsys.readouterr().out


def test_train_predict_evaluate_on_bibtex(tmp_path, shared_data_dir, capsys):
    model = tmp_path / "m"
    common = ["--dataset", "bibtex", "--data-dir", str(shared_data_dir)]
    assert main(["train", *common, "--out", str(model), "--epochs", "2", "--no-progress"]) == 0
    assert main(["predict", "--model", str(model), *common, "--out", str(tmp_path / "s.npz")]) == 0
    S = sp.load_npz(tmp_path / "s.npz")
    assert S.shape == (2515, 159)
    assert main(["evaluate", "--pred", str(tmp_path / "s.npz"), *common, "--out", str(tmp_path / "m.json")]) == 0
    m = json.loads((tmp_path / "m.json").read_text())
    assert 0.35 < m["P@1"] <= 1.0 and "PSP@5" in m and "nDCG@3" in m
    # resume a finished run: nothing left to do, same model
    assert main(["train", *common, "--out", str(model), "--epochs", "2", "--resume", "--no-progress"]) == 0


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
    assert "softmax scale on distances. (default: 30.0)" in " ".join(text.split())
    assert "embedding dimension n. (default: 50)" in " ".join(text.split())
    assert "--input-dropout FLOAT" in text and "--seed INT" in text
    assert ":class:" not in text and "``" not in text
