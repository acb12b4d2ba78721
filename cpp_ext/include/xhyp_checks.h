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

}  // namespace xhyp
