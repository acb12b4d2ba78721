"""Hierarchical multi-label classification: ARFF reading, registry sets, hierarchy, losses,
metrics (hand-computed cases), the three methods, and the CLI."""
import json
import math
import urllib.error

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from xhyp.embedding import manifold
from xhyp.datasets import loading, registry
from xhyp.datasets.formats import DataFormatError, read_hmc_arff, read_mulan_arff
from xhyp import metrics as M
from xhyp.datasets.hmc import Hierarchy, load_hmc, preprocess_dense
from xhyp.hmc.losses import (MaxConstraintPlan, cooccurrence_pairs, himulcon_loss, hyperboloid_dist, max_constraint,
                             max_constraint_loss, overlap_weights, poincare_label_loss, sample_negatives,
                             weighted_supcon_loss)
from xhyp.hmc.models import descendant_pairs, to_poincare

# -- ARFF -------------------------------------------------------------------------------------

NOMINAL = ("@RELATION t\n@ATTRIBUTE a numeric\n@ATTRIBUTE s {w, 'c'}\n@ATTRIBUTE b REAL\n"
           "@ATTRIBUTE class hierarchical 1,1/2,3\n@DATA\n")


def test_hmc_nominal_attributes_one_hot(tmp_path):
    p = tmp_path / "n.arff"
    p.write_text(NOMINAL + "0.5,w,1,1/2\n1,'c',?,3 % a comment\n2,?,3,1\n")
    X, Y, names, parents = read_hmc_arff(p)
    np.testing.assert_array_equal(X, [[0.5, 1, 0, 1], [1, 0, 1, np.nan], [2, 0, 0, 3]])  # missing nominal: zeros
    assert names == ["1", "1/2", "3"] and Y.toarray().tolist() == [[1, 1, 0], [0, 0, 1], [1, 0, 0]]
    p.write_text(NOMINAL + "0.5,w,1,1\n0.5,x,1,1\n")
    with pytest.raises(DataFormatError, match=r"n\.arff:8: value 'x' of nominal attribute 's' is not one of"):
        read_hmc_arff(p)
    p.write_text(NOMINAL.replace("{w, 'c'}", "string") + "0.5,w,1,1\n")
    with pytest.raises(DataFormatError, match=r"n\.arff:3: attribute 's' has type 'string'"):
        read_hmc_arff(p)


@pytest.mark.parametrize("value", ["nan", "inf", "-Infinity", "1e39"])
def test_hmc_refuses_non_finite(tmp_path, value):
    p = tmp_path / "h.arff"
    p.write_text("@RELATION t\n@ATTRIBUTE a numeric\n@ATTRIBUTE b numeric\n@ATTRIBUTE class hierarchical 1\n@DATA\n"
                 f"1,2,1\n1,{value},1\n")
    with pytest.raises(DataFormatError, match=r"h\.arff:7: .*(non-finite value .* of attribute 'b'|of attribute 'b' overflows)"):
        read_hmc_arff(p)


MULAN_XML = ('<?xml version="1.0" encoding="utf-8"?>\n<labels xmlns="http://mulan.sourceforge.net/labels">'
             '{}</labels>\n')
MULAN_HEAD = ("@relation m\n@attribute w1 {0,1}\n@attribute w2 numeric\n@attribute TAG_a {0,1}\n"
              "@attribute TAG_b {0,1}\n@attribute TAG_c {0,1}\n@data\n")


def _xml(*names):
    return MULAN_XML.format("".join(f'<label name="{n}"></label>' for n in names))


@pytest.mark.parametrize("row", ["{1 nan,2 1}", "{1 inf}", "0,nan,1,0,0", "0,-inf,1,0,0", "{1 1e40}"])
def test_mulan_refuses_non_finite(tmp_path, row):
    (tmp_path / "m.xml").write_text(_xml("TAG_a", "TAG_b", "TAG_c"))
    (tmp_path / "a.arff").write_text(MULAN_HEAD + "{0 1,2 1}\n" + row + "\n")
    with pytest.raises(DataFormatError, match=r"a\.arff:9: .*(non-finite|overflows)"):
        read_mulan_arff(tmp_path / "a.arff", tmp_path / "m.xml")


def test_mulan_xml_and_header_must_agree(tmp_path):
    (tmp_path / "a.arff").write_text(MULAN_HEAD + "{0 1,2 1}\n")
    (tmp_path / "m.xml").write_text(_xml("TAG_b", "TAG_c"))  # omits the first label
    with pytest.raises(DataFormatError, match=r"a\.arff:4: attribute 'TAG_a' looks like a label .* does not name"):
        read_mulan_arff(tmp_path / "a.arff", tmp_path / "m.xml")
    (tmp_path / "m.xml").write_text(_xml("TAG_a", "TAG_b", "TAG_c", "TAG_d"))  # a label the ARFF lacks
    with pytest.raises(DataFormatError, match=r"m\.xml: label 'TAG_d' of the XML label list is not an attribute"):
        read_mulan_arff(tmp_path / "a.arff", tmp_path / "m.xml")
    (tmp_path / "m.xml").write_text(_xml("TAG_a", "TAG_b", "TAG_c"))
    X, Y = read_mulan_arff(tmp_path / "a.arff", tmp_path / "m.xml")
    assert X.shape == (1, 2) and Y.toarray().tolist() == [[1, 0, 0]]


def test_mulan_bibtex_with_first_label_omitted(shared_data_dir, tmp_path):
    d = shared_data_dir / "bibtex"
    text = (d / "bibtex.xml").read_text()
    first = text.index("<label ")
    (tmp_path / "b.xml").write_text(text[:first] + text[text.index("</label>", first) + len("</label>"):])
    with pytest.raises(DataFormatError, match=r"bibtex-test\.arff:1839: attribute 'TAG_2005' looks like a label"):
        read_mulan_arff(d / "bibtex-test.arff", tmp_path / "b.xml")


# -- registry ---------------------------------------------------------------------------------

@pytest.mark.parametrize("name,shapes,n_eval,from_train", [
    ("cellcycle_FUN", (1628, 848, 1281, 77, 499), 499, False),
    ("derisi_GO", (1605, 842, 1272, 63, 4119), 4116, False),
    ("Enron_corr", (790, 198, 660, 1001, 56), 56, True),
    ("ImCLEF07D", (8000, 2000, 1006, 80, 46), 46, True),
])
def test_registry_hmc_sets(shared_data_dir, name, shapes, n_eval, from_train):
    d = load_hmc(name, shared_data_dir)
    got = (d.X_train.shape[0], d.X_val.shape[0], d.X_test.shape[0], d.X_train.shape[1], d.Y_train.shape[1])
    assert got == shapes and len(d.eval_labels) == n_eval and d.val_from_train == from_train
    for X in (d.X_train, d.X_val, d.X_test):
        assert X.dtype == np.float32 and np.isfinite(X).all()
    np.testing.assert_allclose(d.X_train.mean(0), 0, atol=1e-4)
    sd = d.X_train.std(0)
    assert np.all((np.abs(sd - 1) < 1e-3) | (sd == 0))
    assert all(d.hierarchy.is_closed(Y) for Y in (d.Y_train, d.Y_val, d.Y_test))
    X, Y = loading.load_dataset(name, "test", shared_data_dir)  # the generic loader gives the same test split
    assert sp.issparse(X) and np.allclose(X.toarray(), d.X_test) and (Y != d.Y_test).nnz == 0


