// Small numerical helpers shared by the CPU (g++) and CUDA (nvcc) kernels. No torch, no STL.
//
// Poincaré distance (Nickel & Kiela 2017, eq. 1), in the form that keeps float32 accuracy:
//   d(x, y) = 2 asinh(sqrt(s)),   s = |x - y|^2 c(x) c(y),   c(x) = 1 / ((1 - |x|)(1 + |x|)).
// For a fixed query x, s is monotone in t(y) = |x - y|^2 c(y): the kNN kernels rank by t and
// convert only the final k to distances.
#pragma once

#include <math.h>

#if defined(__CUDACC__)
#define XHYP_HD __host__ __device__ __forceinline__
#else
#define XHYP_HD inline
#endif

namespace xhyp {

// Smallest value allowed for 1 - |x|^2 (points outside the open ball give large, finite values
// instead of inf/NaN; every point the library stores has |x| <= 1 - 1e-5, 1 - |x|^2 >= 2e-5).
constexpr double kMinOneMinusSq = 1e-30;

// Safety factor of the float32 GEMM lower bound (see knn_cpu.cpp): the bound is
// g = c(y) ((1 - 2 gamma)(|x|^2 + |y|^2) - 2 <x, y>) with gamma = kGammaUlps (n + 4) 2^-24, which
// is <= t(y) = c(y) |x - y|^2 whenever the GEMM's rounding error is at most
// (n + 2) 2^-24 (|x|^2 + |y|^2 + 2 |x||y|) (the classical bound, Higham 2002, eq. 3.5), with a
// factor 2 of margin.
constexpr double kGammaUlps = 2.0;

// c(x) = 1 / (1 - |x|^2) from |x|^2 (computed in double by the caller), or 1 for Euclidean.
XHYP_HD double inv_one_minus_sq(double sq, bool euclidean) {
  if (euclidean) return 1.0;
  double r = sq > 0.0 ? ::sqrt(sq) : 0.0;
  double den = (1.0 - r) * (1.0 + r);
  return 1.0 / (den > kMinOneMinusSq ? den : kMinOneMinusSq);
}

// distance from s (Poincaré: s = |x-y|^2 c(x) c(y); Euclidean: s = |x-y|^2).
XHYP_HD double dist_from_s(double s, bool euclidean) {
  if (s < 0.0) s = 0.0;
  double r = ::sqrt(s);
  return euclidean ? r : 2.0 * ::asinh(r);
}

}  // namespace xhyp
