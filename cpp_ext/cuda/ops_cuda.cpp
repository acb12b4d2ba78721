// torch glue of the CUDA kernels: checks, allocations, current stream; registered for the CUDA
// dispatch key of the xhyp_ext operators (schemas in xhyp_ext.cpp). Built only by a CUDA torch
// (setup.py: CUDAExtension); the kernels themselves are in kernels.cu (plain CUDA C++).
//
// Every operator makes the checks of its CPU twin (shapes, dtypes, one device, offsets / indptr
// contents, id ranges) before a kernel reads anything, so bad input is a clear error, never an
// out-of-bounds read.
//
// NOTE: developed without a GPU; compile-checked (kernels.cu with nvcc, this file parsed against
// torch's headers). Run-time tests: tests/test_kernels.py ``ext-cuda`` cases and
// tests/test_cuda_vs_cpu.py, run on a GPU machine by scripts/gpu_check.sh.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "xhyp_checks.h"
#include "xhyp_cuda.h"
#include "xhyp_plan.h"

namespace xhyp {
namespace cuda {
namespace {

void check(int err, const char* what) {
  TORCH_CHECK(err == 0, "xhyp CUDA kernel ", what, " failed: ", cudaGetErrorString(static_cast<cudaError_t>(err)));
}

// the CPU operators' checks (include/xhyp_checks.h), on the CUDA device of the first input
void check_points(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined() && t.is_cuda(), name, " must be a CUDA tensor");
  check_points_on(t, name, t.device());
}

void* stream() { return static_cast<void*>(c10::cuda::getCurrentCUDAStream().stream()); }

at::Tensor inv_factor(const at::Tensor& x, bool euclidean) {
  at::Tensor c = at::empty({x.size(0)}, x.options().dtype(at::kDouble));
  check(launch_inv_factor(x.data_ptr<float>(), x.size(0), x.size(1), euclidean, c.data_ptr<double>(), stream()),
        "inv_factor");
  return c;
}

at::Tensor pairwise_dist_cuda(const at::Tensor& x, const at::Tensor& y, bool euclidean) {
  check_points(x, "x");
  check_points(y, "y");
  check_same_device({{&x, "x"}, {&y, "y"}});
  TORCH_CHECK(x.size(1) == y.size(1), "x and y differ in dimension: ", x.size(1), " vs ", y.size(1));
  c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty({x.size(0), y.size(0)}, x.options());
  at::Tensor cx = inv_factor(x, euclidean), cy = inv_factor(y, euclidean);
  check(launch_pairwise(x.data_ptr<float>(), y.data_ptr<float>(), cx.data_ptr<double>(), cy.data_ptr<double>(),
                        x.size(0), y.size(0), x.size(1), euclidean, out.data_ptr<float>(), stream()),
        "pairwise_dist");
  return out;
}

// On CUDA the "prepared" database is c(y) (M,) float64: the GPU kernels use direct differences.
at::Tensor knn_prepare_cuda(const at::Tensor& db, bool euclidean) {
  check_points(db, "db");
  c10::cuda::CUDAGuard guard(db.device());
  return inv_factor(db, euclidean);
}

at::Tensor prepared(const at::Tensor& db, const at::Tensor& db_aug, bool euclidean) {
  if (db_aug.defined() && db_aug.numel() > 0) {
    TORCH_CHECK(db_aug.device() == db.device() && db_aug.scalar_type() == at::kDouble && db_aug.dim() == 1 &&
                    db_aug.size(0) == db.size(0),
                "db_aug must be the (M,) float64 output of knn_prepare(db) on ", db.device(), " (c(y) of each row), got ",
                db_aug.scalar_type(), " of shape ", db_aug.sizes(), " on ", db_aug.device());
    return db_aug.contiguous();
  }
  return inv_factor(db, euclidean);
}

void check_k(int64_t k, const char* op) {
  TORCH_CHECK(k >= 1 && k <= kMaxK, "the CUDA ", op, " kernel supports 1 <= k <= ", kMaxK, ", got ", k);
}

// exact top-k of all rows of db (ids nullptr: row numbers) for every query, into D, I
void scan_all(const at::Tensor& q, const at::Tensor& db, const at::Tensor& cx, const at::Tensor& cy, int64_t k,
              bool euclidean, at::Tensor& D, at::Tensor& I, const char* what) {
  const int64_t Q = q.size(0), QB = scan_queries_per_block(k);
  check(launch_knn_scan(q.data_ptr<float>(), db.data_ptr<float>(), cx.data_ptr<double>(), cy.data_ptr<double>(),
                        nullptr, nullptr, nullptr, nullptr, nullptr, (Q + QB - 1) / QB, 0, Q, db.size(0), q.size(1), k,
                        euclidean, D.data_ptr<float>(), I.data_ptr<int64_t>(), stream()),
        what);
}

std::tuple<at::Tensor, at::Tensor> knn_cuda(const at::Tensor& q, const at::Tensor& db, const at::Tensor& db_aug,
                                            int64_t k, bool euclidean) {
  check_points(q, "q");
  check_points(db, "db");
  check_same_device({{&q, "q"}, {&db, "db"}, {&db_aug, "db_aug"}});
  check_k(k, "knn");
  TORCH_CHECK(q.size(1) == db.size(1), "query dimension ", q.size(1), " != database dimension ", db.size(1));
  c10::cuda::CUDAGuard guard(q.device());
  at::Tensor cx = inv_factor(q, euclidean), cy = prepared(db, db_aug, euclidean);
  at::Tensor D = at::empty({q.size(0), k}, q.options());
  at::Tensor I = at::empty({q.size(0), k}, q.options().dtype(at::kLong));
  scan_all(q, db, cx, cy, k, euclidean, D, I, "knn");
  return {D, I};
}

std::tuple<at::Tensor, at::Tensor> clustered_knn_cuda(const at::Tensor& q, const at::Tensor& db,
                                                      const at::Tensor& db_aug, const at::Tensor& ids,
                                                      const at::Tensor& offsets, const at::Tensor& centroids,
                                                      int64_t k, int64_t nprobe, bool euclidean) {
  check_points(q, "q");
  check_points(db, "db");
  check_points(centroids, "centroids");
  check_same_device({{&q, "q"}, {&db, "db"}, {&db_aug, "db_aug"}, {&centroids, "centroids"}, {&ids, "ids"},
                     {&offsets, "offsets"}});
  check_k(k, "clustered_knn");
  TORCH_CHECK(nprobe >= 1, "nprobe must be >= 1, got ", nprobe);
  const int64_t Q = q.size(0), M = db.size(0), C = centroids.size(0);
  TORCH_CHECK(db.size(1) == q.size(1) && centroids.size(1) == q.size(1),
              "q, db and centroids must have the same dimension");
  check_ids(ids, M, "ids");
  TORCH_CHECK(offsets.dim() == 1 && offsets.size(0) == C + 1, "offsets must have n_clusters + 1 = ", C + 1,
              " entries, got shape ", offsets.sizes());
  check_offsets(offsets, M, "offsets");  // starts at 0, ends at M, never decreases
  c10::cuda::CUDAGuard guard(q.device());
  at::Tensor D = at::full({Q, k}, INFINITY, q.options());
  at::Tensor I = at::full({Q, k}, -1, q.options().dtype(at::kLong));
  if (C == 0 || Q == 0) return {D, I};
  const int64_t P = std::min(nprobe, C);
  at::Tensor cx = inv_factor(q, euclidean), cy = prepared(db, db_aug, euclidean), cc = inv_factor(centroids, euclidean);
  // 1. the P nearest centroids (the exact scan with the centroids as database, as the CPU kernel)
  at::Tensor probe = at::empty({Q, P}, q.options().dtype(at::kLong));
  if (P <= kMaxK) {
    at::Tensor pd = at::empty({Q, P}, q.options());
    scan_all(q, centroids, cx, cc, P, euclidean, pd, probe, "clustered_knn (probe)");
  } else {
    at::Tensor scratch = at::empty({Q, P}, q.options());
    check(launch_probe(q.data_ptr<float>(), centroids.data_ptr<float>(), cc.data_ptr<double>(), Q, C, q.size(1), P,
                       euclidean, probe.data_ptr<int64_t>(), scratch.data_ptr<float>(), stream()),
          "clustered_knn (probe)");
  }
  // 2. the plan: blocks of queries with the same nearest centroid, the clusters each block scans
  at::Tensor bq, entries, masks;
  std::tie(bq, entries, masks) = scan_plan(probe, C, scan_queries_per_block(k));
  if (entries.size(1) == 0) return {D, I};  // no query probes a cluster (an empty entries pointer
                                            // would mean "scan everything" to the kernel)
  at::Tensor ids_c = ids.contiguous(), off_c = offsets.contiguous();
  check(launch_knn_scan(q.data_ptr<float>(), db.data_ptr<float>(), cx.data_ptr<double>(), cy.data_ptr<double>(),
                        ids_c.data_ptr<int64_t>(), off_c.data_ptr<int64_t>(), bq.data_ptr<int64_t>(),
                        entries.data_ptr<int64_t>(), masks.data_ptr<int64_t>(), bq.size(0), entries.size(1), Q, M,
                        q.size(1), k, euclidean, D.data_ptr<float>(), I.data_ptr<int64_t>(), stream()),
        "clustered_knn (scan)");
  return {D, I};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> scan_plan_cuda(const at::Tensor& probes, int64_t n_clusters,
                                                              int64_t block) {
  c10::cuda::CUDAGuard guard(probes.device());
  return scan_plan(probes.contiguous(), n_clusters, block);
}

// The weights arrive precomputed (xhyp.knn.vote.neighbour_weights), the same values the CPU kernel
// gets; launch_vote widens them to double as the CPU kernel does and sums them in its order
// (duplicates merged, ascending neighbour id, member by member), so GPU and CPU votes are identical.
std::tuple<at::Tensor, at::Tensor, at::Tensor> vote_topk_cuda(at::TensorList ids, at::TensorList weights,
                                                              at::TensorList indptr, at::TensorList indices,
                                                              int64_t n_labels, int64_t top_k) {
  const size_t M = ids.size();
  check_vote_lists(static_cast<int64_t>(M), static_cast<int64_t>(weights.size()), static_cast<int64_t>(indptr.size()),
                   static_cast<int64_t>(indices.size()), top_k, n_labels);
  TORCH_CHECK(ids[0].is_cuda(), "ids[0] must be a CUDA tensor");
  c10::cuda::CUDAGuard guard(ids[0].device());
  const int64_t Q = ids[0].size(0);
  std::vector<at::Tensor> id_cols, w_cols, member_cols, ip_parts, ix_parts;
  const bool own = indptr.size() == M;  // one label matrix per member: concatenate them
  int64_t rows_so_far = 0, nnz_so_far = 0;
  for (size_t m = 0; m < M; ++m) {
    check_vote_member(ids[m], weights[m], Q, static_cast<int64_t>(m), ids[0].device());
    const at::Tensor& I = ids[m];
    int64_t row_off = 0;
    if (own || m == 0) {
      at::Tensor ip = indptr[m].to(I.device(), at::kLong).contiguous();
      at::Tensor ix = indices[m].to(I.device(), at::kLong).contiguous();
      check_label_csr(ip, ix, n_labels, I.device());
      const int64_t N = ip.size(0) - 1;
      check_range(I, -1, N, "neighbour id (-1: none; below the number of training rows)");
      ip_parts.push_back(m == 0 ? ip : ip.slice(0, 1) + nnz_so_far);
      ix_parts.push_back(ix);
      row_off = rows_so_far;
      rows_so_far += N;
      nnz_so_far += ix.size(0);
    } else {
      check_range(I, -1, rows_so_far, "neighbour id (-1: none; below the number of training rows)");
    }
    id_cols.push_back(at::where(I >= 0, I + row_off, at::full_like(I, -1)));
    w_cols.push_back(weights[m].to(at::kDouble));
    member_cols.push_back(at::full({I.size(1)}, static_cast<int>(m), I.options().dtype(at::kInt)));
  }
  at::Tensor I = at::cat(id_cols, 1).contiguous(), W = at::cat(w_cols, 1).contiguous();
  at::Tensor member = at::cat(member_cols, 0).contiguous();
  at::Tensor ip = at::cat(ip_parts, 0).contiguous(), ix = at::cat(ix_parts, 0).contiguous();
  const int64_t K = I.size(1);
  at::Tensor counts = at::empty({Q}, I.options());
  check(launch_vote_count(I.data_ptr<int64_t>(), Q, K, ip.data_ptr<int64_t>(), counts.data_ptr<int64_t>(), stream()),
        "vote_topk (count)");
  at::Tensor pair_off = at::zeros({Q + 1}, I.options());
  if (Q > 0) pair_off.slice(0, 1).copy_(at::cumsum(counts, 0));
  const int64_t total = Q > 0 ? pair_off[Q].item<int64_t>() : 0;
  at::Tensor keys = at::empty({std::max<int64_t>(total, 1)}, I.options());
  at::Tensor vals = at::empty({std::max<int64_t>(total, 1)}, W.options());
  at::Tensor labels = at::empty({Q, top_k}, I.options());
  at::Tensor scores = at::empty({Q, top_k}, W.options().dtype(at::kFloat));
  at::Tensor n_scored = at::empty({Q}, I.options());
  check(launch_vote(I.data_ptr<int64_t>(), W.data_ptr<double>(), member.data_ptr<int32_t>(), Q, K,
                    ip.data_ptr<int64_t>(), ix.data_ptr<int64_t>(), pair_off.data_ptr<int64_t>(),
                    keys.data_ptr<int64_t>(), vals.data_ptr<double>(), top_k, labels.data_ptr<int64_t>(),
                    scores.data_ptr<float>(), n_scored.data_ptr<int64_t>(), stream()),
        "vote_topk");
  return {labels, scores, n_scored};
}

}  // namespace
}  // namespace cuda
}  // namespace xhyp

TORCH_LIBRARY_IMPL(xhyp_ext, CUDA, m) {
  m.impl("pairwise_dist", &xhyp::cuda::pairwise_dist_cuda);
  m.impl("knn_prepare", &xhyp::cuda::knn_prepare_cuda);
  m.impl("knn", &xhyp::cuda::knn_cuda);
  m.impl("clustered_knn", &xhyp::cuda::clustered_knn_cuda);
  m.impl("scan_plan", &xhyp::cuda::scan_plan_cuda);
  m.impl("vote_topk", &xhyp::cuda::vote_topk_cuda);
}