def test_rcv1_offline_message(tmp_path, monkeypatch):
    import sklearn.datasets

    def offline(**kw):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(sklearn.datasets, "fetch_rcv1", offline)
    for call in (lambda: loading.load_dataset("rcv1", "train", tmp_path), lambda: registry.fetch("rcv1", tmp_path)):
        with pytest.raises(registry.DatasetNotFoundError) as info:
            call()
        msg = str(info.value)
        assert "'rcv1' is not in" in msg and "could not be downloaded" in msg and "fetch_rcv1" in msg
        assert "name resolution" in msg and str(tmp_path / "rcv1") in msg


def test_preprocess_dense_by_hand():
    tr = np.array([[1.0, np.nan, 5], [3.0, 2.0, 5]])
    te = np.array([[np.nan, 4.0, 7]])
    a, b = preprocess_dense(tr, te)
    # column 0: mean 2, std 1; column 1: NaN -> 2 (train mean), std 0 -> scale 1; column 2: constant
    np.testing.assert_allclose(a, [[-1, 0, 0], [1, 0, 0]])
    np.testing.assert_allclose(b, [[0, 2, 2]])


# -- hierarchy --------------------------------------------------------------------------------

def test_hierarchy_dag_by_hand():
    #   0     1
    #   |\   /
    #   2  3        4 child of 2 and 3; 5 child of 4
    #    \ /
    #     4 - 5
    h = Hierarchy(list("abcdef"), [[], [], [0], [0, 1], [2, 3], [4]])
    assert [sorted(a) for a in h.ancestors()] == [[], [], [0], [0, 1], [0, 1, 2, 3], [0, 1, 2, 3, 4]]
    assert h.depth().tolist() == [1, 1, 2, 2, 3, 4]
    assert [lv.tolist() for lv in h.levels()] == [[0, 1], [2, 3], [4], [5]]
    assert h.ancestor_matrix().toarray()[4].tolist() == [1, 1, 1, 1, 0, 0]
    assert h.is_closed([[1, 1, 1, 1, 1, 0]]) and not h.is_closed([[1, 0, 1, 1, 1, 0]])
    assert Hierarchy.from_dict(json.loads(json.dumps(h.to_dict()))).parents == h.parents
    with pytest.raises(ValueError):
        Hierarchy(["a", "b"], [[1], [0]]).depth()


# -- losses -----------------------------------------------------------------------------------

def test_cooccurrence_and_negatives():
    Y = sp.csr_matrix(np.array([[1, 1, 0, 0, 0], [0, 1, 1, 0, 0], [0, 0, 0, 1, 0]]))
    pairs, C = cooccurrence_pairs(Y)
    assert pairs.tolist() == [[0, 1], [1, 2]]
    rng = np.random.default_rng(0)
    u = np.array([0, 1, 2, 3] * 50)
    neg = sample_negatives(u, C, 5, rng)
    dense = C.toarray()
    assert neg.shape == (200, 5) and not dense[u[:, None], neg].any() and not (neg == u[:, None]).any()


def test_poincare_label_loss_float64_reference():
    g = torch.Generator().manual_seed(0)
    E = manifold.project(torch.randn(7, 3, generator=g, dtype=torch.float64) * 0.6)
    E[0] = E[0] / E[0].norm() * 0.999  # near the boundary
    pairs = torch.tensor([[0, 1], [2, 3], [4, 0]])
    negs = torch.tensor([[5, 6], [0, 6], [1, 2]])

    def d(x, y):
        x, y = x.tolist(), y.tolist()
        sq = sum((a - b) ** 2 for a, b in zip(x, y))
        return math.acosh(1 + 2 * sq / ((1 - sum(a * a for a in x)) * (1 - sum(b * b for b in y))))

    want = 0.0
    for (u, v), ns in zip(pairs.tolist(), negs.tolist()):
        num = math.exp(-d(E[u], E[v]))
        want += -math.log(num / (num + sum(math.exp(-d(E[u], E[n])) for n in ns)))
    assert poincare_label_loss(E, pairs, negs).item() == pytest.approx(want / 3, rel=1e-9)


def test_hyperboloid_dist_float64_reference():
    g = torch.Generator().manual_seed(2)
    u = torch.randn(40, 5, generator=g, dtype=torch.float64) * torch.logspace(-3, 3, 40, dtype=torch.float64)[:, None]
    v = torch.randn(40, 5, generator=g, dtype=torch.float64) * 2
    v[0] = u[0] * (1 + 1e-6)  # a very close pair far from the origin
    v[1] = u[1]  # identical points: distance ~0
    got = hyperboloid_dist(u, v)
    for i in range(40):
        a, b = u[i].tolist(), v[i].tolist()
        au, av = math.sqrt(1 + sum(x * x for x in a)), math.sqrt(1 + sum(x * x for x in b))
        x = [t / (1 + au) for t in a]
        y = [t / (1 + av) for t in b]
        s = sum((p - q) ** 2 for p, q in zip(x, y)) * (1 + au) * (1 + av) / 4
        want = 2 * math.asinh(math.sqrt(s))
        if i > 1:  # the Lorentz form arccosh(a_u a_v - <u, v>) agrees where it does not cancel
            assert want == pytest.approx(math.acosh(au * av - sum(p * q for p, q in zip(a, b))), rel=1e-6)
        assert got[i].item() == pytest.approx(want, rel=1e-9, abs=1e-12)
    small = u[10:20]  # moderate norms: the same as the Poincaré distance of the ball points
    np.testing.assert_allclose(hyperboloid_dist(small, v[10:20]), manifold.dist(to_poincare(small), to_poincare(v[10:20])),
                               rtol=1e-7)
    assert torch.all(to_poincare(u).norm(dim=1) < 1)
    E = torch.randn(6, 3, dtype=torch.float64, requires_grad=True)
    loss = poincare_label_loss(E, torch.tensor([[0, 1], [2, 3]]), torch.tensor([[4, 5], [5, 0]]), coords="hyperboloid")
    ball = poincare_label_loss(to_poincare(E), torch.tensor([[0, 1], [2, 3]]), torch.tensor([[4, 5], [5, 0]]))
    assert loss.item() == pytest.approx(ball.item(), rel=1e-7)
    loss.backward()
    E2 = E.detach().clone().requires_grad_(True)  # the same gradient through the ball path (anchor 5 repeats)
    poincare_label_loss(to_poincare(E2), torch.tensor([[0, 1], [2, 3]]), torch.tensor([[4, 5], [5, 0]])).backward()
    torch.testing.assert_close(E.grad, E2.grad, rtol=1e-7, atol=1e-12)
    assert E.grad.abs().min() > 0
    with pytest.raises(ValueError, match="coords"):
        poincare_label_loss(E, torch.tensor([[0, 1]]), torch.tensor([[4]]), coords="klein")


