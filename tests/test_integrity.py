"""Integrity of model directories and inputs (issue 10): one run per directory, manifest and lock,
no NaN model, one-line errors for damaged files, no leftovers."""
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from xhyp import modeldir
from xhyp.cli import main
from xhyp.datasets.formats import write_xc
from xhyp.prediction.ensemble import Ensemble, train_ensemble
from xhyp.modeldir import ModelDirError
from xhyp.prediction import Predictor
from xhyp.config import TrainConfig
from xhyp.training import train
from xhyp.utils import NonFiniteError, atomic_save_sparse, atomic_torch_save

REPO = Path(__file__).resolve().parents[1]
FAST = {"epochs": 2, "negatives": 5, "batch_size": 32, "val_fraction": 0.0, "threads": 1, "knn": 5, "seed": 0}
CLI_FAST = ["--epochs", "2", "--negatives", "5", "--dim", "4", "--knn", "5", "--threads", "1",
            "--val-fraction", "0", "--no-progress"]


def _data(n=80, seed=0):
    rng = np.random.default_rng(seed)
    lab = rng.integers(0, 6, n)
    X = sp.random(n, 20, density=0.2, format="csr", random_state=seed, dtype=np.float32)
    X = (X + sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), lab)), shape=(n, 20))).tocsr()
    Y = sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), lab)), shape=(n, 6))
    return X, Y


def _files(tmp_path, n=80, seed=0, name="train.txt"):
    X, Y = _data(n, seed)
    write_xc(tmp_path / name, X, Y)
    return tmp_path / name


def _train(out, seed=0, **cfg):
    X, Y = _data(seed=seed)
    return train(X, Y, {"dim": 4}, dict(FAST, **cfg), out_dir=out, progress=False)


def _err(capsys):
    err = capsys.readouterr().err
    assert err.startswith("xhyp: error: ") and "Traceback" not in err, err
    assert err.count("\n") == 1, err  # exactly one line
    return err


def _predict_rc(model, data, out, capsys=None):
    return main(["predict", "--model", str(model), "--file", str(data), "--out", str(out)])


# -- item 1: mixed directories, one run per directory, lock ----------------------------------------------

def test_training_into_a_used_directory_is_refused_without_resume_or_overwrite(tmp_path, capsys):
    data = _files(tmp_path)
    m = tmp_path / "M"
    assert main(["train", "--file", str(data), "--out", str(m), *CLI_FAST]) == 0
    before = (m / "model.pt").read_bytes()
    assert main(["train", "--file", str(data), "--out", str(m), *CLI_FAST, "--dim", "5"]) == 2
    err = _err(capsys)
    assert str(m) in err and "--resume" in err and "--overwrite" in err
    assert (m / "model.pt").read_bytes() == before  # untouched
    assert main(["train", "--file", str(data), "--out", str(m), *CLI_FAST, "--dim", "5", "--overwrite"]) == 0
    assert Predictor.load(m).model.config.dim == 5
    assert _predict_rc(m, data, tmp_path / "s.npz") == 0
    # `xhyp run` into a used directory: the same rule
    assert main(["run", "--out", str(tmp_path / "r"), "--epochs", "1", "--no-progress", "--dim", "3"]) == 0
    capsys.readouterr()
    assert main(["run", "--out", str(tmp_path / "r"), "--epochs", "1", "--no-progress", "--dim", "3"]) == 2
    assert "--overwrite" in _err(capsys)


def _mix(a: Path, b: Path, out: Path, from_b):
    """A directory with A's files (and manifest) except ``from_b`` taken from B."""
    shutil.copytree(a, out)
    for n in from_b:
        shutil.copy2(b / n, out / n)


@pytest.mark.parametrize("from_b", [("model.pt", "checkpoint.pt"), ("train_emb.pt",), ("config.json",),
                                    ("train_labels.npz",), ("features.npz",), ("manifest.json",)])
