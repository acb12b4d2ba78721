"""The ``ann`` index: ivf_pack / ivf_probe / ivf_knn against float64 references, recall, balance."""
import pytest
import torch

from xhyp.embedding import manifold
from xhyp.knn import extension, kernels, reference
from xhyp.knn.index import AnnIndex, _aug, make_index

needs_ext = pytest.mark.skipif(not extension.ext_available("cpu"), reason="C++ extension not built")


def ball(n, d, gen, rmax=0.95, boundary=0):
    """n points in the ball; the last ``boundary`` ones at |x| in [1 - 1e-5, 1 - 1e-6]."""
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True)
    r = torch.rand(n, 1, generator=gen, dtype=torch.float64) ** (1.0 / d) * rmax
    if boundary:
        r[-boundary:] = 1 - torch.rand(boundary, 1, generator=gen, dtype=torch.float64) * 9e-6 - 1e-6
    return (x * r).float()


def clustered_db(M, d, C, gen, boundary=0):
    """database sorted into C clusters of random (possibly zero) sizes, with ids and offsets."""
    db = ball(M, d, gen, boundary=boundary)
    cut = torch.sort(torch.randint(0, M + 1, (C - 1,), generator=gen)).values
    offsets = torch.cat([torch.tensor([0]), cut, torch.tensor([M])]).long()
    ids = torch.randperm(M, generator=gen)
    return db, ids, offsets


def _assert_matches_ref_ivf_knn(D, I, q, db, ids, offsets, probes, k, geometry):
    """An inverted-file search's ``(D, I)`` against the float64 reference on the same probes: the
    same ids, the same empty slots, distances within float32 rounding."""
    Dr, Ir = reference.ref_ivf_knn(q, db, ids, offsets, probes, k, geometry)
    assert torch.equal(I, Ir)
    fin = torch.isfinite(Dr)
    assert torch.equal(torch.isfinite(D), fin)
    assert torch.allclose(D[fin].double(), Dr[fin], rtol=1e-5, atol=1e-6)


@needs_ext
@pytest.mark.parametrize("d", [1, 17, 50])
@pytest.mark.parametrize("k", [1, 10, 33])
@pytest.mark.parametrize("geometry", ["poincare", "euclidean"])
def test_ivf_knn_matches_float64_reference(d, k, geometry):
    gen = torch.Generator().manual_seed(d * 100 + k)
    M, C, Q, P = 700, 23, 90, 5
    db, ids, offsets = clustered_db(M, d, C, gen, boundary=40 if geometry == "poincare" else 0)
    q = ball(Q, d, gen, boundary=10 if geometry == "poincare" else 0)
    probes = torch.randint(-1, C, (Q, P), generator=gen)
    probes[::7, 1] = probes[::7, 0]  # repeated probes are scanned once
    packed, boff = kernels.ivf_pack(_aug(db, geometry), offsets)
    D, I = kernels.ivf_knn(q, db, packed, boff, ids, offsets, probes, k, geometry)
    _assert_matches_ref_ivf_knn(D, I, q, db, ids, offsets, probes, k, geometry)


@needs_ext
def test_ivf_knn_all_probes_is_exact_search_and_pads():
    gen = torch.Generator().manual_seed(3)
    db, ids, offsets = clustered_db(300, 9, 12, gen, boundary=20)
    q = ball(40, 9, gen)
    packed, boff = kernels.ivf_pack(_aug(db, "poincare"), offsets)
    probes = torch.arange(12).repeat(40, 1)
    D, I = kernels.ivf_knn(q, db, packed, boff, ids, offsets, probes, 7)
    De, Ie = reference.ref_knn(q, db, 7)
    assert torch.equal(I, ids[Ie])  # ids map sorted rows to original ids
    # k > rows of the probed clusters: padded with inf / -1
    D, I = kernels.ivf_knn(q, db, packed, boff, ids, offsets, torch.full((40, 1), -1), 3)
    assert torch.isinf(D).all() and (I == -1).all()
    D, I = kernels.ivf_knn(q, db, packed, boff, ids, offsets, probes[:, :1], 400)
    n0 = int(offsets[1])
    assert (I[:, n0:] == -1).all() and (I[:, :n0] >= 0).all()