def _dag():
    #   0     1
    #   |\   /
    #   2  3        4 child of 2 and 3; 5 child of 4
    #    \ /
    #     4 - 5
    return Hierarchy(list("abcdef"), [[], [], [0], [0, 1], [2, 3], [4]])


def test_max_constraint_and_loss_float64_reference():
    h = _dag()
    closure = torch.from_numpy(descendant_pairs(h))
    desc = [{d for d in range(6) if a in h.ancestors()[d]} for a in range(6)]
    assert desc == [{2, 3, 4, 5}, {3, 4, 5}, {4, 5}, {4, 5}, {5}, set()]
    rng = np.random.default_rng(4)
    S = torch.tensor(rng.normal(size=(7, 6)) * 3, requires_grad=True)
    Y = np.zeros((7, 6))
    for i, leaf in enumerate([5, 4, 2, 3, 1, 0, 5]):
        Y[i, [leaf, *h.ancestors()[leaf]]] = 1
    Y[6] = 0  # an example without labels
    out = max_constraint(S, closure)
    for i in range(7):
        for a in range(6):
            assert out[i, a].item() == max(S[i, j].item() for j in {a} | desc[a])
    # MCLoss as C-HMCNN writes it, on probabilities: (1 - y) MCM(p) + y MCM(y p), then BCE
    p = 1 / (1 + np.exp(-S.detach().numpy()))
    want = 0.0
    cols = [1, 2, 3, 4, 5]
    for i in range(7):
        for a in cols:
            reach = [a, *desc[a]]
            q = max(p[i, j] for j in reach) if Y[i, a] == 0 else max(Y[i, j] * p[i, j] for j in reach)
            want += -(Y[i, a] * math.log(q) + (1 - Y[i, a]) * math.log(1 - q))
    got = max_constraint_loss(S, torch.tensor(Y), closure, torch.tensor(cols))
    assert got.item() == pytest.approx(want / (7 * len(cols)), rel=1e-9)
    got.backward()
    assert torch.isfinite(S.grad).all() and S.grad.abs().sum() > 0
    # no hierarchy: plain BCE with logits
    plain = max_constraint_loss(S, torch.tensor(Y), torch.zeros((2, 0), dtype=torch.long))
    assert plain.item() == pytest.approx(torch.nn.functional.binary_cross_entropy_with_logits(S, torch.tensor(Y)).item())


def _random_dag(rng, n=40):
    """A random DAG: node i's parents are drawn among 0..i-1 (several roots, multiple parents)."""
    parents = [[] if i < 3 else sorted(set(rng.choice(i, size=int(rng.integers(1, 4)), replace=True).tolist()))
               for i in range(n)]
    return Hierarchy([f"n{i}" for i in range(n)], parents)


@pytest.mark.parametrize("levels", [3, 1000])  # many ties, almost none
def test_max_constraint_plan_float64_reference_values_and_gradient(levels):
    """The level-by-level MCM against the definition on the closure, ties included: the value is
    the max over the label and its descendants; the gradient of an output goes to the label
    itself when it attains the max, else to the largest descendant id attaining it."""
    rng = np.random.default_rng(levels)
    h = _random_dag(rng)
    closure = torch.from_numpy(descendant_pairs(h))
    plan = MaxConstraintPlan(closure, len(h))
    desc = [{d for d in range(len(h)) if a in h.ancestors()[d]} for a in range(len(h))]
    direct = {(a, d) for d in range(len(h)) for a in desc_parents(h, d)}
    assert len(plan) == len(direct) < closure.shape[1]
    S = torch.tensor(rng.integers(0, levels, size=(9, len(h))).astype(np.float64), requires_grad=True)
    W = torch.tensor(rng.normal(size=(9, len(h))))
    out = max_constraint(S, plan)
    (out * W).sum().backward()
    want_grad = np.zeros((9, len(h)))
    v = S.detach().numpy()
    for i in range(9):
        for a in range(len(h)):
            m = max(v[i, j] for j in {a} | desc[a])
            assert out[i, a].item() == m
            win = a if v[i, a] == m else max(j for j in desc[a] if v[i, j] == m)
            want_grad[i, win] += W[i, a].item()
    np.testing.assert_array_equal(S.grad.numpy(), want_grad)
    # the pairs path (a plan built on the call) and the no-grad path give the same values
    torch.testing.assert_close(max_constraint(S.detach(), closure), out.detach(), rtol=0, atol=0)
    Y = torch.tensor((rng.random((9, len(h))) < 0.3).astype(np.float64))
    assert max_constraint_loss(S, Y, plan).item() == max_constraint_loss(S, Y, closure).item()


def desc_parents(h, d):
    """Direct parents of ``d`` that are not also ancestors of another parent (the transitive reduction)."""
    anc = h.ancestors()
    return [p for p in h.parents[d] if not any(p in anc[q] for q in h.parents[d])]


def test_max_constraint_plan_refuses_bad_closures():
    with pytest.raises(ValueError, match="cycle"):
        MaxConstraintPlan(torch.tensor([[0, 1], [1, 0]]), 2)
    with pytest.raises(ValueError, match=r"in \[0, 2\)"):
        MaxConstraintPlan(torch.tensor([[0], [2]]), 2)
    with pytest.raises(ValueError, match="ancestor != descendant"):
        MaxConstraintPlan(torch.tensor([[1], [1]]), 2)
    assert len(MaxConstraintPlan(torch.zeros((2, 0), dtype=torch.long), 3).levels) == 0


def test_overlap_weights_and_weighted_supcon():
    Y = sp.csr_matrix(np.array([[1, 1, 0], [0, 1, 1], [0, 0, 0], [1, 1, 0]]))
    W = overlap_weights(Y)
    np.testing.assert_allclose(W, [[1, 1 / 3, 0, 1], [1 / 3, 1, 0, 1 / 3], [0, 0, 0, 0], [1, 1 / 3, 0, 1]])
    z = torch.tensor(np.random.default_rng(5).normal(size=(4, 3)), requires_grad=True)
    got = weighted_supcon_loss(z, torch.from_numpy(W), 0.5)
    assert got.item() == pytest.approx(_naive_supcon(z.detach().numpy(), W, 0.5), rel=1e-9)
    assert got.item() == pytest.approx(himulcon_loss(z, torch.tensor(Y.toarray()), None, "hmce", 0.5).item(), rel=1e-12)
    assert weighted_supcon_loss(z[:1], torch.ones(1, 1)).item() == 0.0