def test_predict_refuses_directories_mixed_from_two_runs(tmp_path, capsys, from_b):
    """Issue item 1: B's model.pt/checkpoint.pt with A's config and database (A's manifest), or a
    train_emb.pt copied from another model with the same row count."""
    a, b = tmp_path / "A", tmp_path / "B"
    _train(a, seed=0)
    _train(b, seed=1, lr=0.01, features="tfidf")  # other data and settings, same shapes
    assert torch.load(a / "train_emb.pt").shape == torch.load(b / "train_emb.pt").shape
    mixed = tmp_path / "mixed"
    _mix(a, b, mixed, from_b)
    assert all((a / n).read_bytes() != (b / n).read_bytes() for n in from_b)
    with pytest.raises(ModelDirError) as info:
        Predictor.load(mixed)
    bad = {"manifest.json": "config.json"}.get(from_b[0], from_b[0])  # B's manifest: A's files differ
    assert f"mixed/{bad}" in str(info.value) or f"mixed/{from_b[0]}" in str(info.value)
    data = _files(tmp_path)
    capsys.readouterr()
    assert _predict_rc(mixed, data, tmp_path / "s.npz") == 2
    assert "mixed/" in _err(capsys)
    assert not (tmp_path / "s.npz").exists()


def test_interrupted_overwrite_leaves_a_directory_predict_refuses(tmp_path, monkeypatch, capsys):
    """Copy a trained directory, start a new training into it with other settings, stop it before
    epoch 1 ends: no manifest any more, predict refuses."""
    import xhyp.training.loop as T

    a = tmp_path / "A"
    _train(a)
    copy = tmp_path / "copy"
    shutil.copytree(a, copy)

    class Killed(Exception):
        pass

    def boom(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(T, "precision_at_1", boom)  # the end of epoch 1's validation
    with pytest.raises(Killed):
        train(*_data(), {"dim": 6}, dict(FAST, val_fraction=0.2), out_dir=copy, progress=False, overwrite=True)
    assert not (copy / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="copy/(model.pt|train_emb.pt|manifest.json)"):
        Predictor.load(copy)
    monkeypatch.undo()
    data = _files(tmp_path)
    assert _predict_rc(copy, data, tmp_path / "s.npz") == 2
    _err(capsys)


def test_kill_9_after_model_pt_rewritten_then_predict_refuses(tmp_path, capsys):
    """The issue's recipe with a real kill -9: train A, train B into the same directory
    (--overwrite), kill it once it has rewritten model.pt."""
    data = _files(tmp_path, n=400)
    m = tmp_path / "M"
    assert main(["train", "--file", str(data), "--out", str(m), *CLI_FAST]) == 0
    old = (m / "model.pt").stat().st_mtime_ns
    cmd = [sys.executable, "-m", "xhyp.cli", "train", "--file", str(data), "--out", str(m), "--epochs", "200",
           "--negatives", "5", "--dim", "4", "--knn", "5", "--threads", "1", "--val-fraction", "0",
           "--no-progress", "--overwrite", "--lr", "0.01"]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:  # (--overwrite removes the old model.pt first: it can vanish between two looks)
                if (m / "model.pt").stat().st_mtime_ns != old:
                    break
            except FileNotFoundError:
                pass
            assert proc.poll() is None, proc.stderr.read().decode()
            time.sleep(0.02)
        else:
            pytest.fail("model.pt was never rewritten")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert _predict_rc(m, data, tmp_path / "s.npz") == 2
    err = _err(capsys)
    assert "M/" in err and ("missing" in err or "does not match" in err or "bytes" in err)
    # the same command with --resume finishes it; predict then works
    resume = [c for c in cmd if c != "--overwrite"] + ["--resume"]
    resume[resume.index("200")] = "3"
    assert subprocess.run(resume, cwd=REPO, capture_output=True).returncode == 0
    assert _predict_rc(m, data, tmp_path / "s.npz") == 0
    assert not list(m.glob(".*.tmp"))


def test_a_second_writer_fails_at_once_and_a_dead_writers_lock_is_free(tmp_path, capsys):
    m = tmp_path / "M"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from xhyp.modeldir import lock_dir; "
                               f"lock_dir({str(m)!r}); print('locked', flush=True); time.sleep(60)"],
                              cwd=REPO, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline().strip() == b"locked"
        data = _files(tmp_path)
        t0 = time.time()
        assert main(["train", "--file", str(data), "--out", str(m), *CLI_FAST]) == 2
        assert time.time() - t0 < 5
        err = _err(capsys)
        assert f"pid {holder.pid}" in err and "another process" in err
        X, Y = _data()
        with pytest.raises(ModelDirError, match="another process"):
            train_ensemble(X, Y, m, n_learners=1, model_config={"dim": 3}, train_config=FAST, progress=False)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (m / modeldir.LOCK).exists()  # a stale lock file of a dead process does not block
    assert main(["train", "--file", str(data), "--out", str(m), *CLI_FAST]) == 0


