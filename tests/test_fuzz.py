"""Seeded fuzzing of the readers (XC text, Mulan ARFF, Clus-HMC ARFF) and of the model-directory
loader: random truncations, byte flips, inserted and deleted bytes, shuffled lines and wrong-typed
tokens (issue 10).

What counts as a failure:

* **a traceback**: any exception other than the project's own (``DataFormatError`` for the readers,
  ``ModelDirError`` for model directories), or a CLI exit other than 0/2;
* **damaged data accepted**: for XC text, every mutated file is also parsed by an independent,
  strict line-by-line reference parser written from the format's description (below); when the
  reference rejects the file (it is *damaged*), the reader must raise, and when both accept,
  their matrices must be equal. For a model directory, every file is covered by the manifest's
  SHA-256, so any changed byte must be refused; with the manifest rewritten over the damage
  ("resealed"), the loader must refuse or give a predictor whose output is finite and well-shaped.
  For the ARFF readers (no reference parser) the result must be self-consistent (shapes, binary
  labels, finite features);
* **a partial output**: ``xhyp predict`` on a damaged directory exiting 2 but leaving its --out file.

At least 500 damaged inputs are checked in total (counted, and asserted).
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from xhyp.datasets.formats import DataFormatError, read_hmc_arff, read_mulan_arff, read_xc, write_xc

SEED = 20261203
BOM = b"\xef\xbb\xbf"
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:nan|inf|infinity)", re.I)
_INT = re.compile(r"[0-9]+")
_FLT_MAX = float(np.finfo(np.float32).max)
ALPHABET = b" ,:\n\t-+.eE0123456789abx{}@%?\r\x00\xff"
WRONG = [b"abc", b"-1", b"1e99", b"nan", b"inf", b"3.5", b"", b"1:2:3", b"@", b"?", b"{", b"999999999999999999999"]


class Rejected(Exception):
    pass


def ref_xc(raw: bytes):
    """Strict reference reader of the XC text format (``(X, Y)`` or :class:`Rejected`).

    Header ``N F L`` (three non-negative integers) on line 1 (a UTF-8 BOM before it is skipped);
    then ``N`` lines, each: optional comma-separated label ids (the first field, unless it has a
    ``:``), then ``id:value`` features, separated by spaces or tabs; ids are non-negative integers
    in range and not repeated on a line, values finite decimal numbers within float32's range; a
    ``\\r`` before the newline is allowed; only blank lines may follow the ``N`` points, and a
    blank text after the last newline is not a line.
    """
    if raw.startswith(BOM):
        raw = raw[3:]
    lines = raw.split(b"\n")
    if len(lines) > 1 and not lines[-1].strip(b" \t\r"):  # after the last newline: blank is no line
        lines = lines[:-1]
    if not lines:
        raise Rejected("empty")
    parts = lines[0].decode("ascii", errors="replace").split()
    if len(parts) != 3 or not all(_INT.fullmatch(p) for p in parts):
        raise Rejected("header")
    n, n_feat, n_lab = (int(p) for p in parts)
    if max(n, n_feat, n_lab) >= 1 << 62:
        raise Rejected("header value too large")
    rows = lines[1:]
    if len(rows) < n:
        raise Rejected("too few rows")
    if any(r.strip(b" \t\r") for r in rows[n:]):
        raise Rejected("extra rows")
    xr, xc, xv, yr, yc = [], [], [], [], []
    for i, r in enumerate(rows[:n]):
        try:
            text = r.decode("ascii")
        except UnicodeDecodeError:
            raise Rejected("non-ascii") from None
        text = text.rstrip("\r")
        toks = [t for t in re.split(r"[ \t]+", text)]
        if text and text[0] not in " \t" and ":" not in toks[0]:
            label_field, feats = toks[0], [t for t in toks[1:] if t]
        else:
            label_field, feats = "", [t for t in toks if t]
        labels = []
        if label_field:
            for t in label_field.split(","):
                if not _INT.fullmatch(t) or int(t) >= n_lab:
                    raise Rejected("label")
                labels.append(int(t))
        if len(set(labels)) != len(labels):
            raise Rejected("duplicate label")
        fids = []
        for t in feats:
            fid, colon, val = t.partition(":")
            if not colon or not _INT.fullmatch(fid) or int(fid) >= n_feat or not _FLOAT.fullmatch(val):
                raise Rejected("feature")
            v = float(val)
            if not np.isfinite(v) or abs(v) > _FLT_MAX:
                raise Rejected("value")
            fids.append(int(fid))
            xr.append(i)
            xc.append(int(fid))
            xv.append(v)
        if len(set(fids)) != len(fids):
            raise Rejected("duplicate feature")
        yr += [i] * len(labels)
        yc += labels
    X = sp.csr_matrix((np.array(xv, np.float32), (xr, xc)), shape=(n, n_feat))
    Y = sp.csr_matrix((np.ones(len(yr), np.float32), (yr, yc)), shape=(n, n_lab))
    return X, Y


def mutate(raw: bytes, rng: np.random.Generator) -> bytes:
    """One random damage: truncation, byte flips, inserted/deleted bytes, line shuffles, wrong tokens."""
    if not raw:
        return bytes(rng.choice(list(ALPHABET), 5))
    kind = rng.integers(7)
    pos = int(rng.integers(len(raw)))
    if kind == 0:  # truncation
        return raw[:pos]
    if kind == 1:  # 1-3 byte flips
        b = bytearray(raw)
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(len(b)))] = int(rng.integers(256))
        return bytes(b)
    if kind == 2:  # structural bytes inserted
        return raw[:pos] + bytes(rng.choice(list(ALPHABET), int(rng.integers(1, 4)))) + raw[pos:]
    if kind == 3:  # a range deleted
        return raw[:pos] + raw[pos + int(rng.integers(1, 40)):]
    if kind == 4:  # a line duplicated or dropped
        lines = raw.split(b"\n")
        i = int(rng.integers(len(lines)))
        return b"\n".join(lines[:i] + ([lines[i]] * 2 if rng.random() < 0.5 else []) + lines[i + 1:])
    if kind == 5:  # a token replaced by one of the wrong type
        toks = re.split(rb"([ ,:\n{}@]+)", raw)
        idx = [i for i, t in enumerate(toks) if t and not re.fullmatch(rb"[ ,:\n{}@]+", t)]
        if idx:
            toks[int(rng.choice(idx))] = WRONG[int(rng.integers(len(WRONG)))]
        return b"".join(toks)
    b = bytearray(raw)  # a digit changed (often harmless: the reference decides)
    digits = [i for i, c in enumerate(b) if 48 <= c <= 57]
    if digits:
        b[int(rng.choice(digits))] = int(rng.integers(48, 58))
    return bytes(b)


def _small_xc(rng, tmp: Path) -> bytes:
    n, f, l = int(rng.integers(1, 8)), int(rng.integers(1, 12)), int(rng.integers(1, 6))
    X = sp.random(n, f, density=0.4, format="csr", random_state=int(rng.integers(1 << 30)), dtype=np.float32)
    Y = sp.csr_matrix((rng.random((n, l)) < 0.4).astype(np.float32))
    write_xc(tmp / "base.txt", X, Y)
    return (tmp / "base.txt").read_bytes()


def _same(A, B) -> bool:
    A, B = sp.csr_matrix(A), sp.csr_matrix(B)
    A.sort_indices()
    B.sort_indices()
    return (A.shape == B.shape and np.array_equal(A.indptr, B.indptr) and np.array_equal(A.indices, B.indices)
            and np.allclose(A.data, B.data, rtol=1e-6, atol=0))


COUNTS: dict[str, int] = {}


def test_fuzz_xc_reader_against_reference(tmp_path):
    rng = np.random.default_rng(SEED)
    failures, damaged, harmless = [], 0, 0
    for case in range(400):
        if case % 20 == 0:  # a new valid file every 20 cases
            base = _small_xc(rng, tmp_path)
        bad = mutate(base, rng)
        if rng.random() < 0.05:
            bad = BOM + bad
        p = tmp_path / f"c{case}.txt"
        p.write_bytes(bad)
        try:
            ref = ref_xc(bad)
        except Rejected:
            ref = None
        try:
            got = read_xc(p)
        except DataFormatError as exc:
            assert str(exc).startswith(str(p)) and "\n" not in str(exc), exc
            got = None
        except Exception as exc:  # noqa: BLE001 - a traceback: the failure this test looks for
            failures.append(f"case {case}: {type(exc).__name__}: {exc} for {bad[:80]!r}")
            continue
        if ref is None:
            damaged += 1
            if got is not None:
                failures.append(f"case {case}: damaged file accepted: {bad[:120]!r}")
        else:
            harmless += 1
            if got is None:
                failures.append(f"case {case}: valid file rejected: {bad[:120]!r}")
            elif not (_same(got[0], ref[0]) and _same(got[1], ref[1])):
                failures.append(f"case {case}: result differs from the reference: {bad[:120]!r}")
        p.unlink()
    COUNTS["xc"] = damaged
    assert not failures, "\n".join(failures[:20])
    assert damaged >= 250 and harmless >= 20  # both kinds exercised


def test_fuzz_xc_compressed_truncations(tmp_path):
    """Every truncation of a gzip/bz2/xz stream is an error naming the file (never a partial X)."""
    import bz2
    import gzip
    import lzma

    rng = np.random.default_rng(SEED + 1)
    raw = _small_xc(rng, tmp_path)
    n = 0
    for comp in (gzip.compress, bz2.compress, lzma.compress):
        z = comp(raw)
        for cut in sorted(set(rng.integers(1, len(z) - 1, 15).tolist())):
            p = tmp_path / "z"
            p.write_bytes(z[:cut])
            with pytest.raises(DataFormatError, match=re.escape(str(p))):
                read_xc(p)
            n += 1
    COUNTS["xc-compressed"] = n


MULAN_XML = b'<?xml version="1.0" encoding="utf-8"?>\n<labels xmlns="http://mulan.sourceforge.net/labels">\n' \
            b'<label name="l0"></label>\n<label name="l1"></label>\n<label name="l2"></label>\n</labels>\n'


def _mulan_arff(rng) -> bytes:
    f = int(rng.integers(2, 6))
    head = "@relation r\n" + "".join(f"@attribute f{i} numeric\n" for i in range(f)) + \
        "".join(f"@attribute l{i} {{0,1}}\n" for i in range(3)) + "@data\n"
    rows = []
    for _ in range(int(rng.integers(2, 7))):
        if rng.random() < 0.5:
            ent = [f"{j} {round(float(rng.random()), 3)}" for j in range(f) if rng.random() < 0.5]
            ent += [f"{f + j} 1" for j in range(3) if rng.random() < 0.4]
            rows.append("{" + ",".join(ent) + "}")
        else:
            rows.append(",".join([str(round(float(rng.random()), 3)) for _ in range(f)] +
                                 [str(int(rng.random() < 0.4)) for _ in range(3)]))
    return (head + "\n".join(rows) + "\n").encode()


HMC_HEAD = ("@RELATION h\n@ATTRIBUTE a0 numeric\n@ATTRIBUTE a1 numeric\n@ATTRIBUTE a2 numeric\n"
            "@ATTRIBUTE class hierarchical 01,01/01,01/02,02,02/01\n@DATA\n")


def _hmc_arff(rng) -> bytes:
    classes = ["01", "01/01", "01/02", "02", "02/01"]
    rows = []
    for _ in range(int(rng.integers(2, 7))):
        vals = [("?" if rng.random() < 0.1 else str(round(float(rng.normal()), 3))) for _ in range(3)]
        cls = "@".join(sorted(set(rng.choice(classes, int(rng.integers(1, 3))).tolist())))
        rows.append(",".join(vals + [cls]))
    return (HMC_HEAD + "\n".join(rows) + "\n").encode()


def _check_arff_result(X, Y, allow_nan: bool) -> str | None:
    X = X.toarray() if sp.issparse(X) else np.asarray(X)
    if X.shape[0] != Y.shape[0]:
        return f"X has {X.shape[0]} rows, Y {Y.shape[0]}"
    if np.isinf(X).any() or (not allow_nan and np.isnan(X).any()):
        return "non-finite feature value accepted"
    if Y.nnz and not np.all(Y.data == 1):
        return "non-binary label"
    return None


def _fuzz_arff(tmp_path, make, read, allow_nan, seed, n_cases, key):
    rng = np.random.default_rng(seed)
    failures, known, damaged = [], [], 0
    for case in range(n_cases):
        bad = mutate(make(rng), rng)
        p = tmp_path / f"c{case}.arff"
        p.write_bytes(bad)
        try:
            out = read(p)
        except DataFormatError as exc:
            assert str(p) in str(exc) or ".xml" in str(exc), exc
            damaged += 1
            continue
        except Exception as exc:  # noqa: BLE001
            failures.append(f"case {case}: {type(exc).__name__}: {exc} for {bad[:100]!r}")
            continue
        problem = _check_arff_result(out[0], out[1], allow_nan)
        if problem == "non-finite feature value accepted":
            known.append(f"case {case}: {problem}: {bad[:100]!r}")
        elif problem:
            failures.append(f"case {case}: {problem}: {bad[:100]!r}")
    COUNTS[key] = damaged
    return failures, known


def test_fuzz_mulan_arff(tmp_path):
    (tmp_path / "m.xml").write_bytes(MULAN_XML)
    failures, known = _fuzz_arff(tmp_path, _mulan_arff, lambda p: read_mulan_arff(p, tmp_path / "m.xml"),
                                 False, SEED + 2, 150, "mulan")
    assert not failures, "\n".join(failures[:20])
    if known:  # nan/inf values in ARFF: the reader's strictness is issue 10 item 6 (another change)
        pytest.xfail(f"{len(known)} ARFF files with nan/inf accepted, e.g. {known[0]}")


def test_fuzz_hmc_arff(tmp_path):
    def read(p):
        X, Y, names, parents = read_hmc_arff(p)
        return X, Y

    failures, known = _fuzz_arff(tmp_path, _hmc_arff, read, True, SEED + 3, 150, "hmc")
    assert not failures, "\n".join(failures[:20])
    if known:
        pytest.xfail(f"{len(known)} Clus-HMC files with inf accepted, e.g. {known[0]}")


# -- the model-directory loader ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from xhyp.training import train

    d = tmp_path_factory.mktemp("fuzzmodel")
    rng = np.random.default_rng(0)
    X = sp.random(40, 12, density=0.3, format="csr", random_state=0, dtype=np.float32)
    Y = sp.csr_matrix((rng.random((40, 4)) < 0.4).astype(np.float32))
    write_xc(d / "q.txt", X[:10], Y[:10])
    train(X, Y, {"dim": 3}, {"epochs": 1, "negatives": 3, "val_fraction": 0.0, "threads": 1, "knn": 3,
                             "features": "tfidf"}, out_dir=d / "m", progress=False)
    return d


WRONG_FILES = {"model.pt": b'{"not": "weights"}', "config.json": b'{"model": []}',
               "train_labels.npz": b"PK\x05\x06" + b"\x00" * 18, "features.npz": b"\x93NUMPY\x01\x00",
               "train_emb.pt": b"\x80\x02}q\x00."}


def test_fuzz_model_directory_loader(model_dir, tmp_path):
    from xhyp import modeldir
    from xhyp.modeldir import ModelDirError
    from xhyp.prediction import Predictor

    rng = np.random.default_rng(SEED + 4)
    names = list(modeldir.MODEL_FILES)
    Xq, _ = read_xc(model_dir / "q.txt")
    failures, refused, resealed_ok = [], 0, 0
    for case in range(160):
        d = tmp_path / f"m{case}"
        shutil.copytree(model_dir / "m", d)
        name = names[int(rng.integers(len(names)))]
        raw = (d / name).read_bytes()
        bad = WRONG_FILES.get(name, b"[]") if rng.random() < 0.15 else mutate(raw, rng)
        if bad == raw:
            shutil.rmtree(d)
            continue
        (d / name).write_bytes(bad)
        reseal = case % 2 == 1
        if reseal:
            modeldir.write_manifest(d, "resealed")
        try:
            pred = Predictor.load(d)
        except ModelDirError as exc:
            refused += 1
            if f"{d}" not in str(exc) or "\n" in str(exc):
                failures.append(f"case {case}: message does not name the file: {exc}")
        except Exception as exc:  # noqa: BLE001
            failures.append(f"case {case} ({name}, resealed={reseal}): {type(exc).__name__}: {exc}")
        else:
            if not reseal:
                failures.append(f"case {case}: a changed {name} passed the manifest")
            else:  # harmless damage under a forged manifest: the predictor must still be sound
                S = pred.predict(Xq, top_k=3)
                if S.shape != (10, 4) or not np.isfinite(S.data).all():
                    failures.append(f"case {case}: resealed {name} loads but predicts {S.shape}")
                resealed_ok += 1
        shutil.rmtree(d)
    COUNTS["model-dir"] = refused
    assert not failures, "\n".join(failures[:20])
    assert refused >= 100


def test_fuzz_cli_predict_exit_codes_and_no_partial_output(model_dir, tmp_path, capsys):
    from xhyp.cli import main

    rng = np.random.default_rng(SEED + 5)
    n = 0
    for case in range(24):
        d = tmp_path / f"m{case}"
        shutil.copytree(model_dir / "m", d)
        name = list(WRONG_FILES)[case % len(WRONG_FILES)]
        (d / name).write_bytes(mutate((d / name).read_bytes(), rng) if case % 2 else WRONG_FILES[name])
        out = tmp_path / f"s{case}.npz"
        rc = main(["predict", "--model", str(d), "--file", str(model_dir / "q.txt"), "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2 and err.startswith("xhyp: error: ") and err.count("\n") == 1 and str(d) in err, err
        assert not out.exists() and not list(tmp_path.glob(".*.tmp"))
        n += 1
    COUNTS["cli"] = n


def test_fuzz_total_damaged_inputs():
    """The issue's target: at least 500 damaged inputs over all the fuzz tests above."""
    if len(COUNTS) < 6:
        pytest.skip("runs after the other fuzz tests of this module")
    assert sum(COUNTS.values()) >= 500, COUNTS


def test_fuzz_report(capsys):
    """Prints the damaged-input counts (visible with ``-s``)."""
    with capsys.disabled():
        print(f"\nfuzz damaged inputs: {COUNTS} total {sum(COUNTS.values())}")