def _naive_supcon(z, W, tau):
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    B, losses = len(z), []
    for i in range(B):
        den = sum(math.exp(z[i] @ z[a] / tau) for a in range(B) if a != i)
        w = [W[i][j] if j != i else 0.0 for j in range(B)]
        if sum(w) == 0:
            continue
        losses.append(-sum(w[j] * (z[i] @ z[j] / tau - math.log(den)) for j in range(B)) / sum(w))
    return float(np.mean(losses)) if losses else 0.0


def test_himulcon_float64_reference():
    rng = np.random.default_rng(1)
    h = Hierarchy(list("abcdefg"), [[], [], [0], [0], [1], [2], [3]])  # depths 1,1,2,2,2,3,3
    levels = h.levels()
    z = rng.normal(size=(6, 4))
    Y = np.zeros((6, 7))
    for i, leaf in enumerate([5, 5, 6, 4, 2, 1]):
        Y[i, [leaf, *h.ancestors()[leaf]]] = 1
    per_level = []  # from the deepest level up
    for cols in reversed(levels):
        Yl = Y[:, cols]
        per_level.append(_naive_supcon(z, (Yl @ Yl.T > 0).astype(float), 0.2))
    D = len(levels)
    want_hmc = sum(2 ** (1 / (l + 1)) * v for l, v in enumerate(per_level)) / D
    constrained = np.maximum.accumulate(per_level)
    want_hmce = sum(2 ** (1 / (l + 1)) * v for l, v in enumerate(constrained)) / D
    zt, Yt = torch.tensor(z, requires_grad=True), torch.tensor(Y)
    got = himulcon_loss(zt, Yt, levels, "hmc", 0.2)
    assert got.item() == pytest.approx(want_hmc, rel=1e-9)
    assert himulcon_loss(zt, Yt, levels, "hmce", 0.2).item() == pytest.approx(want_hmce, rel=1e-9)
    assert want_hmce > want_hmc  # the constraint is active on this input
    got.backward()
    assert torch.isfinite(zt.grad).all() and zt.grad.abs().sum() > 0
    # no hierarchy: Jaccard-weighted positives
    inter = Y @ Y.T
    n = Y.sum(1)
    jac = inter / (n[:, None] + n[None, :] - inter)
    assert himulcon_loss(zt, Yt, None, "hmce", 0.2).item() == pytest.approx(_naive_supcon(z, jac, 0.2), rel=1e-9)
    assert himulcon_loss(zt, Yt, levels, "none").item() == 0.0
    with pytest.raises(ValueError, match="contrastive kind"):
        himulcon_loss(zt, Yt, levels, "supcon")


# -- metrics (hand-computed) ------------------------------------------------------------------

def test_hierarchy_reconstruction_by_hand():
    # 1-D Euclidean points; ancestors: node 2 -> {0, 1}, node 3 -> {0}
    emb = np.array([[0.0], [1.0], [1.5], [2.9]])
    anc = [set(), set(), {0, 1}, {0}]
    r = M.hierarchy_reconstruction(emb, anc, "euclidean")
    # node 2: distances 0:1.5, 1:0.5, 3:1.4 -> ancestor 1 rank 1, ancestor 0 rank 2 (node 3 closer);
    #   AP = mean(1/1, 2/3). node 3: distances 0:2.9, 1:1.9, 2:1.4 -> ancestor 0 rank 3; AP = 1/3
    assert r["mean_rank"] == pytest.approx((1 + 2 + 3) / 3)
    assert r["map"] == pytest.approx(((1 + 2 / 3) / 2 + 1 / 3) / 2)
    assert (r["n_nodes"], r["n_pairs"]) == (2, 3)
    # Poincaré: on a line through the origin d(a, b) = |2 artanh(a) - 2 artanh(b)|
    line = np.array([[0.0], [0.3], [0.5], [0.7]])
    q = M.hierarchy_reconstruction(line, [set(), {0}, {0, 1}, {2}])
    # node1: d to 0 = 2artanh(.3)=.619, to 2 = 2artanh(.5)-.619=.480, to 3 = 1.733-.619=1.114 -> rank 2
    # node2: ancestors 0 (1.099), 1 (.480); non-ancestor 3 (.635) -> ranks 2, 1; AP = mean(1, 2/3)
    # node3: ancestor 2 (.635) vs 0 (1.733), 1 (1.114) -> rank 1; AP = 1
    assert q["mean_rank"] == pytest.approx((2 + 2 + 1 + 1) / 4)
    assert q["map"] == pytest.approx((1 / 2 + (1 + 2 / 3) / 2 + 1) / 3)
    with pytest.raises(ValueError, match="inside the unit ball"):
        M.hierarchy_reconstruction(np.array([[1.0], [0.0]]), [set(), {0}])


def test_norm_depth_spearman_by_hand():
    emb = np.array([[0.1, 0], [0, 0.2], [0.5, 0], [0, 0.4]])
    assert M.norm_depth_spearman(emb, [1, 2, 4, 3]) == pytest.approx(1.0)
    # norms rank 1,2,4,3 vs depth 1,1,2,2 (ranks 1.5,1.5,3.5,3.5): rho = 0.8944
    assert M.norm_depth_spearman(emb, [1, 1, 2, 2]) == pytest.approx(2 / math.sqrt(5))
    assert math.isnan(M.norm_depth_spearman(emb, [1, 1, 1, 1]))


def test_choose_threshold_and_hmc_evaluate_by_hand():
    Y = np.array([[1, 0, 1], [0, 1, 0]])
    P = np.array([[0.9, 0.35, 0.3], [0.2, 0.6, 0.1]])
    # 3 positives. t=0.1: 6 predicted, 3 TP -> F1 = 6/9; t=0.2: 5 predicted -> 6/8; t=0.3: 4 predicted
    # (0.9, 0.35, 0.3, 0.6) -> 6/7; t=0.35: 2 TP of 3 predicted -> 4/6; t=0.5: 2 TP of 2 -> 4/5; t=0.7: 2/4
    t, f = M.choose_threshold(Y, P, grid=[0.1, 0.2, 0.3, 0.35, 0.5, 0.7])
    assert t == pytest.approx(0.3) and f == pytest.approx(6 / 7)
    m = M.hmc_evaluate(Y, P, threshold=0.5, ks=(1, 2))
    # at 0.5: predictions (0,0) and (1,1): TP 2, FN 1 -> micro 4/5; per label F1: 1, 1, 0 -> macro 2/3
    assert m["micro_f1"] == pytest.approx(0.8) and m["macro_f1"] == pytest.approx(2 / 3)
    # top-2: row 0 -> labels 0 (hit), 1; row 1 -> labels 1 (hit), 0: P@1 = 1, P@2 = 1/2
    assert m["P@1"] == 1.0 and m["P@2"] == pytest.approx(0.5)
    from sklearn.metrics import average_precision_score

    assert m["au_prc"] == pytest.approx(average_precision_score(Y.ravel(), P.ravel()))
    # by hand: ranked 0.9(+) 0.6(+) 0.35(-) 0.3(+) 0.2 0.1 -> AP = (1 + 1 + 3/4) / 3
    assert m["au_prc"] == pytest.approx((1 + 1 + 0.75) / 3)
    assert M.hmc_evaluate(Y, P, 0.5, labels=[0])["au_prc"] == pytest.approx(1.0)


