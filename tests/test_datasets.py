"""xhyp.datasets: file formats (XC text, Mulan and Clus-HMC ARFF), registry, synthetic data."""
import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from xhyp.datasets import formats, registry
from xhyp.datasets.formats import DataFormatError, read_hmc_arff, read_mulan_arff, read_xc, write_xc
from xhyp.embedding.features import FeaturePipeline
from xhyp.datasets.loading import load_dataset
from xhyp.datasets.registry import DatasetNotFoundError, dataset_info, get_spec, resolve_data_dir
from xhyp.datasets.synthetic import make_hierarchical, make_like


def assert_same(A, B):
    """Same shape, structure and bit-identical float32 values."""
    A, B = sp.csr_matrix(A), sp.csr_matrix(B)
    assert A.shape == B.shape and A.dtype == B.dtype == np.float32
    np.testing.assert_array_equal(A.indptr, B.indptr)
    np.testing.assert_array_equal(A.indices, B.indices)
    np.testing.assert_array_equal(A.data.view(np.uint32), B.data.view(np.uint32))


def canonical(M):
    return sp.isspmatrix_csr(M) and M.has_sorted_indices and M.has_canonical_format


# ------------------------------------------------------------------------------------------
# XC text format
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,n_train,n_test,F,L,lab_per_point", [
    ("bibtex", 4880, 2515, 1836, 159, 2.40), ("delicious", 12920, 3185, 500, 983, 19.02)])
def test_read_xc_real_data(shared_data_dir, name, n_train, n_test, F, L, lab_per_point):
    Xtr, Ytr = read_xc(shared_data_dir / name / "train.txt")
    Xte, Yte = read_xc(shared_data_dir / name / "test.txt")
    assert Xtr.shape == (n_train, F) and Ytr.shape == (n_train, L)
    assert Xte.shape == (n_test, F) and Yte.shape == (n_test, L)
    for M in (Xtr, Ytr, Xte, Yte):
        assert M.dtype == np.float32 and canonical(M)
    assert np.all(Ytr.data == 1) and np.all(Xtr.data == 1)  # both sets have binary features
    assert (Ytr.sum() + Yte.sum()) / (n_train + n_test) == pytest.approx(lab_per_point, abs=0.01)  # README
    if name == "delicious":  # README: 10 train and 4 test rows have no label
        assert (Ytr.getnnz(axis=1) == 0).sum() == 10 and (Yte.getnnz(axis=1) == 0).sum() == 4


def test_write_read_round_trip_random(tmp_path):
    rng = np.random.default_rng(0)
    X = sp.random(300, 50, density=0.1, format="csr", random_state=1, dtype=np.float64)
    # values across magnitudes, signs, integers, tiny and huge ones
    X.data = (rng.standard_normal(X.nnz) * 10.0 ** rng.integers(-12, 12, X.nnz)).astype(np.float32)
    X.data[:20] = np.round(X.data[:20])
    X.data[20:25] = [1e-30, 3.4e38, -1e-8, 0.1, 123456789]
    X = (sp.diags((np.arange(300) != 5).astype(np.float32)) @ X).tocsr()  # row 5 empty
    X.eliminate_zeros()
    X.sort_indices()
    Y = sp.random(300, 17, density=0.15, format="csr", random_state=2)
    Y.data[:] = 1
    Y = (sp.diags((np.arange(300) != 7).astype(np.float64)) @ Y).tocsr()  # point 7 without labels
    Y.eliminate_zeros()
    Y.sort_indices()
    path = tmp_path / "rt.txt"
    write_xc(path, X, Y)
    X2, Y2 = read_xc(path)
    assert_same(X2, X.astype(np.float32))
    assert_same(Y2, Y.astype(np.float32))
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


def test_round_trip_any_float32(tmp_path):
    """Random bit patterns: every finite float32 (subnormals, extremes, -0.0) survives."""
    bits = np.random.default_rng(5).integers(0, 2**32, 30000, dtype=np.uint64).astype(np.uint32)
    vals = bits.view(np.float32)
    vals = vals[np.isfinite(vals)][:20000]
    X = sp.csr_matrix((vals, np.tile(np.arange(20), 1000), np.arange(0, 20001, 20)), shape=(1000, 20))
    write_xc(tmp_path / "f.txt", X, sp.csr_matrix((1000, 3), dtype=np.float32))
    assert_same(read_xc(tmp_path / "f.txt")[0], X)


