"""CUDA operators against the CPU ones (skipped without a GPU; run by scripts/gpu_check.sh).

Exact kNN: the same ids and distances (to float32 rounding) as the CPU kernel; clustered kNN: the
same as the CPU kernel given the same clusters; voting: identical scores, duplicates merged.
The work plan of the tiled clustered scan (``scan_plan``, plain ATen code shared by both devices)
is also checked on the CPU against a Python reference, so that part runs without a GPU.
"""
import pytest
import torch

from xhyp.knn import kernels as K
from xhyp.knn import extension as X
from xhyp.knn.vote import neighbour_weights

gpu = pytest.mark.skipif(not (torch.cuda.is_available() and X.ext_available("cuda")),
                         reason="needs a CUDA GPU and the CUDA build of the extension")


def ball(n, d, seed, rmax=0.95, boundary=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    r = torch.rand(n, 1, generator=g, dtype=torch.float64) ** (1.0 / d) * rmax
    if boundary:
        r[-boundary:] = 1 - 1e-6 - 9e-6 * torch.rand(boundary, 1, generator=g, dtype=torch.float64)
    return (x * r).float()


def same_knn(D1, I1, D2, I2):
    assert torch.equal(I1.cpu(), I2.cpu())
    fin = torch.isfinite(D2.cpu())
    assert torch.equal(torch.isfinite(D1.cpu()), fin)
    assert torch.allclose(D1.cpu()[fin], D2.cpu()[fin], rtol=1e-5, atol=1e-6)


@gpu
@pytest.mark.parametrize("d", [1, 17, 50, 100])
@pytest.mark.parametrize("k", [1, 16, 17, 64, 65, 128])
def test_knn_gpu_equals_cpu(d, k):
    db, q = ball(3000, d, d, boundary=30), ball(257, d, d + 1, boundary=5)
    same_knn(*K.knn(q.cuda(), db.cuda(), k), *K.knn(q, db, k))


@gpu
@pytest.mark.parametrize("M", [0, 5])
def test_knn_gpu_k_larger_than_db_and_empty_db(M):
    db, q = ball(M, 8, 1), ball(20, 8, 2)
    same_knn(*K.knn(q.cuda(), db.cuda(), 10), *K.knn(q, db, 10))


@gpu
def test_knn_gpu_many_queries_tiny_db():
    """more than 2^20 queries (grid limits) against a 7-point database."""
    db, q = ball(7, 4, 3), ball((1 << 20) + 3, 4, 4)
    D, I = K.knn(q.cuda(), db.cuda(), 3)
    Dc, Ic = K.knn(q, db, 3)
    same_knn(D, I, Dc, Ic)


@gpu
def test_knn_gpu_dim_beyond_shared_memory():
    """a dimension far past what 48 KB of shared memory holds: the kernel stages 64 dimensions at a
    time, so the answer is the CPU's (exact and clustered)."""
    db, q = ball(300, 20000, 5), ball(40, 20000, 6)
    same_knn(*K.knn(q.cuda(), db.cuda(), 5), *K.knn(q, db, 5))
    offsets, ids, cen = torch.tensor([0, 100, 100, 300]), torch.randperm(300), ball(3, 20000, 7)
    args = (ids, offsets, cen, 7, 2)
    same_knn(*K.clustered_knn(q.cuda(), db.cuda(), *(a.cuda() if torch.is_tensor(a) else a for a in args)),
             *K.clustered_knn(q, db, *args))


@gpu
@pytest.mark.parametrize("nprobe", [1, 3, 50])
@pytest.mark.parametrize("k", [1, 17, 128])
def test_clustered_gpu_equals_cpu_with_empty_clusters(nprobe, k):
    db, q = ball(2000, 17, 7, boundary=20), ball(300, 17, 8)
    C = 40
    g = torch.Generator().manual_seed(9)
    cut = torch.sort(torch.randint(0, 2001, (C - 1,), generator=g)).values
    offsets = torch.cat([torch.tensor([0]), cut, torch.tensor([2000])]).long()
    offsets[5:8] = offsets[5]  # empty clusters
    offsets[8:] = torch.maximum(offsets[8:], offsets[5])
    ids = torch.randperm(2000, generator=g)
    cen = ball(C, 17, 10)
    args = (ids, offsets, cen, k, nprobe)
    Dg, Ig = K.clustered_knn(q.cuda(), db.cuda(), *(a.cuda() if torch.is_tensor(a) else a for a in args))
    same_knn(Dg, Ig, *K.clustered_knn(q, db, *args))


@gpu
def test_clustered_gpu_rejects_bad_offsets():
    db, q, cen = ball(100, 4, 11).cuda(), ball(3, 4, 12).cuda(), ball(5, 4, 13).cuda()
    ids = torch.arange(100).cuda()
    for off, msg in (([0, 10, 5, 50, 80, 100], "non-decreasing"), ([1, 10, 20, 50, 80, 100], "start at 0"),
                     ([0, 10, 20, 50, 80, 99], "end at")):
        with pytest.raises(RuntimeError, match=msg):
            K.clustered_knn(q, db, ids, torch.tensor(off).cuda(), cen, 3, 2)


@gpu
def test_vote_gpu_identical_to_cpu_with_duplicate_neighbours():
    import scipy.sparse as sp

    g = torch.Generator().manual_seed(14)
    N, L, Q, k = 200, 60, 500, 20
    Y = sp.random(N, L, density=0.05, format="csr", random_state=0)
    Y.data[:] = 1
    I = torch.randint(0, N, (Q, k), generator=g)
    I[:, 5] = I[:, 4]  # duplicate neighbour ids
    D = torch.sort(torch.rand(Q, k, generator=g), dim=1).values
    ip, ix = torch.from_numpy(Y.indptr).long(), torch.from_numpy(Y.indices).long()
    for weighting in ("count", "distance"):
        W = torch.from_numpy(neighbour_weights(D.numpy(), weighting, 1.0))
        cpu = K.vote_topk([I], [W], [ip], [ix], L, 10)
        gpu = K.vote_topk([I.cuda()], [W.cuda()], [ip.cuda()], [ix.cuda()], L, 10)
        for a, b in zip(cpu, gpu):
            assert torch.equal(a, b.cpu()), weighting


@gpu
def test_clustered_gpu_more_probes_than_kernel_k_is_exact_search():
    """nprobe >= C > 128 (the centroid probe then takes the one-thread-a-query path): every cluster
    is scanned, so the result is the exact search's on both devices."""
    db, q = ball(3000, 9, 15), ball(100, 9, 16)
    C = 200
    offsets = torch.linspace(0, 3000, C + 1).long()
    ids, cen = torch.randperm(3000), ball(C, 9, 17)
    args = (ids, offsets, cen, 10, 300)
    Dg, Ig = K.clustered_knn(q.cuda(), db.cuda(), *(a.cuda() if torch.is_tensor(a) else a for a in args))
    same_knn(Dg, Ig, *K.clustered_knn(q, db, *args))
    De, Ie = K.knn(q, db, 10)
    assert torch.equal(Ig.cpu(), ids[Ie])


@gpu
def test_cuda_operators_make_the_cpu_checks():
    db, q = ball(50, 4, 18), ball(5, 4, 19)
    with pytest.raises(RuntimeError, match="CUDA tensor|one device|must be on"):
        torch.ops.xhyp_ext.knn(q.cuda(), db, torch.empty(0), 3, False)
    with pytest.raises(RuntimeError, match="db_aug"):
        K.knn(q.cuda(), db.cuda(), 3, db_aug=torch.zeros(7, dtype=torch.float64).cuda())
    with pytest.raises(RuntimeError, match="dimension"):
        K.knn(ball(5, 3, 20).cuda(), db.cuda(), 3)
    ip, ix = torch.tensor([0, 1, 2]), torch.tensor([0, 9])
    I, D = torch.tensor([[0, 1]]), torch.tensor([[0.1, 0.2]])
    with pytest.raises(RuntimeError, match="label id out of range"):
        K.vote_topk([I.cuda()], [D.cuda()], [ip.cuda()], [ix.cuda()], 5, 2)
    with pytest.raises(RuntimeError, match="neighbour id"):
        K.vote_topk([torch.tensor([[0, 2]]).cuda()], [D.cuda()], [ip.cuda()], [torch.tensor([0, 1]).cuda()], 5, 2)
    with pytest.raises(RuntimeError, match="end at"):
        K.vote_topk([I.cuda()], [D.cuda()], [torch.tensor([0, 1, 3]).cuda()], [torch.tensor([0, 1]).cuda()], 5, 2)


@gpu
@pytest.mark.parametrize("weighting", ["count", "distance", "raw"])
def test_vote_gpu_identical_to_cpu_ensemble(weighting):
    """two members with their own label matrices, duplicate and missing (-1) neighbours; weights
    of xhyp.knn.vote.neighbour_weights, or raw float64 weights ("raw")."""
    import scipy.sparse as sp

    g = torch.Generator().manual_seed(21)
    Q, L = 300, 40
    mats = [sp.random(N, L, density=0.1, format="csr", random_state=s) for s, N in ((1, 120), (2, 90))]
    ids, weights, ips, ixs = [], [], [], []
    for Y, k in zip(mats, (12, 7)):
        Y.data[:] = 1
        I = torch.randint(0, Y.shape[0], (Q, k), generator=g)
        I[:, 1] = I[:, 0]
        I[::5, -1] = -1
        D = torch.sort(torch.rand(Q, k, generator=g, dtype=torch.float64), dim=1).values
        D[::5, -1] = float("inf")
        W = D.masked_fill(I < 0, 0.0) if weighting == "raw" else \
            torch.from_numpy(neighbour_weights(D.numpy(), weighting, 0.7))
        ids.append(I), weights.append(W)
        ips.append(torch.from_numpy(Y.indptr).long()), ixs.append(torch.from_numpy(Y.indices).long())
    cpu = K.vote_topk(ids, weights, ips, ixs, L, 8)
    cu = [[t.cuda() for t in lst] for lst in (ids, weights, ips, ixs)]
    gpu_out = K.vote_topk(*cu, L, 8)
    for a, b in zip(cpu, gpu_out):
        assert torch.equal(a, b.cpu()), weighting


def _plan_reference(probes, C, QB):
    """Python reference of scan_plan: query blocks by nearest probe, each block's distinct clusters
    in rank-major first-appearance order, and the slots probing each."""
    Q, P = probes.shape
    first = torch.where(probes[:, 0] < 0, torch.full_like(probes[:, 0], C), probes[:, 0]) if P else \
        torch.full((Q,), C)
    order = torch.sort(first, stable=True).indices.tolist()
    blocks = []
    for b in range(0, Q, QB):
        qs = order[b:b + QB] + [-1] * (QB - len(order[b:b + QB]))
        ent = {}
        for r in range(P):
            for slot, qi in enumerate(qs):
                c = int(probes[qi, r]) if qi >= 0 else -1
                if c >= 0:
                    ent.setdefault(c, 0)
                    ent[c] |= 1 << slot
        blocks.append((qs, list(ent.items())))
    return blocks


@pytest.mark.skipif(not X.ext_available("cpu"), reason="C++ extension not built")
@pytest.mark.parametrize("QB", [1, 8, 32])
def test_scan_plan_matches_reference(QB):
    g = torch.Generator().manual_seed(22)
    Q, P, C = 203, 6, 25
    probes = torch.randint(-1, C, (Q, P), generator=g)
    probes[::9, 2] = probes[::9, 1]  # repeated probes
    probes[5] = -1  # a query without probes
    bq, entries, masks = torch.ops.xhyp_ext.scan_plan(probes, C, QB)
    ref = _plan_reference(probes, C, QB)
    assert bq.shape == (len(ref), QB)
    for b, (qs, ent) in enumerate(ref):
        assert bq[b].tolist() == qs
        n = len(ent)
        assert entries[b, :n].tolist() == [c for c, _ in ent]
        assert masks[b, :n].tolist() == [m for _, m in ent]
        assert (entries[b, n:] == -1).all()
    # no probes at all, and no queries
    bq, entries, masks = torch.ops.xhyp_ext.scan_plan(torch.full((5, 2), -1), C, 4)
    assert bq.shape == (2, 4) and entries.shape[0] == 2 and (entries == -1).all()
    assert torch.ops.xhyp_ext.scan_plan(torch.zeros(0, 3, dtype=torch.long), C, 4)[0].shape == (0, 4)
    with pytest.raises(RuntimeError, match="cluster numbers"):
        torch.ops.xhyp_ext.scan_plan(torch.full((2, 2), C), C, 4)
