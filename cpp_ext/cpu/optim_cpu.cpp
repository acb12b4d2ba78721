// CPU kernels: lazy (row-sparse) optimiser steps of embedding tables, each fused into one pass
// over the touched rows (lazy_adam_: Euclidean Adam of the projector; riemannian_adam_ball_:
// Riemannian Adam of the label embeddings in the Poincaré ball, further below).
//
// For each row r = rows[i] of the (R,) sorted unique row ids, with its gradient grad[i] (n,):
//
//     m[r] = b1 m[r] + (1 - b1) g
//     v[r] = b2 v[r] + (1 - b2) g^2
//     x[r] = x[r] - step_size * m[r] / (sqrt(v[r]) + eps)
//
// (Kingma & Ba, ICLR 2015, Algorithm 1, with the bias corrections folded into step_size =
// lr sqrt(1 - b2^t) / (1 - b1^t), as torch.optim.SparseAdam computes it.) Rows absent from
// `rows` are not read or written. The parameter and both moments are read and written once per
// touched element, instead of the gather / update / scatter passes of the tensor-level code
// (xhyp.training.optim.LazyAdam's fallback), which dominated a step on wide sparse inputs.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <vector>

namespace xhyp {
namespace cpu {
namespace {

void check_table(const at::Tensor& t, const char* name, const at::Tensor& like) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kFloat, name, " must be float32, got ", t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
  TORCH_CHECK(t.sizes() == like.sizes(), name, " must have the shape of param ", like.sizes(), ", got ", t.sizes());
}

// Checks shared by the steps: an (N, n) float32 table and its two moments, (R,) strictly
// increasing row ids in [0, N) (so rows can be updated in parallel), an (R, n) gradient.
void check_step_inputs(const at::Tensor& param, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                       const at::Tensor& rows, const at::Tensor& grad) {
  TORCH_CHECK(param.dim() == 2, "param must be 2-D (rows, dim), got ", param.dim(), " dimensions");
  check_table(param, "param", param);
  check_table(exp_avg, "exp_avg", param);
  check_table(exp_avg_sq, "exp_avg_sq", param);
  const int64_t N = param.size(0), n = param.size(1);
  TORCH_CHECK(rows.device().is_cpu() && rows.scalar_type() == at::kLong && rows.dim() == 1 && rows.is_contiguous(),
              "rows must be a contiguous 1-D int64 CPU tensor");
  const int64_t R = rows.size(0);
  TORCH_CHECK(grad.device().is_cpu() && grad.scalar_type() == at::kFloat && grad.is_contiguous() &&
                  grad.dim() == 2 && grad.size(0) == R && grad.size(1) == n,
              "grad must be a contiguous float32 CPU tensor of shape (", R, ", ", n, "), got ", grad.sizes());
  const int64_t* r = rows.data_ptr<int64_t>();
  for (int64_t i = 0; i < R; ++i) {
    TORCH_CHECK(r[i] >= 0 && r[i] < N, "rows[", i, "] = ", r[i], " is out of range [0, ", N, ")");
    TORCH_CHECK(i == 0 || r[i - 1] < r[i], "rows must be strictly increasing (coalesced): rows[", i - 1,
                "] = ", r[i - 1], ", rows[", i, "] = ", r[i]);
  }
}

void lazy_adam_cpu(const at::Tensor& param, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                   const at::Tensor& rows, const at::Tensor& grad, double step_size, double beta1, double beta2,
                   double eps) {
  check_step_inputs(param, exp_avg, exp_avg_sq, rows, grad);
  const int64_t n = param.size(1), R = rows.size(0);
  const int64_t* r = rows.data_ptr<int64_t>();
  float* x = param.data_ptr<float>();
  float* m = exp_avg.data_ptr<float>();
  float* v = exp_avg_sq.data_ptr<float>();
  const float* g = grad.data_ptr<float>();
  const float b1 = float(beta1), b2 = float(beta2), c1 = float(1.0 - beta1), c2 = float(1.0 - beta2);
  const float s = float(step_size), e = float(eps);
  at::parallel_for(0, R, 256, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      float* __restrict xr = x + r[i] * n;
      float* __restrict mr = m + r[i] * n;
      float* __restrict vr = v + r[i] * n;
      const float* __restrict gr = g + i * n;
      for (int64_t j = 0; j < n; ++j) {
        const float gj = gr[j];
        const float mj = b1 * mr[j] + c1 * gj;
        const float vj = b2 * vr[j] + c2 * (gj * gj);
        mr[j] = mj;
        vr[j] = vj;
        xr[j] -= s * (mj / (std::sqrt(vj) + e));
      }
    }
  });
}