# -- methods ----------------------------------------------------------------------------------

def _toy(n=240, seed=0):
    """Two-level tree (2 roots x 2 children); features = noisy one-hot of the leaf."""
    rng = np.random.default_rng(seed)
    h = Hierarchy(["a", "b", "a/1", "a/2", "b/1", "b/2"], [[], [], [0], [0], [1], [1]])
    leaf = rng.integers(2, 6, n)
    Y = np.zeros((n, 6), np.float32)
    Y[np.arange(n), leaf] = 1
    Y[np.arange(n), [h.parents[lf][0] for lf in leaf]] = 1
    X = (np.eye(6)[leaf] * 2 + rng.normal(size=(n, 6)) * 0.5).astype(np.float32)
    return X, sp.csr_matrix(Y), h


@pytest.mark.parametrize("method,contrastive,score", [("flat", "none", "dot"), ("cascaded", "hmce", "dot"),
                                                      ("joint", "hmc", "dot"), ("cascaded", "none", "unit"),
                                                      ("joint", "none", "unit")])
def test_methods_learn_and_save(tmp_path, method, contrastive, score):
    from xhyp.hmc.train import train_hmc
    from xhyp.prediction import Predictor

    X, Y, h = _toy()
    r = train_hmc(X[:160], Y[:160], X[160:], Y[160:], {"method": method, "dim": 4, "hidden": 16, "dropout": 0.0,
                                                       "label_score": score},
                  {"epochs": 30, "batch_size": 32, "lr": 1e-2, "pretrain_epochs": 300, "pair_batch": 64,
                   "lr_labels": 3e-2, "contrastive": contrastive, "patience": 30, "threads": 1}, hierarchy=h, out_dir=tmp_path / "m")
    assert r.best_val_au_prc > 0.85  # a separable toy problem (label frequencies alone: about 0.4)
    if method != "flat":
        assert torch.all(r.model.poincare_embeddings().detach().norm(dim=1) < 1)
    P = r.model.predict_proba(X[160:])  # coherent: a parent never below its children
    for child, ps in enumerate(h.parents):
        for p in ps:
            assert np.all(P[:, p] >= P[:, child])
    p = Predictor.load(tmp_path / "m")  # dispatches to the HMC predictor (label gains restored too)
    S = p.predict(X[160:])
    assert S.shape == (80, 6) and np.allclose(S.toarray(), r.model.predict_proba(X[160:]), atol=1e-6)
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["kind"] == "xhyp-hmc" and cfg["model"]["method"] == method and cfg["train"]["contrastive"] == contrastive
    assert cfg["model"]["label_score"] == score and hasattr(r.model, "label_gain") == (score == "unit")
    assert not (tmp_path / "m" / "checkpoint.pt").exists() and (tmp_path / "m" / "hierarchy.json").is_file()


def test_cascaded_keeps_label_embeddings_fixed():
    from xhyp.hmc.train import train_hmc

    X, Y, h = _toy()
    seen = {}
    import xhyp.hmc.train as T

    orig = T._val_au_prc

    def spy(model, *a):
        seen.setdefault("E", []).append(model.label_vectors.detach().clone())
        return orig(model, *a)

    T._val_au_prc = spy
    try:
        train_hmc(X[:160], Y[:160], X[160:], Y[160:], {"method": "cascaded", "dim": 3, "hidden": 8},
                  {"epochs": 3, "pretrain_epochs": 2, "patience": 10, "threads": 1})
    finally:
        T._val_au_prc = orig
    assert all(torch.equal(seen["E"][0], e) for e in seen["E"][1:]) and seen["E"][0].abs().sum() > 0


@pytest.mark.parametrize("label_lr", [0.0, 0.05])
def test_label_lr_is_the_label_vectors_step(label_lr):
    from xhyp.hmc.models import HMCModelConfig
    from xhyp.hmc.train import HMCTrainConfig, _Fit

    X, Y, h = _toy(n=64)
    mcfg = HMCModelConfig(method="joint", n_features=6, n_labels=6, dim=4, hidden=8, dropout=0.0)
    tcfg = HMCTrainConfig(batch_size=64, lr=1e-3, label_lr=label_lr, weight_decay=0.0, pair_batch=32)
    fit = _Fit(mcfg, tcfg, X, Y, h, None, np.random.default_rng(0))
    E0, W0 = fit.model.label_vectors.detach().clone(), fit.model.encoder[0].weight.detach().clone()
    fit.epoch()  # one Adam step: every entry moves by about its learning rate (first step: lr * sign(grad))
    dE = (fit.model.label_vectors.detach() - E0).abs().max().item()
    dW = (fit.model.encoder[0].weight.detach() - W0).abs().max().item()
    assert dE == pytest.approx(label_lr or 1e-3, rel=1e-3) and dW == pytest.approx(1e-3, rel=1e-3)
    assert len(fit.opt.param_groups) == (2 if label_lr else 1)
    with pytest.raises(ValueError, match="label_lr"):
        HMCTrainConfig(label_lr=-1.0)