def test_stale_temporary_files_of_dead_writers_are_removed(tmp_path):
    m = tmp_path / "M"
    _train(m)
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = [m / f".{n}.{dead.pid}.0123abcd.tmp" for n in ("checkpoint.pt", "model.pt", "train_emb.pt")]
    live = m / f".model.pt.{os.getpid()}.89abcdef.tmp"  # a live writer's: kept
    for p in (*stale, live):
        p.write_bytes(b"partial")
    train(*_data(), {"dim": 4}, dict(FAST, epochs=3), out_dir=m, resume=True, progress=False)
    assert not any(p.exists() for p in stale) and live.exists()
    live.unlink()


# -- ensembles --------------------------------------------------------------------------------------------

def test_ensemble_manifest_and_mixed_members(tmp_path):
    X, Y = _data()
    e = tmp_path / "E"
    train_ensemble(X, Y, e, n_learners=2, model_config={"dim": 3}, train_config=FAST, progress=False)
    assert (e / "manifest.json").is_file()
    ens = Ensemble.load(e)
    assert len(ens) == 2
    # a member replaced by another model (its own directory consistent): the ensemble refuses
    other = tmp_path / "other"
    _train(other, seed=5)
    shutil.rmtree(e / "learner_01")
    shutil.copytree(other, e / "learner_01")
    shutil.copy2(e / "learner_00" / "train_summary.json", e / "learner_01" / "train_summary.json")
    with pytest.raises(ModelDirError, match="learner_01/manifest.json"):
        Ensemble.load(e)
    # a single model's directory is not completed into an ensemble, nor an ensemble's trained over
    with pytest.raises(ModelDirError, match="holds a single model"):
        train_ensemble(X, Y, other, n_learners=1, model_config={"dim": 3}, train_config=FAST, progress=False)
    with pytest.raises(ModelDirError, match="already holds a model"):
        train(X, Y, {"dim": 3}, FAST, out_dir=e, progress=False)
    # --overwrite replaces the whole ensemble
    train_ensemble(X, Y, e, n_learners=2, model_config={"dim": 3}, train_config=FAST, progress=False,
                   overwrite=True)
    assert len(Ensemble.load(e)) == 2