@needs_ext
def test_ivf_pack_layout_matches_torch_fallback():
    gen = torch.Generator().manual_seed(4)
    db, _, offsets = clustered_db(200, 5, 9, gen)
    aug = _aug(db, "poincare")
    packed, boff = kernels.ivf_pack(aug, offsets)
    sizes = torch.diff(offsets)
    assert torch.equal(torch.diff(boff), (sizes + 15) // 16)
    for c in range(9):  # row j of cluster c is lane j % 16 of block boff[c] + j // 16
        for j in range(int(sizes[c])):
            assert torch.equal(packed[boff[c] + j // 16, :, j % 16], aug[offsets[c] + j])
    with pytest.raises(RuntimeError, match="must end at"):
        kernels.ivf_pack(aug, torch.tensor([0, 50, 199]))
    with pytest.raises(RuntimeError, match="non-decreasing"):
        kernels.ivf_pack(aug, torch.tensor([0, 120, 50, 200]))


@needs_ext
def test_ivf_knn_rejects_bad_inputs():
    gen = torch.Generator().manual_seed(5)
    db, ids, offsets = clustered_db(100, 4, 5, gen)
    q = ball(3, 4, gen)
    packed, boff = kernels.ivf_pack(_aug(db, "poincare"), offsets)
    with pytest.raises(RuntimeError, match="probes must hold cluster numbers"):
        kernels.ivf_knn(q, db, packed, boff, ids, offsets, torch.tensor([[0], [5], [1]]), 2)
    with pytest.raises(RuntimeError, match="must start at 0"):
        kernels.ivf_knn(q, db, packed, boff, ids, offsets + 1, torch.zeros(3, 1, dtype=torch.long), 2)
    with pytest.raises(RuntimeError, match="dimension"):
        kernels.ivf_knn(ball(3, 5, gen), db, packed, boff, ids, offsets, torch.zeros(3, 1, dtype=torch.long), 2)


@needs_ext
@pytest.mark.parametrize("geometry", ["poincare", "euclidean"])
def test_ivf_probe_picks_the_nearest_centroids(geometry):
    gen = torch.Generator().manual_seed(6)
    cen = ball(37, 17, gen, boundary=5 if geometry == "poincare" else 0)
    q = ball(300, 17, gen)
    P = 6
    pr = kernels.ivf_probe(q, _aug(cen, geometry), P, geometry)
    assert pr.shape == (300, P)
    d = reference.ref_pairwise_dist(q, cen, geometry)
    ref = torch.argsort(d, dim=1, stable=True)[:, :P]
    chosen = torch.gather(d, 1, pr)
    best = torch.gather(d, 1, ref)
    # the float32 bound ranks like the float64 distance up to rounding
    assert torch.allclose(chosen, best, rtol=1e-4, atol=1e-5)
    assert (pr == ref).float().mean() > 0.99
    assert kernels.ivf_probe(q, _aug(cen, geometry), 100, geometry).shape == (300, 37)  # nprobe >= C


def test_ann_index_recall_and_exact_at_full_probe():
    """On clustered synthetic data recall@10 grows with nprobe; nprobe >= C is exact search."""
    gen = torch.Generator().manual_seed(7)
    centres = ball(40, 16, gen, rmax=0.8).double()
    z = torch.randint(0, 40, (4200,), generator=gen)
    pts = manifold.project(centres[z] + 0.05 * torch.randn(4200, 16, generator=gen, dtype=torch.float64)).float()
    db, q = pts[:4000].contiguous(), pts[4000:].contiguous()
    idx = make_index("ann", n_clusters=40, seed=0).add(db)
    De, Ie = make_index("exact").add(db).search(q, 10)

    def recall(I):
        return (I[:, :, None] == Ie[:, None, :]).any(2).float().mean().item()

    C = idx.centroids.shape[0]
    r = [recall(idx.search(q, 10, nprobe=p)[1]) for p in (1, 4, 12)]
    assert r[0] <= r[1] <= r[2] and r[2] > 0.95, r
    D, I = idx.search(q, 10, nprobe=C)
    assert torch.equal(I, Ie)
    assert torch.allclose(D, De, rtol=1e-6, atol=1e-7)


def test_ann_index_balances_big_clusters():
    gen = torch.Generator().manual_seed(8)
    # one dense blob holding most of the points, plus a spread background
    blob = (0.3 + 0.01 * torch.randn(3000, 8, generator=gen, dtype=torch.float64)).float()
    back = ball(1000, 8, gen, rmax=0.9)
    db = torch.cat([blob, back]).contiguous()
    plain = make_index("ann", n_clusters=20, balance=0).add(db)
    bal = make_index("ann", n_clusters=20, balance=1.5).add(db)
    assert bal.cluster_sizes.sum() == 4000 and torch.equal(torch.sort(bal.ids).values, torch.arange(4000))
    assert bal.cluster_sizes.max() <= plain.cluster_sizes.max()
    assert bal.cluster_sizes.max() <= 1.5 * 4000 / 20 * 2  # at most a few rounds short of the cap
    with pytest.raises(ValueError, match="balance"):
        AnnIndex(balance=0.5)


def test_make_index_ann_params():
    with pytest.raises(ValueError, match="does not take"):
        make_index("ann", nlist=3)
    idx = make_index("ann", nprobe=3, n_clusters=4).add(ball(50, 3, torch.Generator().manual_seed(9)))
    D, I = idx.search(ball(5, 3, torch.Generator().manual_seed(10)), 4)
    assert D.shape == (5, 4) and I.shape == (5, 4) and (I >= 0).all()


# ------------------------------------------------------------------------------------------------
# int8 residual codes (ivf_pack8 / ivf_bounds8 / ivf_knn8)


def _t64(q, db, geometry):
    """float64 t = c(y) |x - y|^2 of every query and row."""
    x, y = q.double(), db.double()
    t = ((x[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    return t if geometry == "euclidean" else t / ((1 - y.norm(dim=1)) * (1 + y.norm(dim=1)))[None, :]


def _bounds8_float64(q, blocks, boff, cen, offsets):
    """The documented bound evaluated in float64 from the packed bytes (layout of ivf_pack8):
    C |x - m|^2 + CR - CS s_x <xc, rc> - CF |e_x| - CE |x|, the query coded as the kernel does."""
    import numpy as np

    n = q.shape[1]
    G = (n + 3) // 4
    B = blocks.numpy()
    M = int(offsets[-1])
    rc = np.zeros((M, n))
    cst = np.zeros((M, 5))
    cl = np.zeros(M, dtype=np.int64)
    for c in range(len(offsets) - 1):
        for j in range(int(offsets[c + 1] - offsets[c])):
            b, lane, r = int(boff[c]) + j // 16, j % 16, int(offsets[c]) + j
            rc[r] = [int(B[b, 64 * (i // 4) + 4 * lane + i % 4]) - 128 for i in range(n)]
            cst[r] = np.frombuffer(B[b, 64 * G:].tobytes(), dtype=np.float32).reshape(5, 16)[:, lane]
            cl[r] = c
    x = q.double().numpy()
    sx = np.float32(np.abs(x).max(1) / 127.0).astype(np.float64)
    sx[sx == 0] = 1.0
    v = np.clip(x / sx[:, None], -127, 127)
    xc = np.trunc(v + np.where(v >= 0, 0.5, -0.5))
    ex = np.linalg.norm(x - sx[:, None] * xc, axis=1)
    xn = np.linalg.norm(x, axis=1)
    D = ((x[:, None, :] - cen.double().numpy()[cl][None]) ** 2).sum(-1)
    ip = xc @ rc.T
    L = cst[:, 0] * D + cst[:, 1] - cst[:, 2] * sx[:, None] * ip - cst[:, 3] * ex[:, None] - cst[:, 4] * xn[:, None]
    mag = (np.abs(cst[:, 0] * D) + np.abs(cst[:, 1]) + np.abs(cst[:, 2] * sx[:, None] * ip)
           + cst[:, 3] * ex[:, None] + cst[:, 4] * xn[:, None])
    return torch.from_numpy(L), torch.from_numpy(mag)


@needs_ext
@pytest.mark.parametrize("d", [1, 5, 17, 50, 130])
@pytest.mark.parametrize("geometry", ["poincare", "euclidean"])
def test_ivf_bounds8_are_lower_bounds_float64(d, geometry):
    """Every int8 bound is <= the float64 t (boundary points included), agrees with the documented
    formula evaluated in float64 from the packed bytes, and is tight enough to prune."""
    gen = torch.Generator().manual_seed(30 + d)
    M, C, Q = 300, 11, 25
    db, _, offsets = clustered_db(M, d, C, gen, boundary=25 if geometry == "poincare" else 0)
    q = ball(Q, d, gen, boundary=4 if geometry == "poincare" else 0)
    q[0] = 0.0  # the zero query (scale 1, codes 0)
    db[offsets[3]] = db[offsets[3] + 1] if offsets[4] > offsets[3] + 1 else db[offsets[3]]  # a duplicate row
    cen = ball(C, d, gen, rmax=0.5)
    blocks, boff = kernels.ivf_pack8(db, offsets, cen, geometry)
    assert blocks.dtype == torch.uint8 and blocks.shape == (int(boff[-1]), 64 * ((d + 3) // 4 + 5))
    L = kernels.ivf_bounds8(q, blocks, boff, cen, offsets).double()
    t = _t64(q, db, geometry)
    assert (L <= t).all(), float((L - t).max())
    L64, mag = _bounds8_float64(q, blocks, boff, cen, offsets)
    assert (L64 <= t * (1 + 1e-12)).all()
    assert ((L - L64).abs() <= 1e-5 * mag + 1e-30).all()
    if d >= 5:  # quantisation error of a few % of t on interior points
        interior = (db.norm(dim=1) < 0.99)[None, :] & (t > 1e-3)
        assert ((t - L) / t)[interior].median() < 0.1


@needs_ext
@pytest.mark.parametrize("d", [1, 17, 50])
@pytest.mark.parametrize("k", [1, 10, 33])
@pytest.mark.parametrize("geometry", ["poincare", "euclidean"])
def test_ivf_knn8_matches_float64_reference(d, k, geometry):
    gen = torch.Generator().manual_seed(d * 100 + k + 7)
    M, C, Q, P = 700, 23, 90, 5
    db, ids, offsets = clustered_db(M, d, C, gen, boundary=40 if geometry == "poincare" else 0)
    db[10:14] = db[9]  # duplicate rows: ties broken by the lower id
    q = ball(Q, d, gen, boundary=10 if geometry == "poincare" else 0)
    probes = torch.randint(-1, C, (Q, P), generator=gen)
    probes[::7, 1] = probes[::7, 0]
    cen = ball(C, d, gen, rmax=0.6)
    blocks, boff = kernels.ivf_pack8(db, offsets, cen, geometry)
    D, I = kernels.ivf_knn8(q, db, blocks, boff, cen, ids, offsets, probes, k, geometry)
    _assert_matches_ref_ivf_knn(D, I, q, db, ids, offsets, probes, k, geometry)


@needs_ext
def test_portable_kernels_equal_vectorised(monkeypatch):
    """XHYP_PORTABLE_KERNELS=1 forces the portable (non-AVX-512) code of ivf_probe, ivf_knn,
    ivf_knn8 and ivf_bounds8: the same results, the int8 bounds bit for bit."""
    gen = torch.Generator().manual_seed(31)
    M, C, Q, n = 900, 30, 120, 23
    db, ids, offsets = clustered_db(M, n, C, gen, boundary=30)
    q = ball(Q, n, gen, boundary=5)
    cen = ball(C, n, gen, rmax=0.6)
    aug = _aug(db, "poincare")
    packed, boff = kernels.ivf_pack(aug, offsets)
    blocks, boff8 = kernels.ivf_pack8(db, offsets, cen)

    def run():
        pr = kernels.ivf_probe(q, _aug(cen, "poincare"), 7)
        return (pr, *kernels.ivf_knn(q, db, packed, boff, ids, offsets, pr, 9),
                *kernels.ivf_knn8(q, db, blocks, boff8, cen, ids, offsets, pr, 9),
                kernels.ivf_bounds8(q, blocks, boff8, cen, offsets))

    fast = run()
    monkeypatch.setenv("XHYP_PORTABLE_KERNELS", "1")
    portable = run()
    for a, b in zip(fast, portable):
        assert torch.equal(a, b)
    assert torch.equal(fast[2], fast[4])  # float32 and int8 codes: the same neighbours


@needs_ext
def test_ivf_probe_ties_go_to_the_lower_centroid():
    """identical centroids rank by number (the selection's group-minimum threshold keeps ties)."""
    gen = torch.Generator().manual_seed(32)
    cen = ball(1, 6, gen).repeat(200, 1)
    q = ball(40, 6, gen)
    for P in (1, 5, 40, 99):
        pr = kernels.ivf_probe(q, _aug(cen, "poincare"), P)
        assert torch.equal(pr, torch.arange(P).repeat(40, 1))


@needs_ext
def test_ivf_pack8_and_knn8_reject_bad_inputs():
    gen = torch.Generator().manual_seed(33)
    db, ids, offsets = clustered_db(100, 4, 5, gen)
    cen = ball(5, 4, gen)
    with pytest.raises(RuntimeError, match="centroids must be"):
        kernels.ivf_pack8(db, offsets, cen[:4])
    with pytest.raises(RuntimeError, match="non-decreasing"):
        kernels.ivf_pack8(db, torch.tensor([0, 50, 20, 80, 90, 100]), cen)
    with pytest.raises(RuntimeError, match="dimensions up to"):
        kernels.ivf_pack8(torch.zeros(2, 40001), torch.tensor([0, 2]), torch.zeros(1, 40001))
    blocks, boff = kernels.ivf_pack8(db, offsets, cen)
    q, pr = ball(3, 4, gen), torch.zeros(3, 1, dtype=torch.long)
    with pytest.raises(RuntimeError, match="uint8 CPU output of ivf_pack8"):
        kernels.ivf_knn8(q, db, blocks[:, :-64], boff, cen, ids, offsets, pr, 2)
    with pytest.raises(RuntimeError, match="reference points"):
        kernels.ivf_knn8(q, db, blocks, boff, cen[:, :3], ids, offsets, pr, 2)
    with pytest.raises(RuntimeError, match="probes must hold cluster numbers"):
        kernels.ivf_knn8(q, db, blocks, boff, cen, ids, offsets, torch.tensor([[0], [5], [1]]), 2)
    with pytest.raises(RuntimeError, match="dimension"):
        kernels.ivf_knn8(ball(3, 5, gen), db, blocks, boff, cen, ids, offsets, pr, 2)


def test_ann_index_int8_and_float_codes_agree():
    """both codes of AnnIndex return the same neighbours and distances (exact among the probes)."""
    gen = torch.Generator().manual_seed(34)
    centres = ball(30, 12, gen, rmax=0.8).double()
    z = torch.randint(0, 30, (3100,), generator=gen)
    pts = manifold.project(centres[z] + 0.05 * torch.randn(3100, 12, generator=gen, dtype=torch.float64)).float()
    db, q = pts[:3000].contiguous(), pts[3000:].contiguous()
    a = make_index("ann", n_clusters=25, codes="int8").add(db)
    b = make_index("ann", n_clusters=25, codes="float").add(db)
    for nprobe in (1, 6):
        Da, Ia = a.search(q, 10, nprobe=nprobe)
        Db, Ib = b.search(q, 10, nprobe=nprobe)
        assert torch.equal(Ia, Ib) and torch.equal(Da, Db)
    with pytest.raises(ValueError, match="codes"):
        make_index("ann", codes="pq")


def test_cli_predict_passes_the_ann_knobs(monkeypatch):
    """`xhyp predict --nprobe/--n-clusters/--ann-codes` arrive as the ann index's constructor
    arguments (``index_params``), next to --device; a bad --ann-codes is refused."""
    import inspect

    import xhyp.commands
    from xhyp.cli import main

    sig, seen = inspect.signature(xhyp.commands.predict_model), []
    monkeypatch.setattr(xhyp.commands, "predict_model",
                        lambda *a, **kw: seen.append(sig.bind(*a, **kw).arguments) or {})
    base = ["predict", "--model", "m", "--file", "q.txt", "--out", "s.npz", "--index", "ann"]
    assert main([*base, "--nprobe", "7", "--n-clusters", "12", "--ann-codes", "float", "--device", "cpu"]) == 0
    got = seen.pop()
    assert got["index"] == "ann" and got["device"] == "cpu"
    assert got["index_params"] == {"nprobe": 7, "n_clusters": 12, "codes": "float"}
    index = make_index("ann", **got["index_params"])
    assert isinstance(index, AnnIndex) and (index.codes, index.nprobe, index.n_clusters) == ("float", 7, 12)
    assert main(base) == 0 and seen.pop()["index_params"] is None  # no knob given: the index's defaults
    assert (make_index("ann").codes, make_index("ann").nprobe) == ("int8", 30)
    with pytest.raises(SystemExit):
        main([*base, "--ann-codes", "pq"])