def test_round_trip_real_file_and_block_boundaries(shared_data_dir, tmp_path, monkeypatch):
    X, Y = read_xc(shared_data_dir / "delicious" / "test.txt")
    write_xc(tmp_path / "d.txt", X, Y)
    monkeypatch.setattr(formats, "_BLOCK", 997)  # many blocks, lines cut at odd places
    monkeypatch.setattr(formats._Column, "FIRST", 3)  # the columns grow many times
    X2, Y2 = read_xc(tmp_path / "d.txt")
    assert_same(X2, X)
    assert_same(Y2, Y)


def test_read_xc_accepts_variants(tmp_path):
    p = tmp_path / "v.txt"
    # CRLF, tabs, no label field without leading space, exponents, signs, '5.', '.5',
    # labels only, unsorted ids, trailing blank lines, no final newline on the last data line
    p.write_bytes(b"6 10 4\r\n3,1 7:2.5e-3\t2:-1.5\r\n 0:1E+2 9:.5\n4:5. 1:+0.25\n2,0\n\n1 3:0.1 4:0.2")
    X, Y = read_xc(p)
    assert X.shape == (6, 10) and Y.shape == (6, 4) and canonical(X) and canonical(Y)
    expect = np.zeros((6, 10), np.float32)
    expect[0, [2, 7]] = [-1.5, 2.5e-3]
    expect[1, [0, 9]] = [100, 0.5]
    expect[2, [1, 4]] = [0.25, 5]
    expect[5, [3, 4]] = [0.1, 0.2]
    np.testing.assert_array_equal(X.toarray(), expect)
    assert [list(r.indices) for r in Y] == [[1, 3], [], [], [0, 2], [], [1]]
    p.write_text("1 2 2\n1 0:1\n\n \n")  # blank lines after the declared points are ignored
    assert read_xc(p)[0].shape == (1, 2)


