"""CUDA operators against the CPU ones (skipped without a GPU; run by scripts/gpu_check.sh).

Exact kNN: the same ids and distances (to float32 rounding) as the CPU kernel; clustered kNN: the
same as the CPU kernel given the same clusters; voting: identical scores, duplicates merged.
"""
import pytest
import torch

from xhyp.knn import kernels as K
from xhyp.knn import extension as X
from xhyp.knn.vote import neighbour_weights

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and X.ext_available("cuda")),
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


@pytest.mark.parametrize("d", [1, 17, 50, 100])
@pytest.mark.parametrize("k", [1, 16, 17, 64, 65, 128])
def test_knn_gpu_equals_cpu(d, k):
    db, q = ball(3000, d, d, boundary=30), ball(257, d, d + 1, boundary=5)
    same_knn(*K.knn(q.cuda(), db.cuda(), k), *K.knn(q, db, k))


@pytest.mark.parametrize("M", [0, 5])
def test_knn_gpu_k_larger_than_db_and_empty_db(M):
    db, q = ball(M, 8, 1), ball(20, 8, 2)
    same_knn(*K.knn(q.cuda(), db.cuda(), 10), *K.knn(q, db, 10))


def test_knn_gpu_many_queries_tiny_db():
    """more than 2^20 queries (grid limits) against a 7-point database."""
    db, q = ball(7, 4, 3), ball((1 << 20) + 3, 4, 4)
    D, I = K.knn(q.cuda(), db.cuda(), 3)
    Dc, Ic = K.knn(q, db, 3)
    same_knn(D, I, Dc, Ic)


def test_knn_gpu_dim_beyond_shared_memory():
    """a dimension whose per-block shared memory passes 48 KB: a clean error or the right answer."""
    db, q = ball(300, 20000, 5), ball(4, 20000, 6)
    try:
        D, I = K.knn(q.cuda(), db.cuda(), 5)
    except RuntimeError as e:
        assert "shared memory" in str(e) or "dimension" in str(e)
        return
    same_knn(D, I, *K.knn(q, db, 5))


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


def test_clustered_gpu_rejects_bad_offsets():
    db, q, cen = ball(100, 4, 11).cuda(), ball(3, 4, 12).cuda(), ball(5, 4, 13).cuda()
    ids = torch.arange(100).cuda()
    for off, msg in (([0, 10, 5, 50, 80, 100], "non-decreasing"), ([1, 10, 20, 50, 80, 100], "start at 0"),
                     ([0, 10, 20, 50, 80, 99], "end at")):
        with pytest.raises(RuntimeError, match=msg):
            K.clustered_knn(q, db, ids, torch.tensor(off).cuda(), cen, 3, 2)


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
