// Input checks shared by the CPU and CUDA operators (torch glue only, never device code).
//
// Every operator validates shapes, dtypes, devices and the contents of index arrays (offsets,
// indptr, ids) before a kernel reads them, so that a bad offset is a clear error instead of an
// out-of-bounds read. Index arrays that live on a GPU are copied to the host for the content
// checks (they are small: n_clusters + 1 or N + 1 entries).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <initializer_list>

namespace xhyp {

// float32, 2-D (rows, dim), contiguous, on the device of `like` (or the CPU if like is undefined)
inline void check_points_on(const at::Tensor& t, const char* name, const at::Device& dev) {
  TORCH_CHECK(t.defined(), name, " is undefined");
  TORCH_CHECK(t.device() == dev, name, " must be on ", dev, ", got ", t.device());
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 2, name, " must be 2-D (rows, dim), got ", t.dim(), " dimensions");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

inline void check_cpu_points(const at::Tensor& t, const char* name) { check_points_on(t, name, at::Device(at::kCPU)); }

// all tensors on one device
inline void check_same_device(std::initializer_list<std::pair<const at::Tensor*, const char*>> ts) {
  const at::Tensor* first = nullptr;
  const char* first_name = nullptr;
  for (const auto& p : ts) {
    if (!p.first->defined()) continue;
    if (!first) {
      first = p.first;
      first_name = p.second;
      continue;
    }
    TORCH_CHECK(p.first->device() == first->device(), p.second, " is on ", p.first->device(), " but ", first_name,
                " is on ", first->device(), ": all inputs must be on one device");
  }
}

// (C + 1,) int64 cluster offsets into M rows: start at 0, end at M, never decrease
inline void check_offsets(const at::Tensor& offsets, int64_t M, const char* name) {
  TORCH_CHECK(offsets.scalar_type() == at::kLong && offsets.dim() == 1 && offsets.size(0) >= 1 &&
                  offsets.is_contiguous(),
              name, " must be a contiguous 1-D int64 tensor with at least one entry");
  at::Tensor h = offsets.is_cpu() ? offsets : offsets.cpu();
  const int64_t* o = h.data_ptr<int64_t>();
  const int64_t C = h.size(0) - 1;
  TORCH_CHECK(o[0] == 0, name, " must start at 0, got ", o[0]);
  TORCH_CHECK(o[C] == M, name, " must end at the number of rows ", M, ", got ", o[C]);
  for (int64_t c = 0; c < C; ++c)
    TORCH_CHECK(o[c] <= o[c + 1], name, " must be non-decreasing: entry ", c, " = ", o[c], " > entry ", c + 1, " = ",
                o[c + 1]);
}

inline void check_offsets_cpu(const at::Tensor& offsets, int64_t M, const char* name) {
  TORCH_CHECK(offsets.device().is_cpu(), name, " must be a CPU tensor");
  check_offsets(offsets, M, name);
}

// (M,) int64 ids (values not checked: they are returned, never dereferenced)
inline void check_ids(const at::Tensor& ids, int64_t M, const char* name) {
  TORCH_CHECK(ids.scalar_type() == at::kLong && ids.dim() == 1 && ids.size(0) == M && ids.is_contiguous(),
              name, " must be a contiguous (", M, ",) int64 tensor, got shape ", ids.sizes());
}

inline void check_ids_cpu(const at::Tensor& ids, int64_t M, const char* name) {
  TORCH_CHECK(ids.device().is_cpu(), name, " must be a CPU tensor");
  check_ids(ids, M, name);
}

// CSR row pointer of N rows over nnz entries: indptr[0] == 0, indptr[N] == nnz, non-decreasing
inline void check_indptr(const at::Tensor& indptr, int64_t nnz, const char* name) {
  check_offsets(indptr, nnz, name);
}

// the argument lists of vote_topk: M members (ids and weights), one label matrix each or one shared
inline void check_vote_lists(int64_t n_ids, int64_t n_weights, int64_t n_indptr, int64_t n_indices, int64_t top_k,
                             int64_t n_labels) {
  TORCH_CHECK(n_ids >= 1 && n_weights == n_ids, "ids and weights must be lists of the same non-zero length");
  TORCH_CHECK(n_indptr == n_indices && (n_indptr == n_ids || n_indptr == 1),
              "indptr/indices: one label matrix per member, or one shared by all");
  TORCH_CHECK(top_k >= 1, "top_k must be >= 1, got ", top_k);
  TORCH_CHECK(n_labels >= 0, "n_labels must be >= 0");
}

// member m of vote_topk: (Q, k) int64 ids and float32/float64 weights of the same shape, on dev
inline void check_vote_member(const at::Tensor& ids, const at::Tensor& weights, int64_t Q, int64_t m,
                              const at::Device& dev) {
  TORCH_CHECK(ids.device() == dev && ids.scalar_type() == at::kLong && ids.dim() == 2 && ids.is_contiguous(),
              "ids[", m, "] must be a contiguous (Q, k) int64 tensor on ", dev);
  TORCH_CHECK(ids.size(0) == Q, "every member must have the same number of queries");
  TORCH_CHECK(weights.device() == dev &&
                  (weights.scalar_type() == at::kFloat || weights.scalar_type() == at::kDouble) &&
                  weights.sizes() == ids.sizes() && weights.is_contiguous(),
              "weights[", m, "] must be a contiguous float32/float64 tensor on ", dev, " shaped like ids[", m, "]");
}

// values of an int64 tensor in [lo, hi): a loop on the CPU, a min/max reduction on a GPU
inline void check_range(const at::Tensor& v, int64_t lo, int64_t hi, const char* what) {
  if (v.numel() == 0) return;
  if (v.is_cpu()) {
    const int64_t* p = v.data_ptr<int64_t>();
    for (int64_t i = 0; i < v.numel(); ++i)
      TORCH_CHECK(p[i] >= lo && p[i] < hi, what, " ", p[i], " out of range [", lo, ", ", hi, ")");
    return;
  }
  const int64_t mn = v.min().item<int64_t>(), mx = v.max().item<int64_t>();
  TORCH_CHECK(mn >= lo && mx < hi, what, " out of range [", lo, ", ", hi, "): min ", mn, ", max ", mx);
}

// (N, L) binary label matrix in CSR form on dev: indptr (N + 1,), label ids (nnz,) in [0, n_labels)
inline void check_label_csr(const at::Tensor& indptr, const at::Tensor& indices, int64_t n_labels,
                            const at::Device& dev) {
  TORCH_CHECK(indptr.device() == dev && indices.device() == dev, "indptr and indices must be on ", dev);
  TORCH_CHECK(indices.scalar_type() == at::kLong && indices.dim() == 1 && indices.is_contiguous(),
              "indices must be a contiguous (nnz,) int64 tensor");
  check_indptr(indptr, indices.size(0), "indptr");
  check_range(indices, 0, n_labels, "label id");
}

}  // namespace xhyp
