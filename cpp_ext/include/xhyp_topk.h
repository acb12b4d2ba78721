// CPU top-k machinery shared by the exact/clustered kNN (cpu/knn_cpu.cpp) and the inverted-file
// scan (cpu/ivf_cpu.cpp): a candidate (t, id), the ranking rule (smaller t first, ties by the
// lower id), a bounded max-heap of the k best candidates, and the exact t of one row.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "xhyp_common.h"

namespace xhyp {
namespace cpu {
namespace topk {

constexpr float kInf = std::numeric_limits<float>::infinity();

struct Cand {
  double t;
  int64_t id;
};

// a ranks after b: larger t, ties by larger id
inline bool after(const Cand& a, const Cand& b) { return a.t > b.t || (a.t == b.t && a.id > b.id); }
inline bool before(const Cand& a, const Cand& b) { return after(b, a); }

// max-heap on `after` (root = worst kept candidate)
inline void sift_up(Cand* h, int64_t i) {
  Cand v = h[i];
  while (i > 0) {
    int64_t p = (i - 1) / 2;
    if (!after(v, h[p])) break;
    h[i] = h[p];
    i = p;
  }
  h[i] = v;
}

inline void sift_down(Cand* h, int64_t n, int64_t i) {
  Cand v = h[i];
  for (;;) {
    int64_t c = 2 * i + 1;
    if (c >= n) break;
    if (c + 1 < n && after(h[c + 1], h[c])) ++c;
    if (!after(h[c], v)) break;
    h[i] = h[c];
    i = c;
  }
  h[i] = v;
}

// offer (t, id) to the heap h of cnt (<= k) candidates
template <typename Count>
inline void heap_offer(Cand* h, Count& cnt, int64_t k, double t, int64_t id) {
  Cand c{t, id};
  if (cnt < k) {
    h[cnt] = c;
    sift_up(h, cnt);
    ++cnt;
  } else if (before(c, h[0])) {
    h[0] = c;
    sift_down(h, k, 0);
  }
}

// the float after f towards +inf (f >= 0 or NaN: t is a sum of squares times c > 0); inf for inf
inline float next_up(float f) {
  if (!(f >= 0.0f) || !(f < kInf)) return f < 0.0f ? std::nextafter(f, kInf) : kInf;
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  ++u;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// float threshold >= the heap's worst t (inf while the heap is not full)
template <typename Count>
inline float heap_threshold(const Cand* h, Count cnt, int64_t k) {
  if (cnt < k) return kInf;
  return next_up(static_cast<float>(h[0].t));
}

inline double row_sq(const float* y, int64_t n) {
  double s = 0.0;
  for (int64_t i = 0; i < n; ++i) s += double(y[i]) * double(y[i]);
  return s;
}

// exact t = c(y) |x - y|^2 from float32 coordinates, in double
inline double exact_t(const float* x, const float* y, int64_t n, bool euclidean) {
  double acc = 0.0, yn = 0.0;
#pragma omp simd reduction(+ : acc, yn)
  for (int64_t i = 0; i < n; ++i) {
    double yi = y[i];
    double d = double(x[i]) - yi;
    acc += d * d;
    yn += yi * yi;
  }
  return euclidean ? acc : acc * inv_one_minus_sq(yn, false);
}

}  // namespace topk
}  // namespace cpu
}  // namespace xhyp