// Lazy Riemannian Adam step of label embeddings in the Poincaré ball (curvature -1), one row at
// a time in double precision, stored back as float32. The update is geoopt's RiemannianAdam
// (Bécigneul & Ganea, ICLR 2019, Algorithm 1) on the manifold xhyp.embedding.manifold.PoincareBall:
//
//     lam(x) = 2 / max(1 - |x|^2, 1e-15)                     (conformal factor)
//     g  = grad / lam(x)^2                                    (egrad2rgrad)
//     m  = b1 m + (1 - b1) g
//     v  = b2 v + (1 - b2) lam(x)^2 |g|^2                     (component_inner, every entry)
//     u  = -lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
//     y  = x + u, rescaled onto |y| = max_norm if longer      (retraction + max-norm guard)
//     m  = gyr[y, -x] m * lam(x) / lam(y)                     (parallel transport, Ungar's
//                                                              gyration in the simplified form
//                                                              geoopt uses)
void riemannian_adam_ball_cpu(const at::Tensor& param, const at::Tensor& exp_avg, const at::Tensor& exp_avg_sq,
                              const at::Tensor& rows, const at::Tensor& grad, double lr, double beta1, double beta2,
                              double eps, int64_t step, double max_norm) {
  check_step_inputs(param, exp_avg, exp_avg_sq, rows, grad);
  TORCH_CHECK(step >= 1, "step must be >= 1, got ", step);
  TORCH_CHECK(max_norm > 0.0 && max_norm < 1.0, "max_norm must be in (0, 1), got ", max_norm);
  const int64_t n = param.size(1), R = rows.size(0);
  const int64_t* r = rows.data_ptr<int64_t>();
  float* X = param.data_ptr<float>();
  float* M = exp_avg.data_ptr<float>();
  float* V = exp_avg_sq.data_ptr<float>();
  const float* G = grad.data_ptr<float>();
  const double bc1 = 1.0 - std::pow(beta1, double(step)), bc2 = 1.0 - std::pow(beta2, double(step));
  at::parallel_for(0, R, 64, [&](int64_t i0, int64_t i1) {
    std::vector<double> x(n), m(n), y(n);
    for (int64_t i = i0; i < i1; ++i) {
      float* __restrict xr = X + r[i] * n;
      float* __restrict mr = M + r[i] * n;
      float* __restrict vr = V + r[i] * n;
      const float* __restrict gr = G + i * n;
      double x2 = 0.0;
      for (int64_t j = 0; j < n; ++j) {
        x[j] = xr[j];
        x2 += x[j] * x[j];
      }
      const double lam_x = 2.0 / std::max(1.0 - x2, 1e-15);
      const double inv_lam2 = 1.0 / (lam_x * lam_x);
      double g2 = 0.0;
      for (int64_t j = 0; j < n; ++j) {
        const double g = double(gr[j]) * inv_lam2;
        m[j] = beta1 * double(mr[j]) + (1.0 - beta1) * g;
        g2 += g * g;
      }
      const double inner = lam_x * lam_x * g2;
      double y2 = 0.0;
      for (int64_t j = 0; j < n; ++j) {
        const double vj = beta2 * double(vr[j]) + (1.0 - beta2) * inner;
        vr[j] = float(vj);
        y[j] = x[j] - lr * (m[j] / bc1) / (std::sqrt(vj / bc2) + eps);
        y2 += y[j] * y[j];
      }
      const double ny = std::sqrt(y2);
      if (ny > max_norm) {
        const double s = max_norm / ny;
        for (int64_t j = 0; j < n; ++j) y[j] *= s;
        y2 = 0.0;
        for (int64_t j = 0; j < n; ++j) y2 += y[j] * y[j];
      }
      // parallel transport of m from x to y: gyr[a, b] w with a = y, b = -x, w = m (k = -1)
      double ab = 0.0, aw = 0.0, bw = 0.0;
      for (int64_t j = 0; j < n; ++j) {
        ab -= y[j] * x[j];
        aw += y[j] * m[j];
        bw -= x[j] * m[j];
      }
      const double A = -aw * x2 + bw + 2.0 * ab * bw;
      const double B = -bw * y2 - aw;
      const double D = std::max(1.0 + 2.0 * ab + y2 * x2, 1e-15);
      const double lam_y = 2.0 / std::max(1.0 - y2, 1e-15);
      const double ratio = lam_x / lam_y;
      for (int64_t j = 0; j < n; ++j) {
        const double mt = (m[j] + 2.0 * (A * y[j] - B * x[j]) / D) * ratio;
        mr[j] = float(mt);
        xr[j] = float(y[j]);
      }
    }
  });
}

}  // namespace
}  // namespace cpu
}  // namespace xhyp

TORCH_LIBRARY_IMPL(xhyp_ext, CPU, m) {
  m.impl("lazy_adam_", &xhyp::cpu::lazy_adam_cpu);
  m.impl("riemannian_adam_ball_", &xhyp::cpu::riemannian_adam_ball_cpu);
}
