// out (m, n) = a (m, K) . b (n, K)^T in float32 for the CPU kernels (cpu/knn_cpu.cpp,
// cpu/ivf_cpu.cpp): torch's BLAS (at::mm_out) for large products, a plain loop for small ones.
// Outside an OpenMP parallel region the BLAS runs multi-threaded, and waking its threads costs
// milliseconds per call on a loaded machine (measured on the 2-core dev machine at load ~5:
// 11 ms for a 400 x 52 x 3 product with 2 threads, 0.17 ms for the whole 400 x 3 kNN with one);
// small products (the kNN of a few hundred points against a few centroids in the ann index's
// cluster splits, short query batches) stay single-threaded. The lower bounds of the kNN kernels
// hold for any summation order, so both paths serve them.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/mm.h>

#include <cstdint>

namespace xhyp {
namespace cpu {

constexpr int64_t kSmallGemm = int64_t(1) << 22;  // multiply-adds below which the plain loop runs

inline void gemm_nt(const float* a, int64_t m, const float* b, int64_t n, int64_t K, float* out) {
  if (m * n * K <= kSmallGemm) {
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) {
        float s = 0.0f;
#pragma omp simd reduction(+ : s)
        for (int64_t d = 0; d < K; ++d) s += a[i * K + d] * b[j * K + d];
        out[i * n + j] = s;
      }
    return;
  }
  auto opts = at::TensorOptions().dtype(at::kFloat);
  at::Tensor o = at::from_blob(out, {m, n}, opts);
  at::mm_out(o, at::from_blob(const_cast<float*>(a), {m, K}, opts),
             at::from_blob(const_cast<float*>(b), {n, K}, opts).t());
}

}  // namespace cpu
}  // namespace xhyp
