// Neighbour weights of the label vote, shared by the CPU kernel (cpu/vote_cpu.cpp) and the CUDA
// glue (cuda/ops_cuda.cpp computes them on the host with this code, so that GPU and CPU votes add
// bit-identical weights). Plain C++ (no torch).
//
// Weightings (xhyp.vote.neighbour_weights): "count": 1 + 1e-3 exp(-(d - d1)) for finite d, else 0;
// "distance": exp(-alpha (d - d1)); "weight": the distances already hold the weights. d1 is the
// member's first (nearest) distance of the query, 0 when it is not finite.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>

namespace xhyp {

enum class Weighting { kCount, kDistance, kWeight, kUnknown };

inline Weighting parse_weighting(const std::string& s) {
  if (s == "count") return Weighting::kCount;
  if (s == "distance") return Weighting::kDistance;
  if (s == "weight") return Weighting::kWeight;
  return Weighting::kUnknown;
}

// weights of one query's k neighbours (distances d[0..k), ascending) into out[0..k)
template <typename T>
void load_weights(const T* d, int64_t k, Weighting w, double alpha, double* out) {
  if (w == Weighting::kWeight) {
    for (int64_t j = 0; j < k; ++j) out[j] = double(d[j]);
    return;
  }
  double d1 = k > 0 ? double(d[0]) : 0.0;
  if (!std::isfinite(d1)) d1 = 0.0;
  for (int64_t j = 0; j < k; ++j) {
    const double dj = double(d[j]);
    if (w == Weighting::kCount)
      out[j] = std::isfinite(dj) ? 1.0 + 1e-3 * std::exp(-(dj - d1)) : 0.0;
    else
      out[j] = std::exp(-alpha * (dj - d1));
  }
}

}  // namespace xhyp