def test_interrupted_ensemble_is_refused_then_completed(tmp_path, monkeypatch):
    import xhyp.prediction.ensemble as E

    X, Y = _data()
    e = tmp_path / "E"
    real = E.train_learner
    calls = []

    def second_dies(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(E, "train_learner", second_dies)
    with pytest.raises(KeyboardInterrupt):
        train_ensemble(X, Y, e, n_learners=2, model_config={"dim": 3}, train_config=FAST, progress=False)
    monkeypatch.undo()
    with pytest.raises(FileNotFoundError, match="learner_01"):
        Ensemble.load(e)
    train_ensemble(X, Y, e, n_learners=2, model_config={"dim": 3}, train_config=FAST, progress=False)
    assert len(Ensemble.load(e)) == 2


# -- item 2: non-finite guard ------------------------------------------------------------------------------

@pytest.mark.parametrize("flag,value", [("--alpha", "nan"), ("--alpha", "inf"), ("--alpha", "1e38"),
                                        ("--lr", "nan"), ("--lr-labels", "inf"), ("--input-dropout", "nan"),
                                        ("--max-norm", "nan"), ("--init-std-labels", "inf")])
def test_non_finite_hyper_parameters_are_refused_up_front(tmp_path, capsys, flag, value):
    data = _files(tmp_path)
    assert main(["train", "--file", str(data), "--out", str(tmp_path / "m"), *CLI_FAST, flag, value]) == 2
    err = _err(capsys)
    assert flag.lstrip("-").replace("-", "_") in err
    assert not (tmp_path / "m").exists()  # refused before anything was written


def test_non_finite_config_fields():
    for field in ("alpha", "lr", "lr_labels", "val_fraction", "input_dropout"):
        with pytest.raises(ValueError, match=field):
            TrainConfig(**{field: float("nan")})


def test_nan_feature_is_refused_before_training(tmp_path):
    X, Y = _data()
    X = X.tolil()
    X[7, 3] = np.nan
    X = X.tocsr()
    with pytest.raises(ValueError, match=r"non-finite feature value nan in training row 7, column 3"):
        train(X, Y, {"dim": 4}, dict(FAST, features="none"), out_dir=tmp_path / "m", progress=False)
    assert not (tmp_path / "m" / "model.pt").exists()


def test_nothing_non_finite_is_ever_saved(tmp_path):
    bad = {"w": torch.tensor([1.0, float("nan")]), "ok": torch.ones(2)}
    with pytest.raises(NonFiniteError, match=r"model\.pt.*w"):
        atomic_torch_save(bad, tmp_path / "model.pt")
    with pytest.raises(NonFiniteError):
        atomic_torch_save({"state": [torch.tensor([float("inf")])]}, tmp_path / "checkpoint.pt")
    with pytest.raises(NonFiniteError):
        atomic_save_sparse(tmp_path / "s.npz", sp.csr_matrix(np.array([[0.0, np.nan]], np.float32)))
    assert list(tmp_path.iterdir()) == []  # no file, no temporary
    atomic_torch_save({"rng": torch.zeros(3, dtype=torch.uint8), "x": torch.ones(2)}, tmp_path / "ok.pt")


def test_nan_model_files_are_refused_at_load(tmp_path):
    m = tmp_path / "m"
    _train(m)
    emb = torch.load(m / "train_emb.pt")
    emb[0, 0] = float("nan")
    torch.save(emb, m / "train_emb.pt")
    modeldir.write_manifest(m, "forged")  # even with a matching manifest
    with pytest.raises(ModelDirError, match="train_emb.pt: holds NaN"):
        Predictor.load(m)


# -- item 3 / 7: damaged model files and messages ---------------------------------------------------------

def _damage(path: Path, how: str):
    raw = path.read_bytes()
    if how == "empty":
        path.write_bytes(b"")
    elif how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "flipped":
        b = bytearray(raw)
        b[len(b) // 3] ^= 0xFF
        path.write_bytes(bytes(b))


@pytest.mark.parametrize("name", ["model.pt", "train_emb.pt", "train_labels.npz", "features.npz", "config.json"])
@pytest.mark.parametrize("how", ["empty", "truncated", "flipped"])
@pytest.mark.parametrize("reseal", [False, True])
def test_damaged_model_files_give_one_line_naming_the_file(tmp_path, capsys, name, how, reseal):
    """Without the manifest's help (``reseal``: a manifest rewritten over the damage) the loaders
    themselves name the file: EOFError, BadZipFile, [Errno 22] and JSON errors become one line."""
    m = tmp_path / "m"
    _train(m)
    data = _files(tmp_path)
    _damage(m / name, how)
    if reseal:
        modeldir.write_manifest(m, "resealed")
    capsys.readouterr()
    rc = _predict_rc(m, data, tmp_path / "s.npz")
    if rc == 0:  # a flipped byte that changes nothing that matters (e.g. inside JSON whitespace)
        assert reseal and how == "flipped"
        return
    assert rc == 2
    err = _err(capsys)
    assert f"m/{name}" in err and "Errno" not in err
    assert not (tmp_path / "s.npz").exists()


def test_config_json_without_model_section(tmp_path, capsys):
    m = tmp_path / "m"
    _train(m)
    cfg = json.loads((m / "config.json").read_text())
    del cfg["model"]
    (m / "config.json").write_text(json.dumps(cfg))
    modeldir.write_manifest(m, "resealed")
    with pytest.raises(ModelDirError, match=r"config.json: has no \"model\" section"):
        Predictor.load(m)


def test_cli_config_file_errors_name_the_file(tmp_path, capsys):
    data = _files(tmp_path)
    bad = tmp_path / "cfg.json"
    bad.write_text('{"model": {"dim": 4},}')
    assert main(["train", "--file", str(data), "--out", str(tmp_path / "m"), "--config", str(bad), *CLI_FAST]) == 2
    assert "cfg.json: is not a valid configuration JSON file" in _err(capsys)
    bad.write_text('["model"]')
    assert main(["train", "--file", str(data), "--out", str(tmp_path / "m"), "--config", str(bad), *CLI_FAST]) == 2
    assert "cfg.json" in _err(capsys)


@pytest.mark.parametrize("how", ["empty", "truncated", "flipped"])
def test_evaluate_damaged_prediction_file(tmp_path, capsys, how):
    data = _files(tmp_path)
    S = sp.random(80, 6, density=0.3, format="csr", random_state=0, dtype=np.float32)
    sp.save_npz(tmp_path / "p.npz", S)
    _damage(tmp_path / "p.npz", how)
    rc = main(["evaluate", "--pred", str(tmp_path / "p.npz"), "--file", str(data)])
    if rc == 0:  # a flipped byte inside the compressed data can survive (zip CRC catches most)
        assert how == "flipped"
        return
    assert rc == 2 and "p.npz" in _err(capsys)


def test_evaluate_on_zero_rows_is_an_error(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("0 20 6\n")
    sp.save_npz(tmp_path / "p.npz", sp.csr_matrix((0, 6), dtype=np.float32))
    assert main(["evaluate", "--pred", str(tmp_path / "p.npz"), "--file", str(tmp_path / "empty.txt")]) == 2
    assert "no rows to evaluate" in _err(capsys)


def test_training_file_with_zero_points(tmp_path, capsys):
    (tmp_path / "empty.txt").write_text("0 20 6\n")
    assert main(["train", "--file", str(tmp_path / "empty.txt"), "--out", str(tmp_path / "m"), *CLI_FAST]) == 2
    err = _err(capsys)
    assert "empty.txt" in err and "N = 0" in err and "sample" not in err


def test_gzip_and_bom_training_files(tmp_path, capsys):
    data = _files(tmp_path)
    raw = data.read_bytes()
    (tmp_path / "train.txt.gz").write_bytes(gzip.compress(raw))
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + raw)
    for f in ("train.txt.gz", "bom.txt"):
        assert main(["train", "--file", str(tmp_path / f), "--out", str(tmp_path / f"m-{f}"), *CLI_FAST]) == 0
    (tmp_path / "cut.gz").write_bytes(gzip.compress(raw)[:200])
    capsys.readouterr()
    assert main(["train", "--file", str(tmp_path / "cut.gz"), "--out", str(tmp_path / "m3"), *CLI_FAST]) == 2
    err = _err(capsys)
    assert "cut.gz" in err and "damaged gzip stream" in err and len(err) < 300


def test_resume_of_a_run_killed_before_its_first_checkpoint_starts_it_again(tmp_path, monkeypatch):
    import xhyp.training.loop as T

    m = tmp_path / "m"

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "precision_at_1", boom)  # dies at the end of epoch 1, before its checkpoint
    with pytest.raises(KeyboardInterrupt):
        train(*_data(), {"dim": 4}, dict(FAST, val_fraction=0.2), out_dir=m, progress=False)
    monkeypatch.undo()
    assert (m / "config.json").exists() and not (m / "checkpoint.pt").exists()
    train(*_data(), {"dim": 4}, dict(FAST, val_fraction=0.2), out_dir=m, resume=True, progress=False)
    Predictor.load(m)
    with pytest.raises(FileNotFoundError, match="checkpoint"):  # nothing there at all: still an error
        train(*_data(), {"dim": 4}, FAST, out_dir=tmp_path / "none", resume=True, progress=False)


def test_cli_resume_of_a_run_killed_at_start_up(tmp_path, capsys):
    """kill -9 before anything was written: the same command with --resume starts the run."""
    data = _files(tmp_path)
    assert main(["train", "--file", str(data), "--out", str(tmp_path / "m"), *CLI_FAST, "--resume"]) == 0
    assert "nothing to resume" in capsys.readouterr().err
    Predictor.load(tmp_path / "m")