def test_read_xc_common_forms_take_the_vectorised_path(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(formats, "_parse_xc_line", lambda *a: calls.append(a))
    p = tmp_path / "f.txt"
    p.write_text("3 9 3\n0,2 0:1 1:0.25 2:-1.5 3:.5 4:7. 5:1e-05 6:-2.5E+3 7:+3 8:0.000012\n 4:1\n1\n")
    X, Y = read_xc(p)
    assert calls == []
    np.testing.assert_array_equal(X.toarray()[0], np.array([1, 0.25, -1.5, 0.5, 7, 1e-5, -2500, 3, 1.2e-5], np.float32))
    assert Y.toarray().tolist() == [[1, 0, 1], [0, 0, 0], [0, 1, 0]]


BAD_XC = [
    ("", 1, "missing header"),
    ("2 3\n0 0:1\n1 1:1\n", 1, "bad header"),
    ("2 x 4\n0 0:1\n1 1:1\n", 1, "bad header"),
    ("3 4 2\n0 0:1\n1 1:1\n", 4, "unexpected end of file"),
    ("1 4 2\n0 0:1\n1 1:1\n", 3, "more rows than the 1 points"),
    ("3 4 2\n0 0:1\n0,5 1:1\n1 2:1\n", 3, "label id 5 out of range [0, 2)"),
    ("3 4 2\n0 0:1\n1 2:1\n1 1:1 4:2\n", 4, "feature id 4 out of range [0, 4)"),
    ("3 4 2\n0 0:1\n1 2:abc\n1 1:1\n", 3, "unparsable value 'abc' of feature 2"),
    ("3 4 2\n0 0:1\n1 2:1.5.2\n1 1:1\n", 3, "unparsable value '1.5.2'"),
    ("2 4 2\n0 0:nan\n1 1:1\n", 2, "non-finite value 'nan'"),
    ("2 4 2\n0 0:1e39\n1 1:1\n", 2, "overflows float32"),
    ("3 4 2\n0 0:1\n1 2:1 0:3 2:2\n1 1:1\n", 3, "duplicate feature id 2"),
    ("3 4 2\n0 0:1\n1,0,1 2:1\n1 1:1\n", 3, "duplicate label id 1"),
    ("3 4 2\n0 0:1\n-1 2:1\n1 1:1\n", 3, "negative label id -1"),
    ("3 4 2\n0 0:1\n1 -2:1\n1 1:1\n", 3, "negative feature id -2"),
    ("3 4 2\n0 0:1\n1,,0 2:1\n1 1:1\n", 3, "empty label id"),
    ("3 4 2\n0 0:1\n1 2:\n1 1:1\n", 3, "not of the form id:value"),
    ("3 4 2\n0 0:1\n1 2:1:3\n1 1:1\n", 3, "not of the form id:value"),
    ("3 4 2\n0 0:1\n1 2 1:1\n1 1:1\n", 3, "not of the form id:value"),
    ("3 4 2\n0 0:1\n1 2:1,3:1\n1 1:1\n", 3, "unexpected ','"),
    ("3 4 2\n0 0:1\n1x 2:1\n1 1:1\n", 3, "label id '1x' is not a non-negative integer"),
    ("3 4 2\n0 0:1\n1 2.0:1\n1 1:1\n", 3, "feature id '2.0' is not a non-negative integer"),
    ("3 4 2\n0 0:1\n1 99999999999999999999:1\n1 1:1\n", 3, "feature id 99999999999999999999 out of range"),
]


@pytest.mark.parametrize("content,line,problem", BAD_XC, ids=[b[2] for b in BAD_XC])
def test_read_xc_errors_name_file_and_line(tmp_path, content, line, problem):
    p = tmp_path / "train.txt"
    p.write_text(content)
    with pytest.raises(DataFormatError) as info:
        read_xc(p)
    msg = str(info.value)
    assert msg.startswith(f"{p}:{line}: "), msg
    assert problem in msg, msg
    assert info.value.line == line and info.value.path == str(p)


def test_read_xc_error_line_across_blocks(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    lines = [f"{i % 5} {rng.integers(0, 9)}:{rng.random():.6f}" for i in range(400)]
    lines[310] = "1 3:0.5 12:1"  # feature 12 >= 10, on file line 312
    (tmp_path / "t.txt").write_text("400 10 5\n" + "\n".join(lines) + "\n")
    monkeypatch.setattr(formats, "_BLOCK", 256)
    with pytest.raises(DataFormatError, match=r"t\.txt:312: feature id 12 out of range \[0, 10\)"):
        read_xc(tmp_path / "t.txt")


def test_data_format_error_pickles():
    import pickle

    e = pickle.loads(pickle.dumps(DataFormatError("a.txt", 3, "bad")))
    assert str(e) == "a.txt:3: bad" and e.line == 3


def test_write_xc_is_atomic_and_checks_input(tmp_path, monkeypatch):
    p = tmp_path / "out.txt"
    p.write_text("old")
    with pytest.raises(ValueError, match="binary"):
        write_xc(p, sp.eye(3), 2 * sp.eye(3))
    with pytest.raises(ValueError, match="rows"):
        write_xc(p, sp.eye(3), sp.eye(4))

    def boom(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(formats, "_value_matrix", boom)  # fail halfway through writing
    with pytest.raises(RuntimeError):
        write_xc(p, sp.eye(3), sp.eye(3))
    assert p.read_text() == "old" and list(tmp_path.iterdir()) == [p]


# ------------------------------------------------------------------------------------------
# ARFF
# ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["bibtex", "delicious"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_mulan_arff_equals_xc_text(shared_data_dir, name, split):
    d = shared_data_dir / name
    X, Y = read_mulan_arff(d / f"{name}-{split}.arff", d / f"{name}.xml")
    X2, Y2 = read_xc(d / f"{split}.txt")
    assert_same(X, X2)
    assert_same(Y, Y2)


MINI_XML = """<?xml version="1.0" encoding="utf-8"?>
<labels xmlns="http://mulan.sourceforge.net/labels"><label name="la"></label><label name="l b"></label></labels>
"""
MINI_HEAD = "% comment\n@relation mini\n\n@attribute f0 numeric\n@attribute f1 {0,1}\n" \
            "@attribute la {0,1}\n@attribute 'l b' {0,1}\n@data\n"


def test_mulan_arff_sparse_and_dense_small(tmp_path):
    (tmp_path / "m.xml").write_text(MINI_XML)
    (tmp_path / "s.arff").write_text(MINI_HEAD + "{0 2.5,3 1}\n{}\n{1 1,2 1,3 1}\n")
    (tmp_path / "d.arff").write_text(MINI_HEAD + "2.5,0,0,1\n0,0,0,0\n0,1,1,1\n")
    for f in ("s.arff", "d.arff"):
        X, Y = read_mulan_arff(tmp_path / f, tmp_path / "m.xml")
        np.testing.assert_array_equal(X.toarray(), [[2.5, 0], [0, 0], [0, 1]])
        np.testing.assert_array_equal(Y.toarray(), [[0, 1], [0, 0], [1, 1]])
        assert X.dtype == Y.dtype == np.float32 and canonical(X) and canonical(Y)


@pytest.mark.parametrize("body,line,problem", [
    ("{0 1,3 1}\n{0 1,9 1}\n", 10, "attribute index 9 out of range [0, 4)"),
    ("{0 1,3 2}\n", 9, "label values must be 0 or 1"),
    ("{0 1,0 2}\n", 9, "duplicate attribute index 0"),
    ("1,0,0\n", 9, "dense row has 3 values, expected 4"),
    ("{0 x}\n", 9, "non-numeric value 'x'"),
])
def test_mulan_arff_errors(tmp_path, body, line, problem):
    (tmp_path / "m.xml").write_text(MINI_XML)
    (tmp_path / "a.arff").write_text(MINI_HEAD + body)
    with pytest.raises(DataFormatError) as info:
        read_mulan_arff(tmp_path / "a.arff", tmp_path / "m.xml")
    assert str(info.value).startswith(f"{tmp_path / 'a.arff'}:{line}: ") and problem in str(info.value)


def test_mulan_arff_label_names_must_be_last_attributes(tmp_path):
    (tmp_path / "m.xml").write_text(MINI_XML.replace('"la"', '"f0"'))
    (tmp_path / "a.arff").write_text(MINI_HEAD + "{0 1}\n")
    with pytest.raises(DataFormatError, match=r"a\.arff:6: the last 2 attributes must be the labels.*'la' is not"):
        read_mulan_arff(tmp_path / "a.arff", tmp_path / "m.xml")


def _check_hierarchy(Y, parents):
    L = Y.shape[1]
    edges = [(c, p) for c, ps in enumerate(parents) for p in ps]
    A = sp.csr_matrix((np.ones(len(edges)), ([c for c, _ in edges], [p for _, p in edges])), shape=(L, L))
    n_comp, comp = connected_components(A, directed=True, connection="strong")
    assert n_comp == L  # acyclic: every strongly connected component is a single node
    implied = (Y @ A).toarray() > 0  # parents of present labels
    assert not np.any(implied & (Y.toarray() == 0))  # closed under ancestors


def test_hmc_funcat_tree(shared_data_dir):
    X, Y, names, parents = read_hmc_arff(shared_data_dir / "hmc" / "cellcycle_FUN.train.arff")
    assert X.shape == (1628, 77) and X.dtype == np.float32 and np.isnan(X).any()
    assert Y.shape == (1628, 499) == (len(X), len(names)) and canonical(Y) and np.all(Y.data == 1)
    assert all(len(p) <= 1 for p in parents)  # a tree
    for c, ps in enumerate(parents):
        assert [names[p] for p in ps] == (["/".join(names[c].split("/")[:-1])] if "/" in names[c] else [])
    assert Y.getnnz(axis=1).min() >= 1
    _check_hierarchy(Y, parents)


def test_hmc_go_dag(shared_data_dir):
    X, Y, names, parents = read_hmc_arff(shared_data_dir / "hmc" / "derisi_GO.train.arff")
    assert X.shape == (1605, 63) and Y.shape == (1605, 4119) == (len(X), len(names))
    assert "root" not in names and all(n.startswith("GO") for n in names)
    assert max(len(p) for p in parents) > 1  # a DAG, not a tree
    _check_hierarchy(Y, parents)
    # the same hierarchy in every split
    _, Y2, names2, parents2 = read_hmc_arff(shared_data_dir / "hmc" / "derisi_GO.test.arff")
    assert names2 == names and parents2 == parents


HMC_HEAD = "@RELATION t\n@ATTRIBUTE a numeric\n@ATTRIBUTE b numeric\n@ATTRIBUTE class hierarchical {}\n@DATA\n"


def test_hmc_small_and_errors(tmp_path):
    p = tmp_path / "h.arff"
    p.write_text(HMC_HEAD.format("1,1/2,1/2/3,4") + "0.5,?,1/2/3\n1,2,4@1\n")
    X, Y, names, parents = read_hmc_arff(p)
    assert names == ["1", "1/2", "1/2/3", "4"] and parents == [[], [0], [1], []]
    np.testing.assert_array_equal(X, [[0.5, np.nan], [1, 2]])
    np.testing.assert_array_equal(Y.toarray(), [[1, 1, 1, 0], [1, 0, 0, 1]])
    p.write_text(HMC_HEAD.format("root/a,a/b,b/c,c/a") + "1,2,a\n")
    with pytest.raises(DataFormatError, match=r"h\.arff:4: the class hierarchy has a cycle"):
        read_hmc_arff(p)
    p.write_text(HMC_HEAD.format("root/a,a/b,root/c,c/b") + "1,2,b\n1,2,zz\n")
    with pytest.raises(DataFormatError, match=r"h\.arff:7: class 'zz' is not in the hierarchy"):
        read_hmc_arff(p)
    p.write_text(HMC_HEAD.format("root/a,a/b,root/c,c/b") + "1,2,b\n")
    _, Y, names, parents = read_hmc_arff(p)
    assert names == ["a", "b", "c"] and parents == [[], [0, 2], []] and Y.toarray().tolist() == [[1, 1, 1]]
    p.write_text(HMC_HEAD.format("1") + "1,x,1\n")
    with pytest.raises(DataFormatError, match=r"h\.arff:6: unparsable value 'x' of attribute 'b'"):
        read_hmc_arff(p)


# ------------------------------------------------------------------------------------------
# registry
# ------------------------------------------------------------------------------------------

def test_resolve_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("XHYP_DATA", str(tmp_path))
    assert resolve_data_dir("somewhere") == registry.Path("somewhere")
    assert resolve_data_dir(None) == tmp_path
    monkeypatch.delenv("XHYP_DATA")
    assert resolve_data_dir(None) == registry.Path("data")


def test_specs():
    assert set(registry.DATASETS) >= {"bibtex", "delicious", "wiki10-31k", "delicious-200k", "synthetic-hier"}
    w = get_spec("wiki10-31k")
    assert (w.n_train, w.n_test, w.n_features, w.n_labels) == (14146, 6616, 101938, 30938)
    assert (w.propensity_a, w.propensity_b) == (0.5, 0.4) and w.kind == "remote"
    d = get_spec("delicious-200k")
    assert (d.n_train, d.n_test, d.n_features, d.n_labels) == (196606, 100095, 782585, 205443)
    assert (d.propensity_a, d.propensity_b) == (0.55, 1.5) and "0B3lPMIHmG6vGR3lBWWYyVlhDLWM" in d.download_url
    assert all(s.citation for s in registry.DATASETS.values())
    with pytest.raises(KeyError, match="unknown dataset 'nope'"):
        get_spec("nope")


def test_load_dataset_local(shared_data_dir):
    X, Y = load_dataset("bibtex", "test", data_dir=shared_data_dir)
    assert X.shape == (2515, 1836) and Y.shape == (2515, 159)
    info = dataset_info("delicious", shared_data_dir)
    assert info["present"] and info["n_labels"] == 983
    with pytest.raises(ValueError):
        load_dataset("bibtex", "valid", data_dir=shared_data_dir)


def test_load_dataset_missing_and_mismatch(tmp_path):
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("wiki10-31k", data_dir=tmp_path)
    msg = str(info.value)
    assert str(tmp_path / "wiki10-31k" / "train.txt") in msg
    assert f"xhyp data fetch wiki10-31k --data-dir {tmp_path}" in msg
    assert isinstance(info.value, FileNotFoundError)
    with pytest.raises(DatasetNotFoundError, match="(?s)bibtex/train.txt.*Mulan"):
        load_dataset("bibtex", data_dir=tmp_path)
    (tmp_path / "bibtex").mkdir()
    (tmp_path / "bibtex" / "train.txt").write_text("2 1836 159\n0 0:1\n1 1:1\n")
    with pytest.raises(DataFormatError, match=r"train\.txt:1: header 'N F L' is 2 1836 159 but dataset 'bibtex' "
                                              r"\(train\) has 4880 1836 159"):
        load_dataset("bibtex", data_dir=tmp_path)
    assert not dataset_info("bibtex", tmp_path)["present"]


def test_load_synthetic_needs_no_files(tmp_path):
    X, Y = load_dataset("synthetic-hier", "train", data_dir=tmp_path / "nothing")
    assert X.shape == (3000, 500) and Y.shape == (3000, 100)
    assert dataset_info("synthetic-hier")["present"]


# ------------------------------------------------------------------------------------------
# synthetic data and preprocessing
# ------------------------------------------------------------------------------------------

def _knn_precision(d, k=10):
    pipe = FeaturePipeline("l2")
    Xtr, Xte = pipe.transform(d["X_train"]), pipe.transform(d["X_test"])
    S = (Xte @ Xtr.T).toarray()
    nn = np.argsort(-S, axis=1)[:, :k]
    Ytr, Yte = d["Y_train"].toarray(), d["Y_test"].toarray()
    scores = Ytr[nn].sum(axis=1)
    top = np.argsort(-scores, axis=1, kind="stable")[:, :1]
    return np.take_along_axis(Yte, top, axis=1).mean()


def test_make_hierarchical():
    d = make_hierarchical()
    assert d["X_train"].shape == (3000, 500) and d["X_test"].shape == (1000, 500)
    assert d["Y_train"].shape == (3000, 100) and len(d["parents"]) == 100
    for key in ("X_train", "Y_train", "X_test", "Y_test"):
        assert d[key].dtype == np.float32 and canonical(d[key])
    per_point = d["Y_train"].getnnz(axis=1)
    assert per_point.min() >= 3 and per_point.max() <= 6 and 3.5 < per_point.mean() < 5
    _check_hierarchy(d["Y_train"], [[p] if p >= 0 else [] for p in d["parents"]])
    assert 0.5 < _knn_precision(d) < 0.98
    again, other = make_hierarchical(), make_hierarchical(seed=1)
    assert_same(again["X_train"], d["X_train"])
    assert (other["X_train"] != d["X_train"]).nnz > 0


def test_make_like_shapes_and_densities():
    d = make_like("wiki10-31k", scale=0.02, seed=0)
    spec = get_spec("wiki10-31k")
    assert d["X_train"].shape == (round(0.02 * 14146), 101938) and d["Y_test"].shape == (round(0.02 * 6616), 30938)
    for key in ("X_train", "Y_train", "X_test", "Y_test"):
        assert d[key].dtype == np.float32 and canonical(d[key])
    assert d["X_train"].getnnz(axis=1).mean() == pytest.approx(spec.avg_features, rel=0.1)
    assert d["Y_train"].getnnz(axis=1).mean() == pytest.approx(spec.avg_labels, rel=0.1)
    freq = np.sort(d["Y_train"].getnnz(axis=0))[::-1]
    assert freq[0] > 20 * max(np.median(freq), 1)  # power-law label frequencies: a heavy head
    assert_same(make_like("wiki10-31k", scale=0.02, seed=0)["X_test"], d["X_test"])


def test_feature_pipeline(tmp_path):
    X = sp.csr_matrix(np.array([[1, 0, 2], [0, 0, 0], [3, 3, 0]], dtype=np.float64))
    X32 = sp.csr_matrix(X, dtype=np.float32)
    N = FeaturePipeline("l2").fit(X32).transform(X32)
    assert N.dtype == np.float32
    assert X32[0, 2] == 2  # the caller's matrix is not normalised in place
    np.testing.assert_allclose(np.sqrt(N.multiply(N).sum(axis=1)).A1, [1, 0, 1], rtol=1e-6)
    pipe = FeaturePipeline("tfidf").fit(X)
    pipe.save(tmp_path / "f.npz")
    Xte = FeaturePipeline.load(tmp_path / "f.npz").transform(sp.csr_matrix([[0, 1, 1]]))
    idf = np.log(4 / np.array([3, 2, 2])) + 1  # smooth idf, df counted on the training rows
    expect = np.array([0, 1, 1]) * idf
    np.testing.assert_allclose(Xte.toarray()[0], expect / np.linalg.norm(expect), rtol=1e-6)
    with pytest.raises(ValueError, match="features"):
        pipe.transform(sp.csr_matrix((1, 4)))
    with pytest.raises(ValueError):
        FeaturePipeline("bm25")


# -- XC text: compressed files, byte order marks, messages that stay short (issue 10, item 7) --------------

def _xc_bytes(tmp_path, n=30, seed=0):
    X = sp.random(n, 10, density=0.3, format="csr", random_state=seed, dtype=np.float32)
    Y = sp.csr_matrix((np.random.default_rng(seed).random((n, 5)) < 0.4).astype(np.float32))
    write_xc(tmp_path / "plain.txt", X, Y)
    return X, Y, (tmp_path / "plain.txt").read_bytes()


@pytest.mark.parametrize("codec", ["gzip", "bz2", "lzma"])
def test_read_xc_compressed_by_magic_bytes(tmp_path, codec):
    import importlib

    X, Y, raw = _xc_bytes(tmp_path)
    p = tmp_path / "data.txt"  # the name says nothing: the first bytes do
    p.write_bytes(importlib.import_module(codec).compress(raw))
    X2, Y2 = read_xc(p)
    assert (X2 != X).nnz == 0 and (Y2 != Y).nnz == 0
    p.write_bytes(importlib.import_module(codec).compress(raw)[:-20])
    name = {"lzma": "xz"}.get(codec, codec)
    with pytest.raises(DataFormatError, match=rf"data\.txt: damaged {name} stream"):
        read_xc(p)


def test_read_xc_skips_a_utf8_bom_and_names_utf16(tmp_path):
    X, Y, raw = _xc_bytes(tmp_path)
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + raw)
    X2, _ = read_xc(tmp_path / "bom.txt")
    assert (X2 != X).nnz == 0
    (tmp_path / "u16.txt").write_bytes(raw.decode().encode("utf-16"))
    with pytest.raises(DataFormatError, match="u16.txt:1: the file is UTF-16 text"):
        read_xc(tmp_path / "u16.txt")


def test_read_xc_messages_do_not_dump_the_input(tmp_path):
    _, _, raw = _xc_bytes(tmp_path)
    (tmp_path / "nohead.txt").write_bytes(raw.split(b"\n", 1)[1] * 5)  # header missing: a long data line first
    with pytest.raises(DataFormatError) as info:
        read_xc(tmp_path / "nohead.txt")
    assert "nohead.txt:1: bad header" in str(info.value) and len(str(info.value)) < len(str(tmp_path)) + 220
    (tmp_path / "bin.dat").write_bytes(bytes(range(256)) * 8)
    with pytest.raises(DataFormatError, match="bin.dat:1: binary data") as info:
        read_xc(tmp_path / "bin.dat")
    assert len(str(info.value)) < len(str(tmp_path)) + 200
    import zipfile

    with zipfile.ZipFile(tmp_path / "a.zip", "w") as z:
        z.writestr("train.txt", raw)
    with pytest.raises(DataFormatError, match="a.zip: is a zip archive"):
        read_xc(tmp_path / "a.zip")
    (tmp_path / "huge.txt").write_text("1 99999999999999999999999 5\n0 1:1\n")
    with pytest.raises(DataFormatError, match="huge.txt:1: header value .* too large"):
        read_xc(tmp_path / "huge.txt")
    line = "0 " + " ".join(f"{i}:x" for i in range(500))
    (tmp_path / "long.txt").write_text(f"1 600 1\n{line}\n")
    with pytest.raises(DataFormatError) as info:
        read_xc(tmp_path / "long.txt")
    assert len(str(info.value)) < len(str(tmp_path)) + 200