def test_unit_label_score_float64_reference():
    """``label_score="unit"``: logits ``g_l h . e_l / |e_l| + b_l`` (float64, against numpy), unchanged
    when a label vector is rescaled, and the gains learn (also beside cascaded's fixed vectors)."""
    from xhyp.hmc.models import HMCModel, HMCModelConfig

    torch.manual_seed(0)
    cfg = HMCModelConfig(method="joint", n_features=7, n_labels=5, dim=4, hidden=6, dropout=0.0, label_score="unit")
    m = HMCModel(cfg).double()
    with torch.no_grad():
        m.label_vectors.mul_(torch.tensor([1e-6, 0.1, 1.0, 30.0, 1e4], dtype=torch.float64).unsqueeze(1))
        m.label_gain.copy_(torch.tensor([0.5, 1.0, -2.0, 3.0, 0.1], dtype=torch.float64))
        m.bias.copy_(torch.randn(5, dtype=torch.float64))
    x = torch.randn(9, 7, dtype=torch.float64)
    logits, h = m(x)
    E, g, b, H = (t.detach().numpy() for t in (m.label_vectors, m.label_gain, m.bias, h))
    ref = g * (H @ E.T) / np.linalg.norm(E, axis=1) + b
    assert np.allclose(logits.detach().numpy(), ref, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        m.label_vectors.mul_(torch.tensor([7.0, 0.01, 3.0, 1.0, 2e-3], dtype=torch.float64).unsqueeze(1))
    assert torch.allclose(m(x)[0], logits, rtol=1e-12, atol=1e-12)  # direction only
    dot = HMCModel(HMCModelConfig(method="joint", n_features=7, n_labels=5, dim=4, hidden=6, dropout=0.0)).double()
    dot.load_state_dict({k: v for k, v in m.state_dict().items() if k != "label_gain"})
    assert not hasattr(dot, "label_gain") and torch.allclose(dot(x)[0], x.new_tensor(H) @ m.label_vectors.T + m.bias)
    with pytest.raises(ValueError, match="label_score"):
        HMCModelConfig(n_features=2, n_labels=2, label_score="cosine")
    from xhyp.hmc.train import HMCTrainConfig, _Fit

    X, Y, h = _toy(n=64)
    mc = HMCModelConfig(method="cascaded", n_features=6, n_labels=6, dim=4, hidden=8, dropout=0.0, label_score="unit")
    fit = _Fit(mc, HMCTrainConfig(batch_size=64, lr=1e-2, pretrain_epochs=1), X, Y, h, None, np.random.default_rng(0))
    E0 = fit.model.label_vectors.detach().clone()
    fit.epoch()
    assert torch.equal(fit.model.label_vectors.detach(), E0)
    assert (fit.model.label_gain.detach() - 1.0).abs().min() > 1e-3  # every gain took an Adam step


def test_resume_matches_uninterrupted(tmp_path):
    import xhyp.hmc.train as T

    X, Y, h = _toy()
    args = (X[:160], Y[:160], X[160:], Y[160:], {"method": "joint", "dim": 3, "hidden": 8},
            {"epochs": 4, "patience": 10, "batch_size": 40, "threads": 1})
    full = T.train_hmc(*args, hierarchy=h, out_dir=tmp_path / "a")
    orig, calls = T._val_au_prc, []

    def interrupt(*a):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return orig(*a)

    T._val_au_prc = interrupt
    try:
        with pytest.raises(KeyboardInterrupt):
            T.train_hmc(*args, hierarchy=h, out_dir=tmp_path / "b")
    finally:
        T._val_au_prc = orig
    assert (tmp_path / "b" / "checkpoint.pt").is_file()
    with pytest.raises(ValueError, match=r"different settings \(\['lr'\]\)"):
        T.train_hmc(*args[:5], {**args[5], "lr": 0.5}, hierarchy=h, out_dir=tmp_path / "b", resume=True)
    res = T.train_hmc(*args, hierarchy=h, out_dir=tmp_path / "b", resume=True)
    assert len(res.history) == len(full.history) == 4
    assert [e["val_au_prc"] for e in res.history] == pytest.approx([e["val_au_prc"] for e in full.history])
    for k, v in full.model.state_dict().items():
        assert torch.allclose(v, res.model.state_dict()[k], atol=1e-5)


# -- CLI --------------------------------------------------------------------------------------

def _tiny_registry(tmp_path, monkeypatch):
    X, Y, h = _toy(n=90)
    names = h.names
    head = "@RELATION toy\n" + "".join(f"@ATTRIBUTE f{j} numeric\n" for j in range(6)) + \
        "@ATTRIBUTE class hierarchical " + ",".join(names) + "\n@DATA\n"
    (tmp_path / "hmc").mkdir()
    for split, rows in (("train", range(0, 50)), ("valid", range(50, 70)), ("test", range(70, 90))):
        body = "".join(",".join(f"{v:.4f}" for v in X[i]) + "," + "@".join(names[j] for j in Y[i].indices) + "\n"
                       for i in rows)
        (tmp_path / "hmc" / f"toy.{split}.arff").write_text(head + body)
    spec = registry.DatasetSpec("toy_hmc", "local", 50, 20, 6, 6, files=("hmc/toy.train.arff", "hmc/toy.test.arff"),
                                fmt="hmc-arff", valid_file="hmc/toy.valid.arff", n_valid=20)
    monkeypatch.setitem(registry.DATASETS, "toy_hmc", spec)


def test_cli_train_predict_evaluate_ensemble(tmp_path, monkeypatch, capsys):
    from xhyp.cli import main

    _tiny_registry(tmp_path, monkeypatch)
    from xhyp.hmc import settings

    monkeypatch.setitem(settings.DATASET_SETTINGS, "toy_hmc", {"cascaded": {"model": {"label_score": "unit"}}})
    d = ["--dataset", "toy_hmc", "--data-dir", str(tmp_path)]
    common = ["--epochs", "3", "--dim", "4", "--hidden", "8", "--no-progress", "--pretrain-epochs", "2", "--threads", "1"]
    assert main(["train", "--method", "cascaded", *d, "--out", str(tmp_path / "m"), *common,
                 "--contrastive", "hmce"]) == 0
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["train"]["contrastive"] == "hmce" and cfg["model"]["label_score"] == "unit"  # the set's cascaded setting
    assert main(["predict", "--model", str(tmp_path / "m"), *d, "--out", str(tmp_path / "p.npz")]) == 0
    assert sp.load_npz(tmp_path / "p.npz").shape == (20, 6)
    assert main(["evaluate", "--pred", str(tmp_path / "p.npz"), *d, "--out", str(tmp_path / "e.json")]) == 0
    e = json.loads((tmp_path / "e.json").read_text())
    thr = json.loads((tmp_path / "m" / "config.json").read_text())["threshold"]
    assert {"au_prc", "micro_f1", "macro_f1", "P@1"} <= set(e) and e["threshold"] == pytest.approx(thr)
    assert main(["ensemble", "--method", "joint", *d, "--out", str(tmp_path / "ens"), "-M", "2", *common]) == 0
    assert main(["predict", "--model", str(tmp_path / "ens"), *d, "--out", str(tmp_path / "pe.npz")]) == 0
    assert json.loads((tmp_path / "ens" / "learner_00" / "config.json").read_text())["model"]["label_score"] == "dot"
    from xhyp.hmc.train import HMCPredictor

    mean = sum(HMCPredictor.load(tmp_path / "ens" / f"learner_0{i}").predict(
        loading.load_dataset("toy_hmc", "test", tmp_path)[0]).toarray() for i in range(2)) / 2
    assert np.allclose(sp.load_npz(tmp_path / "pe.npz").toarray(), mean, atol=1e-6)
    assert main(["run", "--method", "flat", *d, "--out", str(tmp_path / "r"), *common]) == 0
    assert main(["train", "--method", "joint", *d, "--out", str(tmp_path / "u"), *common, "--label-score", "unit"]) == 0
    assert json.loads((tmp_path / "u" / "config.json").read_text())["model"]["label_score"] == "unit"
    assert "au_prc" in json.loads((tmp_path / "r" / "metrics.json").read_text())["metrics"]
    capsys.readouterr()
    assert main(["train", "--method", "flat", *d, "--out", str(tmp_path / "x"), "--knn", "5"]) == 2
    assert "--knn apply only to --method xmc" in capsys.readouterr().err


def test_au_prc_fast_equals_sklearn():
    from sklearn.metrics import average_precision_score

    rng = np.random.default_rng(3)
    for decimals in (1, 6):  # many ties, few ties
        T = rng.random((40, 25)) < 0.2
        S = np.round(rng.random((40, 25)), decimals)
        assert M.au_prc_fast(T, S) == pytest.approx(average_precision_score(T.ravel(), S.ravel()), abs=1e-12)
    assert M.au_prc_fast(np.zeros((2, 2)), np.ones((2, 2))) == 0.0


def test_hmc_table_summary_and_targets():
    from xhyp.eval import hmc_table as H

    def rec(ds, m, seed, au, mp):
        return {"dataset": ds, "method": m, "contrastive": "none", "seed": seed, "train_seconds": 1.0,
                "best_epoch": 3, "test": {"au_prc": au, "micro_f1": 0.5, "macro_f1": 0.1, "micro_f1@0.5": 0.4,
                                          "P@1": 0.9}, "faithfulness": {"map": mp, "mean_rank": 2.0,
                                                                        "spearman_norm_depth": 0.3}}

    recs = [rec("Enron_corr", "flat", 0, 0.70, 0.1), rec("Enron_corr", "flat", 1, 0.72, 0.1),
            rec("Enron_corr", "joint", 0, 0.76, 0.5), rec("Enron_corr", "cascaded", 0, 0.6, 0.6)]
    s = H.summarise(recs)
    assert s["Enron_corr"]["flat"]["none"]["au_prc"] == pytest.approx([0.71, 0.01, 2])
    tg = H.targets(s)
    assert tg["joint_beats_flat_au_prc"] == {"Enron_corr": True} and tg["joint_reaches_chmcnn"] == {"Enron_corr": True}
    assert tg["joint_map_above_cascaded"] == {"Enron_corr": False} and not tg["met"]["beats_on_3_of_4"]
    md = H.markdown(s, tg, {"command": "x", "seeds": [0, 1], "runs_done": 4, "runs_asked": 4, "sum_train_seconds": 4,
                            "model": {}, "train": {}})
    assert "| Enron_corr | flat | none | 2 | 71.00 ± 1.00 |" in md


# -- the contrastive term in the XMC trainer --------------------------------------------------

def _xmc_toy(n=120, seed=0):
    rng = np.random.default_rng(seed)
    Y = sp.csr_matrix((rng.random((n, 8)) < 0.25).astype(np.float32))
    X = sp.csr_matrix(((rng.random((n, 24)) < 0.2) | (np.repeat(Y.toarray(), 3, 1) > 0)).astype(np.float32))
    return X, Y


def test_xmc_contrastive_term_is_added_to_the_batch_loss():
    from xhyp.config import ModelConfig, TrainConfig
    from xhyp.embedding.model import HyperbolicXMC
    from xhyp.training.batches import NegativeSampler, prepare_batch
    from xhyp.training.loss import batch_loss

    X, Y = _xmc_toy()
    cfg = TrainConfig(contrastive="hmce", contrastive_weight=0.5, temperature=0.2, input_dropout=0.0)
    gen = torch.Generator().manual_seed(0)
    rows = np.arange(0, 40)
    b = prepare_batch(X, Y, rows, NegativeSampler(np.ones(8), "uniform", gen), cfg, gen)
    np.testing.assert_allclose(b.pair_w.numpy(), overlap_weights(Y[rows]), rtol=1e-6)
    torch.manual_seed(0)
    model = HyperbolicXMC(ModelConfig(n_features=24, n_labels=8, dim=4, init_std_labels=0.1, init_std_projector=0.1))
    r = model(b.idx, b.off, b.w)
    with_term = batch_loss(model, r, b, 3.0, sparse=False)
    want_term = weighted_supcon_loss(r, torch.from_numpy(overlap_weights(Y[rows])), 0.2)
    b.pair_w = None
    assert (with_term - batch_loss(model, r, b, 3.0, sparse=False)).item() == pytest.approx(0.5 * want_term.item(), rel=1e-5)
    assert want_term.item() > 0
    off = prepare_batch(X, Y, rows, NegativeSampler(np.ones(8), "uniform", gen), TrainConfig(), gen)
    assert off.pair_w is None  # contrastive="none" (the default): nothing computed
    with pytest.raises(ValueError, match="contrastive"):
        TrainConfig(contrastive="supcon")


def test_xmc_cli_train_with_contrastive(tmp_path):
    from xhyp.cli import main
    from xhyp.datasets.formats import write_xc

    X, Y = _xmc_toy()
    write_xc(tmp_path / "train.txt", X, Y)
    flags = ["--file", str(tmp_path / "train.txt"), "--no-progress", "--dim", "4", "--epochs", "2", "--threads", "1"]
    assert main(["train", *flags, "--out", str(tmp_path / "a"), "--contrastive", "hmce", "--contrastive-weight", "0.3"]) == 0
    assert main(["train", *flags, "--out", str(tmp_path / "b")]) == 0
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())["train"]
    assert (cfg["contrastive"], cfg["contrastive_weight"]) == ("hmce", 0.3)
    loss = [json.loads((tmp_path / d / "history.json").read_text())[0]["loss"] for d in "ab"]
    assert loss[0] != pytest.approx(loss[1])  # the same seed and batches: only the term differs


def test_label_pair_sampler_graded_and_disjoint():
    from xhyp.hmc.losses import LabelPairSampler

    h = _dag()
    rng = np.random.default_rng(6)
    leaves = rng.choice([5, 4, 2, 3, 1], size=60)
    Y = np.zeros((60, 6))
    for i, leaf in enumerate(leaves):
        Y[i, [leaf, *h.ancestors()[leaf]]] = 1
    Y[:5, 1] = 1  # some extra co-occurrence
    counts = Y.T @ Y
    g = LabelPairSampler(sp.csr_matrix(Y), 4, "graded")
    for u, v in g.pairs.tolist():  # kept pairs: co-occurring, with a less similar label to draw
        assert u != v and counts[u, v] > 0 and (counts[u] < counts[u, v]).any()
    n_kept = sum((counts[u] < counts[u, v]).any() for u in range(6) for v in range(6) if u != v and counts[u, v] > 0)
    assert len(g) == n_kept
    p, neg = g.draw(500, rng)
    assert neg.shape == (500, 4)
    for (u, v), ns in zip(p.tolist(), neg.tolist()):
        assert all(counts[u, w] < counts[u, v] for w in ns)
    blocks = np.kron(np.eye(4), np.ones((5, 3)))  # 4 groups of 3 labels that never co-occur across groups
    d = LabelPairSampler(sp.csr_matrix(blocks), 3, "disjoint")
    p, neg = d.draw(200, rng)
    assert neg.shape == (200, 3) and len(d) == 4 * 6
    assert all(u // 3 == v // 3 and all(w // 3 != u // 3 for w in ns) for (u, v), ns in zip(p.tolist(), neg.tolist()))
    with pytest.raises(ValueError, match="label negatives"):
        LabelPairSampler(sp.csr_matrix(Y), 3, "random")


def test_refit_trains_on_train_and_validation_for_the_best_epochs(tmp_path):
    from xhyp.hmc.train import train_hmc

    X, Y, h = _toy()
    args = (X[:160], Y[:160], X[160:], Y[160:], {"method": "joint", "dim": 4, "hidden": 16, "dropout": 0.0})
    tc = {"epochs": 6, "batch_size": 32, "lr": 1e-2, "patience": 6, "threads": 1, "pair_batch": 16}
    plain = train_hmc(*args, {**tc, "refit": False}, hierarchy=h)
    refit = train_hmc(*args, {**tc, "refit": True}, hierarchy=h, out_dir=tmp_path / "m")
    assert refit.best_epoch == plain.best_epoch and refit.threshold == plain.threshold  # chosen on validation
    assert not torch.equal(refit.model.encoder[0].weight, plain.model.encoder[0].weight)
    hist = json.loads((tmp_path / "m" / "history.json").read_text())
    assert len(hist["refit_epochs"]) == refit.best_epoch and len(hist["epochs"]) == 6
    assert json.loads((tmp_path / "m" / "train_summary.json").read_text())["refit"] is True


def test_settings_and_tuning_helpers(tmp_path):
    from xhyp.eval import hmc_table as H
    from xhyp.hmc.settings import COMMON, settings_for

    m, t = settings_for("cellcycle_FUN")
    assert t["refit"] is True and m["coherent"] is True and "hidden" in m
    assert settings_for("something_else") == (COMMON["model"], COMMON["train"])
    # per-method entries apply to that method only (the label score, tuning stage 5)
    assert settings_for("derisi_GO", "cascaded")[0]["label_score"] == "unit"
    assert "label_score" not in settings_for("derisi_GO", "flat")[0] and settings_for("derisi_GO", "flat") == \
        settings_for("derisi_GO")
    assert H._settings("ImCLEF07D", "joint", "none", 1, {}, {})[0]["label_score"] == "unit"
    assert H._settings("ImCLEF07D", "joint", "none", 1, {"label_score": "dot"}, {})[0]["label_score"] == "dot"
    jobs = H.tune_jobs(["Enron_corr"], ["joint"], None, tmp_path)
    assert {(j[1], j[2]) for j in jobs} == {("joint", "none"), ("joint", "hmce")}
    casc = H.tune_jobs(["Enron_corr"], ["cascaded"], None, tmp_path)  # only stage 5 (#score) tunes cascaded there
    assert all(j[-1] is True for j in jobs) and [(j[5], j[6]) for j in casc] == \
        [(c.get("model", {}), c.get("train", {})) for c in H.TUNE_CANDIDATES["cascaded#score"]]
    s5 = H.tune_jobs(["Enron_corr"], ["joint", "cascaded"], None, tmp_path, ("none",), ["joint#score"])
    assert len(s5) == len(H.TUNE_CANDIDATES["joint#score"]) and {j[1] for j in s5} == {"joint"}
    go = H.tune_jobs(["Enron_corr", "derisi_GO"], ["joint", "cascaded"], None, tmp_path, ("none",),
                     ["cascaded@derisi_GO", "joint@derisi_GO"])  # stage 4: derisi_GO only, only those keys
    assert {j[0] for j in go} == {"derisi_GO"} and [j[1] for j in go].count("cascaded") == 1
    assert len(go) == 1 + len(H.TUNE_CANDIDATES["joint@derisi_GO"])
    assert len(H.tune_jobs(["derisi_GO"], ["joint"], None, tmp_path, ("none",))) == \
        len(H.TUNE_CANDIDATES["joint"]) + len(H.TUNE_CANDIDATES["joint@derisi_GO"]) + \
        len(H.TUNE_CANDIDATES["joint#score"]) + len(H.TUNE_CANDIDATES["joint@derisi_GO#score"])
    s = {"A": {"joint": {"none": {"au_prc": [0.5, 0, 3], "map": [0.2, 0, 3]},
                         "hmce": {"au_prc": [0.49, 0, 3], "map": [0.3, 0, 3]}}}}
    eff = H.contrastive_effect(s)["A"]["joint"]
    assert eff["au_prc"] == pytest.approx(-1.0) and eff["map"] == pytest.approx(10.0)


def test_hmc_table_hands_out_the_longest_runs_first():
    from xhyp.eval import hmc_table as H

    jobs = [(d, m, c, s) for d in ("Enron_corr", "cellcycle_FUN", "derisi_GO", "new_set") for m in H.METHODS
            for c in ("none", "hmce") for s in (1, 0)]
    jobs.sort(key=H._longest_first)
    assert [j[0] for j in jobs[::12]] == ["new_set", "derisi_GO", "cellcycle_FUN", "Enron_corr"]
    assert jobs[:3] == [("new_set", "cascaded", "hmce", 0), ("new_set", "cascaded", "hmce", 1),
                        ("new_set", "cascaded", "none", 0)]
    assert jobs[-1] == ("Enron_corr", "flat", "none", 1)


def test_hmc_table_run_cache_is_reused_only_with_the_same_settings(tmp_path, monkeypatch, capsys):
    """A cached run record trained with other settings (xhyp.hmc.settings or --model/--train
    changed since) is trained again, not reused; one with the same settings is returned as is."""
    import xhyp.datasets.hmc as DH
    from xhyp.eval import hmc_table as H

    m, t = H._settings("Enron_corr", "joint", "none", 0, {}, {})
    rec = {"dataset": "Enron_corr", "method": "joint", "contrastive": "none", "seed": 0, "model": m, "train": t,
           "val_au_prc": 0.5}
    (tmp_path / "Enron_corr_joint_none_s0.json").write_text(json.dumps(rec))

    def would_train(*a, **k):
        raise RuntimeError("would train")

    monkeypatch.setattr(DH, "load_hmc", would_train)
    assert H.run_one("Enron_corr", "joint", "none", 0, None, {}, {}, tmp_path) == json.loads(json.dumps(rec))
    with pytest.raises(RuntimeError, match="would train"):  # another --model setting: not the cached run
        H.run_one("Enron_corr", "joint", "none", 0, None, {"hidden": 7}, {}, tmp_path)
    assert "cached with other settings" in capsys.readouterr().out
    stale = dict(rec, model=dict(m, label_score="dot" if m.get("label_score") != "dot" else "unit"))
    assert not H.same_settings(stale, m, t) and H.same_settings(json.loads(json.dumps(rec)), m, t)
    # --summarise-only tabulates only the cached runs with the current settings
    t1 = H._settings("Enron_corr", "joint", "none", 1, {}, {})[1]  # seed 1's settings, another label score
    (tmp_path / "Enron_corr_joint_none_s1.json").write_text(json.dumps(dict(stale, seed=1, train=t1)))
    jobs = [("Enron_corr", "joint", "none", s) for s in (0, 1, 2)]
    records, n_stale = H.cached_records(jobs, tmp_path, {}, {})
    assert [r["seed"] for r in records] == [0] and n_stale == 1
