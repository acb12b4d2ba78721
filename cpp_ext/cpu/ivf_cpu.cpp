// CPU kernels of the "ann" index: an inverted-file (IVF) search with a query-major scan.
//
// Two row codes share the search (the database rows are sorted by cluster, cluster c = rows
// offsets[c]:offsets[c+1], and packed in blocks of 16 rows, every cluster starting a new block):
//
// * float32 (ivf_pack): the augmented rows of knn_prepare (K = n + 2 floats,
//   [-2 c y, (1 - 2 gamma) c, (1 - 2 gamma) c |y|^2], see knn_cpu.cpp) stored dimension-major,
//   (B, K, 16) floats. With the query's augmented row [x, |x|^2, 1], the dot product is the
//   rigorous float32 lower bound g <= t(y) = c(y) |x - y|^2 of knn_cpu.cpp (the same rounding
//   bound holds for any summation order, fused multiply-adds included). 208 bytes a row at n 50.
//
// * int8 residual codes (ivf_pack8): each row y of cluster c is coded relative to a reference
//   point m of its cluster (the centroid): r = y - m = s_y rc + e_y with rc in [-127, 127]^n
//   (per-row scale s_y = max |r_d| / 127, error e_y); the query once per search:
//   x = s_x xc + e_x (xc int8, s_x = max |x_d| / 127). From the exact identity
//       |x - y|^2 = |x - m|^2 + |r|^2 + 2 <m, r> - 2 <x, r>
//   and Cauchy-Schwarz on the two quantisation errors,
//       <x, r> <= s_y s_x <xc, rc> + s_y |rc| |e_x| + |x| |e_y|,
//   so t = c(y) |x - y|^2 >= L with
//       L = C D + CR - CS (s_x IP) - CF |e_x| - CE |x|,   IP = <xc, rc> (exact, int32),
//   D = |x - m|^2 per (query, cluster), and five per-row float32 constants C = c, CR =
//   c (|r|^2 + 2 <m, r>), CS = 2 c s_y, CF = 2 c s_y |rc|, CE = 2 c |e_y|. The float32
//   evaluation of L (6 roundings) and of the constants is made rigorous by a margin
//   delta c Mag, Mag = D + |r|^2 + 2 |m||r| + 2 (|x| + |e_x|)(|r| + |e_y|) >= every partial sum,
//   delta = 32 * 2^-24, folded into the constants (D and |r|^2 scaled by 1 - delta, 2 delta |m||r|
//   subtracted from CR, 2 delta (|r| + |e_y|) added to CF and CE, directed rounding of the
//   non-negative constants). IP is one AVX-512 VNNI instruction (vpdpbusd: u8 rows = rc + 128
//   times s8 query codes, the accumulator starting at -128 sum(xc)) per 4 dimensions of 16 rows.
//   Block layout (bytes): G = ceil(n / 4) groups of 16 lanes x 4 codes, then the five constants
//   x 16 lanes (float32): 64 (G + 5) bytes, 72 bytes a row at n 50.
//
// Search (ivf_probe + ivf_knn / ivf_knn8)
// ---------------------------------------
// 1. ivf_probe: each query's nprobe nearest centroids by the float32 bound g (one GEMM of 128
//    queries x all centroids), selected in two passes: the nprobe-th smallest of 2 nprobe group
//    minima bounds the nprobe-th smallest value (there are >= nprobe values below it), so one
//    vectorised comparison keeps a short list (about 1.3 nprobe) that is sorted (keys: order-
//    preserving float bits and the centroid number, ties to the lower number).
// 2. ivf_knn / ivf_knn8: queries are ordered by their nearest centroid; groups of up to 16 queries
//    with the same nearest centroid scan the union of their probes cluster by cluster (nearest-
//    ranked first), each row block loaded once for up to 4 queries, each query with ONE top-k heap
//    shared by all its probes: the lower bounds of 16 rows at a time (AVX-512 when the CPU has it,
//    else portable code), and only rows whose bound is <= the heap's k-th t get their exact t in
//    double from the float32 coordinates. The result is the exact top-k (ties: lower id) of the
//    union of the probed clusters, whichever code gave the bounds.
//
// Portable code: XHYP_PORTABLE_KERNELS=1 in the environment makes every operator of this file use
// the portable (non-AVX-512) kernels, to test them against the vectorised ones on one machine.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define XHYP_X86 1
#endif

#include "xhyp_checks.h"
#include "xhyp_common.h"
#include "xhyp_cpu_gemm.h"
#include "xhyp_topk.h"

namespace xhyp {
namespace cpu {
namespace {

constexpr int64_t kLanes = 16;
using namespace topk;  // Cand, the heap, row_sq, exact_t (xhyp_topk.h)
constexpr float kInfF = topk::kInf;

// ---------------------------------------------------------------------------------------------
// float32 blocks: g of nq (<= 4) queries xa[0..nq) (K floats each) against blocks [0, nb)

void block_dotsn_generic(int nq, const float* const* xa, const float* blk, int64_t K, int64_t nb, float* const* g) {
  for (int u = 0; u < nq; ++u) {
    for (int64_t b = 0; b < nb; ++b) {
      float acc[kLanes] = {0};
      const float* p = blk + b * K * kLanes;
      for (int64_t d = 0; d < K; ++d) {
        const float xd = xa[u][d];
#pragma omp simd
        for (int64_t l = 0; l < kLanes; ++l) acc[l] += xd * p[d * kLanes + l];
      }
      std::memcpy(g[u] + b * kLanes, acc, sizeof(acc));
    }
  }
}

// 16-bit masks of the lanes with g <= thr, per block
void block_masks_generic(const float* g, int64_t nb, float thr, uint32_t* m) {
  for (int64_t b = 0; b < nb; ++b) {
    uint32_t v = 0;
    for (int64_t l = 0; l < kLanes; ++l) v |= uint32_t(g[b * kLanes + l] <= thr) << l;
    m[b] = v;
  }
}

#ifdef XHYP_X86
// NQ (1..4) queries x 2 blocks per step: 2 NQ independent accumulators, each row load used NQ times
template <int NQ>
__attribute__((target("avx512f,fma"))) inline void dotsn_avx512(const float* const* xa, const float* blk, int64_t K,
                                                                int64_t nb, float* const* g) {
  const int64_t S = K * kLanes;
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    const float* p = blk + b * S;
    __m512 a[NQ], c[NQ];
    for (int u = 0; u < NQ; ++u) a[u] = c[u] = _mm512_setzero_ps();
    for (int64_t d = 0; d < K; ++d) {
      const __m512 r = _mm512_loadu_ps(p + d * kLanes), t = _mm512_loadu_ps(p + S + d * kLanes);
      for (int u = 0; u < NQ; ++u) {
        const __m512 y = _mm512_set1_ps(xa[u][d]);
        a[u] = _mm512_fmadd_ps(y, r, a[u]);
        c[u] = _mm512_fmadd_ps(y, t, c[u]);
      }
    }
    for (int u = 0; u < NQ; ++u) {
      _mm512_storeu_ps(g[u] + b * kLanes, a[u]);
      _mm512_storeu_ps(g[u] + (b + 1) * kLanes, c[u]);
    }
  }
  for (; b < nb; ++b) {
    const float* p = blk + b * S;
    __m512 a[NQ];
    for (int u = 0; u < NQ; ++u) a[u] = _mm512_setzero_ps();
    for (int64_t d = 0; d < K; ++d) {
      const __m512 r = _mm512_loadu_ps(p + d * kLanes);
      for (int u = 0; u < NQ; ++u) a[u] = _mm512_fmadd_ps(_mm512_set1_ps(xa[u][d]), r, a[u]);
    }
    for (int u = 0; u < NQ; ++u) _mm512_storeu_ps(g[u] + b * kLanes, a[u]);
  }
}

__attribute__((target("avx512f,fma"))) void block_dotsn_avx512(int nq, const float* const* xa, const float* blk,
                                                               int64_t K, int64_t nb, float* const* g) {
  switch (nq) {
    case 1: dotsn_avx512<1>(xa, blk, K, nb, g); break;
    case 2: dotsn_avx512<2>(xa, blk, K, nb, g); break;
    case 3: dotsn_avx512<3>(xa, blk, K, nb, g); break;
    default: dotsn_avx512<4>(xa, blk, K, nb, g); break;
  }
}

__attribute__((target("avx512f"))) void block_masks_avx512(const float* g, int64_t nb, float thr, uint32_t* m) {
  const __m512 t = _mm512_set1_ps(thr);
  for (int64_t b = 0; b < nb; ++b) m[b] = _mm512_cmp_ps_mask(_mm512_loadu_ps(g + b * kLanes), t, _CMP_LE_OQ);
}
#endif

// ---------------------------------------------------------------------------------------------
// int8 blocks (layout and bound: see the file comment)

constexpr int kRowConsts = 5;  // C, CR, CS, CF, CE (float32 x 16 lanes each, after the codes)
constexpr double kDelta8 = 32.0 / 16777216.0;  // 32 * 2^-24
constexpr int64_t kMaxDim8 = 40000;            // |int32 accumulator| <= 194,564 G < 2^31

inline int64_t groups8(int64_t n) { return (n + 3) / 4; }
inline int64_t stride8(int64_t n) { return 64 * (groups8(n) + kRowConsts); }

// one query's int8 code: G words of 4 signed codes, the accumulator start -128 sum(xc) and the
// float32 scalars of the bound
struct Query8 {
  const int32_t* w;
  int32_t init;
  float sx, ex, xn;
};

inline void bound8_lane(const float* cst, int64_t l, int32_t acc, float d, const Query8& q, float* out) {
  const float u = static_cast<float>(acc) * q.sx;
  float L = std::fma(cst[l], d, cst[kLanes + l]);
  L = std::fma(-cst[2 * kLanes + l], u, L);
  L = std::fma(-cst[3 * kLanes + l], q.ex, L);
  *out = std::fma(-cst[4 * kLanes + l], q.xn, L);
}

// lower bounds L of nq (<= 4) queries (D of the cluster: d[v]) against blocks [0, nb) of a cluster
void block_bounds8_generic(int nq, const Query8* qs, const float* d, const uint8_t* blk, int64_t G, int64_t nb,
                           float* const* g) {
  const int64_t S = 64 * (G + kRowConsts);
  for (int64_t b = 0; b < nb; ++b) {
    const uint8_t* p = blk + b * S;
    const float* cst = reinterpret_cast<const float*>(p + 64 * G);
    for (int v = 0; v < nq; ++v) {
      int32_t acc[kLanes];
      for (int64_t l = 0; l < kLanes; ++l) acc[l] = qs[v].init;
      for (int64_t j = 0; j < G; ++j) {
        int8_t xc[4];
        std::memcpy(xc, qs[v].w + j, 4);
        for (int64_t l = 0; l < kLanes; ++l)
          for (int e = 0; e < 4; ++e) acc[l] += int32_t(p[64 * j + 4 * l + e]) * int32_t(xc[e]);
      }
      for (int64_t l = 0; l < kLanes; ++l) bound8_lane(cst, l, acc[l], d[v], qs[v], g[v] + b * kLanes + l);
    }
  }
}

// pairwise sum of 16 lanes: lanes l and l + 8, then l + 4, l + 2, l + 1
inline float reduce_lanes(float* a) {
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) a[l] += a[l + w];
  return a[0];
}

float dist2_lanes_generic(const float* x, const float* m, int64_t n) {
  float a[kLanes] = {0};
  for (int64_t i = 0; i < n; ++i) {
    const float dv = x[i] - m[i];
    a[i % kLanes] = std::fma(dv, dv, a[i % kLanes]);
  }
  return reduce_lanes(a);
}

#ifdef XHYP_X86
#define XHYP_VNNI_TARGET __attribute__((target("avx512f,avx512bw,avx512dq,avx512vnni,fma")))

// the five row constants of a block (C, CR, CS, CF, CE), loaded once for all queries of a pass
struct Consts8 {
  __m512 c, cr, cs, cf, ce;
};

XHYP_VNNI_TARGET inline Consts8 load_consts8(const uint8_t* p, int64_t G) {
  const float* cst = reinterpret_cast<const float*>(p + 64 * G);
  return {_mm512_loadu_ps(cst), _mm512_loadu_ps(cst + kLanes), _mm512_loadu_ps(cst + 2 * kLanes),
          _mm512_loadu_ps(cst + 3 * kLanes), _mm512_loadu_ps(cst + 4 * kLanes)};
}

// L = C D + CR - CS (s_x IP) - CF |e_x| - CE |x| (the operation order of bound8_lane)
XHYP_VNNI_TARGET inline __m512 bound8_epilogue(const Consts8& k, __m512i acc, __m512 d, __m512 sx, __m512 ex,
                                               __m512 xn) {
  const __m512 u = _mm512_mul_ps(_mm512_cvtepi32_ps(acc), sx);
  __m512 L = _mm512_fmadd_ps(k.c, d, k.cr);
  L = _mm512_fnmadd_ps(k.cs, u, L);
  L = _mm512_fnmadd_ps(k.cf, ex, L);
  return _mm512_fnmadd_ps(k.ce, xn, L);
}

// NQ queries x NB blocks per step (NQ * NB <= 8 accumulators), each row load used NQ times
template <int NQ, int NB>
XHYP_VNNI_TARGET inline void bounds8_vnni(const Query8* qs, const float* d, const uint8_t* blk, int64_t G, int64_t nb,
                                          float* const* g) {
  const int64_t S = 64 * (G + kRowConsts);
  const int32_t* w[NQ];
  __m512 dv[NQ], sx[NQ], ex[NQ], xn[NQ];
  for (int u = 0; u < NQ; ++u) {
    w[u] = qs[u].w;
    dv[u] = _mm512_set1_ps(d[u]);
    sx[u] = _mm512_set1_ps(qs[u].sx);
    ex[u] = _mm512_set1_ps(qs[u].ex);
    xn[u] = _mm512_set1_ps(qs[u].xn);
  }
  int64_t b = 0;
  for (; b + NB <= nb; b += NB) {
    const uint8_t* p = blk + b * S;
    __m512i acc[NB][NQ];
    for (int v = 0; v < NB; ++v)
      for (int u = 0; u < NQ; ++u) acc[v][u] = _mm512_set1_epi32(qs[u].init);
    for (int64_t j = 0; j < G; ++j) {
      __m512i r[NB];
      for (int v = 0; v < NB; ++v) r[v] = _mm512_loadu_si512(p + v * S + 64 * j);
      for (int u = 0; u < NQ; ++u) {
        const __m512i xq = _mm512_set1_epi32(w[u][j]);
        for (int v = 0; v < NB; ++v) acc[v][u] = _mm512_dpbusd_epi32(acc[v][u], r[v], xq);
      }
    }
    for (int v = 0; v < NB; ++v) {
      const Consts8 k = load_consts8(p + v * S, G);
      for (int u = 0; u < NQ; ++u)
        _mm512_storeu_ps(g[u] + (b + v) * kLanes, bound8_epilogue(k, acc[v][u], dv[u], sx[u], ex[u], xn[u]));
    }
  }
  if (NB > 1 && b < nb) {  // the last blocks one at a time
    float* gt[NQ];
    for (int u = 0; u < NQ; ++u) gt[u] = g[u] + b * kLanes;
    bounds8_vnni<NQ, 1>(qs, d, blk + b * S, G, nb - b, gt);
  }
}

// nq <= 4 queries: 2 blocks a step; 5 to 8 queries: 1 block a step
XHYP_VNNI_TARGET void block_bounds8_vnni(int nq, const Query8* qs, const float* d, const uint8_t* blk, int64_t G,
                                         int64_t nb, float* const* g) {
  switch (nq) {
    case 1: bounds8_vnni<1, 2>(qs, d, blk, G, nb, g); break;
    case 2: bounds8_vnni<2, 2>(qs, d, blk, G, nb, g); break;
    case 3: bounds8_vnni<3, 2>(qs, d, blk, G, nb, g); break;
    case 4: bounds8_vnni<4, 2>(qs, d, blk, G, nb, g); break;
    case 5: bounds8_vnni<5, 1>(qs, d, blk, G, nb, g); break;
    case 6: bounds8_vnni<6, 1>(qs, d, blk, G, nb, g); break;
    case 7: bounds8_vnni<7, 1>(qs, d, blk, G, nb, g); break;
    default: bounds8_vnni<8, 1>(qs, d, blk, G, nb, g); break;
  }
}

// |x - m|^2 in float32: 16 lane sums (lane i % 16 gets (x_i - m_i)^2 by fused multiply-adds),
// then a fixed pairwise reduction (the same as dist2_lanes_generic, bit for bit)
XHYP_VNNI_TARGET float dist2_lanes_avx512(const float* x, const float* m, int64_t n) {
  __m512 acc = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += kLanes) {
    const __mmask16 k = n - i >= kLanes ? __mmask16(0xFFFF) : __mmask16((1u << (n - i)) - 1u);
    const __m512 dv = _mm512_sub_ps(_mm512_maskz_loadu_ps(k, x + i), _mm512_maskz_loadu_ps(k, m + i));
    acc = _mm512_fmadd_ps(dv, dv, acc);
  }
  // reduce_lanes in registers: lanes l + 8, l + 4, l + 2, l + 1 added to lane l
  __m256 h = _mm256_add_ps(_mm512_castps512_ps256(acc), _mm512_extractf32x8_ps(acc, 1));
  __m128 f = _mm_add_ps(_mm256_castps256_ps128(h), _mm256_extractf128_ps(h, 1));
  f = _mm_add_ps(f, _mm_movehl_ps(f, f));
  f = _mm_add_ss(f, _mm_shuffle_ps(f, f, 1));
  return _mm_cvtss_f32(f);
}
#undef XHYP_VNNI_TARGET
#endif

// ---------------------------------------------------------------------------------------------
// run-time kernel choice

using DotsNFn = void (*)(int, const float* const*, const float*, int64_t, int64_t, float* const*);
using MasksFn = void (*)(const float*, int64_t, float, uint32_t*);
using Bounds8Fn = void (*)(int, const Query8*, const float*, const uint8_t*, int64_t, int64_t, float* const*);
using Dist2Fn = float (*)(const float*, const float*, int64_t);

struct Kernels {
  DotsNFn dotsn = &block_dotsn_generic;
  MasksFn masks = &block_masks_generic;
  Bounds8Fn bounds8 = &block_bounds8_generic;
  Dist2Fn dist2 = &dist2_lanes_generic;
};

bool portable_forced() {
  const char* e = std::getenv("XHYP_PORTABLE_KERNELS");
  return e != nullptr && *e != '\0' && std::strcmp(e, "0") != 0;
}

Kernels pick_kernels() {
  Kernels k;
#ifdef XHYP_X86
  if (portable_forced()) return k;
  if (__builtin_cpu_supports("avx512f")) {
    k.dotsn = &block_dotsn_avx512;
    k.masks = &block_masks_avx512;
  }
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vnni")) {
    k.bounds8 = &block_bounds8_vnni;
    k.dist2 = &dist2_lanes_avx512;
  }
#endif
  return k;
}

int num_threads() { return std::max(1, at::get_num_threads()); }

void make_qaug(const float* x, int64_t n, float* xa) {
  std::memcpy(xa, x, sizeof(float) * n);
  xa[n] = static_cast<float>(row_sq(x, n));
  xa[n + 1] = 1.0f;
}

// the float before f towards -inf (bit step for positive finite f)
inline float next_down(float f) {
  if (!(f > 0.0f && f < kInfF)) return std::nextafter(f, -kInfF);
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  --u;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// float nearest to v, rounded towards -inf / +inf
inline float round_down(double v) {
  const float f = static_cast<float>(v);
  return double(f) > v ? next_down(f) : f;
}
inline float round_up(double v) {
  const float f = static_cast<float>(v);
  return double(f) < v ? next_up(f) : f;
}

// v rounded to the nearest integer in [-127, 127] (halves away from zero; any rounding would do:
// the quantisation error is computed from the chosen code)
inline int code8(double v) {
  v = std::max(-127.0, std::min(127.0, v));
  return static_cast<int>(v + (v >= 0.0 ? 0.5 : -0.5));
}

// int8 code of one query (see the file comment): words (G int32 of 4 signed codes, padding 0)
Query8 quantise_query(const float* x, int64_t n, int32_t* words) {
  const int64_t G = groups8(n);
  double amax = 0.0;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(double(x[i])));
  float sx = static_cast<float>(amax / 127.0);
  if (!(sx > 0.0f) || !std::isfinite(sx)) sx = 1.0f;
  const double inv = 1.0 / double(sx);
  int8_t* c = reinterpret_cast<int8_t*>(words);  // (signed char may alias any object)
  std::memset(c, 0, 4 * G);
  double e2 = 0.0, x2 = 0.0;
  int64_t csum = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double xi = x[i];
    const int v = code8(xi * inv);
    c[i] = static_cast<int8_t>(v);
    csum += v;
    const double e = xi - double(sx) * v;
    e2 += e * e;
    x2 += xi * xi;
  }
  Query8 q;
  q.w = words;
  q.init = static_cast<int32_t>(-128 * csum);
  q.sx = sx;
  q.ex = round_up(std::sqrt(e2) * (1.0 + 1e-12));
  q.xn = round_up(std::sqrt(x2) * (1.0 + 1e-12));
  return q;
}

// D' <= (1 - delta) |x - m|^2 from the float32 lane sum df of dist2_lanes_*: every term and partial
// sum is non-negative and each operation one rounding, so df >= (1 - (n / 16 + 6) 2^-24) |x - m|^2;
// (n + 8) 2^-24 is taken
float cluster_d8(float df, int64_t n) {
  return round_down(double(df) * (1.0 - kDelta8) * (1.0 - double(n + 8) / 16777216.0));
}

// ---------------------------------------------------------------------------------------------
// centroid selection (ivf_probe)

inline uint32_t order_key(float f) {  // order-preserving map of a float to uint32
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// the P smallest of g[0..C) (ties: lower index, NaN never), ascending, into out[0..P) (-1 pad)
// an upper bound of the m-th smallest of v[0..len) (m >= 1): the m-th smallest minimum of the
// strided groups {j, j + W, j + 2W, ...} (W >= 2m, a multiple of 16; >= m values are below it);
// +inf when len < 2W (too few values for the groups to help)
float group_min_bound(const float* v, int64_t len, int64_t m, std::vector<float>& mins) {
  const int64_t W = (2 * m + kLanes - 1) / kLanes * kLanes;
  if (len < 2 * W) return kInfF;
  mins.assign(W, kInfF);
  float* __restrict mn = mins.data();
  int64_t s = 0;
  for (; s + W <= len; s += W) {
    const float* __restrict vs = v + s;
    for (int64_t j = 0; j < W; ++j) mn[j] = vs[j] < mn[j] ? vs[j] : mn[j];  // (NaN never)
  }
  for (int64_t j = 0; s + j < len; ++j) mn[j] = v[s + j] < mn[j] ? v[s + j] : mn[j];
  std::nth_element(mins.begin(), mins.begin() + (m - 1), mins.end());
  return mins[m - 1];
}

void select_smallest(const float* g, int64_t C, int64_t P, const Kernels& kern, std::vector<float>& mins,
                     std::vector<uint32_t>& mk, std::vector<uint64_t>& buf, int64_t* out) {
  const float thr = group_min_bound(g, C, P, mins);
  buf.clear();
  const int64_t nb = C / kLanes;
  kern.masks(g, nb, thr, mk.data());
  for (int64_t b = 0; b < nb; ++b)
    for (uint32_t bits = mk[b]; bits; bits &= bits - 1) {
      const int64_t c = b * kLanes + __builtin_ctz(bits);
      buf.push_back((uint64_t(order_key(g[c])) << 32) | uint64_t(c));
    }
  for (int64_t c = nb * kLanes; c < C; ++c)
    if (g[c] <= thr) buf.push_back((uint64_t(order_key(g[c])) << 32) | uint64_t(c));
  const int64_t r = std::min<int64_t>(P, static_cast<int64_t>(buf.size()));
  if (r < static_cast<int64_t>(buf.size())) std::nth_element(buf.begin(), buf.begin() + r, buf.end());
  std::sort(buf.begin(), buf.begin() + r);
  for (int64_t j = 0; j < P; ++j) out[j] = j < r ? static_cast<int64_t>(buf[j] & 0xFFFFFFFFu) : -1;
}

// ---------------------------------------------------------------------------------------------
// the query-major scan shared by ivf_knn (float32 blocks) and ivf_knn8 (int8 blocks)

constexpr int64_t kGroup = 16;    // queries per work group
constexpr int64_t kPrefetch = 16;  // rows prefetched per query and entry for the exact checks

// the cache lines of a float32 row of n values
inline void prefetch_row(const float* y, int64_t n) {
  const char* p = reinterpret_cast<const char*>(y);
  const char* end = p + 4 * n;
  for (const char* c = reinterpret_cast<const char*>(reinterpret_cast<uintptr_t>(p) & ~uintptr_t(63)); c < end; c += 64)
    __builtin_prefetch(c);
}

struct Scan {
  const float* q;
  int64_t Q, n;
  const float* db;     // (M, n) rows sorted by cluster, for the exact t
  const int64_t* ids;  // (M,)
  const int64_t* off;  // (C + 1,) row offsets
  const int64_t* bo;   // (C + 1,) block offsets
  int64_t C;
  const int64_t* pr;  // (Q, P) probes
  int64_t P, k;
  bool euclidean;
  MasksFn masks;
  float* D;
  int64_t* I;
};

inline float key_value(uint64_t key) {  // inverse of order_key on the high 32 bits
  uint32_t u = static_cast<uint32_t>(key >> 32);
  u = (u & 0x80000000u) ? (u & 0x7FFFFFFFu) : ~u;
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
}

// The scan. Bounds (FloatBounds, Int8Bounds below): a per-thread object (make_bounds()) with
//   void query(int64_t u, const float* x)   prepare slot u (< kGroup) of the group for query x;
//   void bounds(const int64_t* us, int nq, int64_t c, int64_t nb, float* const* g)
//       lower bounds of t for slots us[0..nq) (nq <= Bounds::kMaxQ) against the nb blocks of
//       cluster c, into g[v][0 .. 16 nb).
template <class Bounds, class Make>
void scan_groups(const Scan& a, Make make_bounds) {
  const int64_t Q = a.Q, P = a.P, C = a.C, k = a.k, n = a.n;
  const int64_t* pr = a.pr;
  int64_t max_blocks = 0;
  for (int64_t c = 0; c < C; ++c) max_blocks = std::max(max_blocks, a.bo[c + 1] - a.bo[c]);

  // query order: by nearest probed cluster (counting sort, stable), queries without probes last
  auto first = [&](int64_t i) { return P > 0 && pr[i * P] >= 0 ? pr[i * P] : C; };
  std::vector<int64_t> order(Q), start(C + 2, 0);
  for (int64_t i = 0; i < Q; ++i) ++start[first(i) + 1];
  for (int64_t c = 0; c <= C; ++c) start[c + 1] += start[c];
  for (int64_t i = 0; i < Q; ++i) order[start[first(i)]++] = i;

  // work groups: up to kGroup consecutive queries of `order` with the same nearest cluster; a
  // group scans the union of its queries' probes cluster by cluster (nearest-ranked first), the
  // queries that probe a cluster together (each block of rows is loaded once for up to 4 queries)
  std::vector<int64_t> gstart;
  for (int64_t w = 0; w < Q;) {
    gstart.push_back(w);
    int64_t e = w + 1;
    while (e < Q && e - w < kGroup && first(order[e]) == first(order[w])) ++e;
    w = e;
  }
  gstart.push_back(Q);
  const int64_t n_groups = static_cast<int64_t>(gstart.size()) - 1;
  const int nt = static_cast<int>(std::min<int64_t>(num_threads(), std::max<int64_t>(1, n_groups / 4)));
  const int64_t gs = std::max<int64_t>(1, max_blocks) * kLanes;
#pragma omp parallel num_threads(nt)
  {
    Bounds bnd = make_bounds();
    std::vector<float> g(kGroup * gs);
    std::vector<uint32_t> mk(std::max<int64_t>(1, max_blocks));
    std::vector<float> mins;
    std::vector<Cand> heap(kGroup * k);
    std::vector<int64_t> cnt(kGroup);
    std::vector<int32_t> slot(std::max<int64_t>(C, 1), -1);
    // the group's entries (distinct probed clusters): cluster, mask of the slots probing it, and
    // the sort key (best rank << 32) | (index of first appearance)
    std::vector<uint64_t> ent;
    std::vector<int64_t> ent_c;
    std::vector<uint32_t> ent_mask;
    // candidates of the entry waiting for its exact checks: keys (order_key(L) << 32 | row in
    // cluster), per query slot the range [lo, hi) and the size of its sorted prefix
    struct Pending {
      int64_t u, lo, hi, ns;
    };
    std::vector<uint64_t> cand[2];
    std::vector<Pending> pend[2];
    int64_t pend_r0[2] = {0, 0};
#pragma omp for schedule(dynamic, 4)
    for (int64_t gi = 0; gi < n_groups; ++gi) {
      const int64_t w0 = gstart[gi], ng = gstart[gi + 1] - w0;
      if (gi + 1 < n_groups)  // the next group's queries and probe lists (rows in query order)
        for (int64_t w = gstart[gi + 1]; w < gstart[gi + 2]; ++w) {
          prefetch_row(a.q + order[w] * n, n);
          for (int64_t o = 0; o < P * 8; o += 64) __builtin_prefetch(reinterpret_cast<const char*>(pr + order[w] * P) + o);
        }
      ent_c.clear();
      ent_mask.clear();
      ent.clear();
      for (int64_t u = 0; u < ng; ++u) {
        const int64_t i = order[w0 + u];
        bnd.query(u, a.q + i * n);
        cnt[u] = 0;
        for (int64_t p = 0; p < P; ++p) {
          const int64_t c = pr[i * P + p];
          if (c < 0) continue;
          if (slot[c] < 0) {
            slot[c] = static_cast<int32_t>(ent_c.size());
            ent_c.push_back(c);
            ent_mask.push_back(0u);
            ent.push_back(uint64_t(p) << 32 | uint64_t(slot[c]));
          }
          const int32_t e = slot[c];
          ent_mask[e] |= 1u << u;  // a repeated probe sets the same bit: scanned once
          ent[e] = std::min(ent[e], uint64_t(p) << 32 | uint64_t(e));
        }
      }
      for (int64_t c : ent_c) slot[c] = -1;
      std::sort(ent.begin(), ent.end());  // best rank first, ties in the order first seen

      // exact checks of the pending candidates of buffer `s` (prefetched one entry earlier)
      auto exact_checks = [&](int s) {
        const int64_t r0 = pend_r0[s];
        for (const Pending& pd : pend[s]) {
          const int64_t u = pd.u;
          const float* x = a.q + order[w0 + u] * n;
          Cand* h = heap.data() + u * k;
          float thr = heap_threshold(h, cnt[u], k);
          for (int64_t t = pd.lo; t < pd.hi; ++t) {
            if (!(key_value(cand[s][t]) <= thr)) {
              if (t - pd.lo < pd.ns) break;  // sorted prefix: every later candidate is larger
              continue;
            }
            const int64_t row = r0 + static_cast<int64_t>(cand[s][t] & 0xFFFFFFFFu);
            heap_offer(h, cnt[u], k, exact_t(x, a.db + row * n, n, a.euclidean), a.ids[row]);
            thr = heap_threshold(h, cnt[u], k);
          }
        }
        pend[s].clear();
        cand[s].clear();
      };

      // pipeline over the entries: bounds of entry e, exact checks of entry e - 1 (whose rows were
      // prefetched while the bounds ran), candidates of entry e (with the updated thresholds)
      int s = 0;
      for (const uint64_t ek : ent) {
        const int64_t e = static_cast<int64_t>(ek & 0xFFFFFFFFu), c = ent_c[e];
        const int64_t r0 = a.off[c], rows = a.off[c + 1] - r0, nb = a.bo[c + 1] - a.bo[c];
        if (rows == 0) continue;
        int64_t us[kGroup];
        int nu = 0;
        for (uint32_t m = ent_mask[e]; m; m &= m - 1) us[nu++] = __builtin_ctz(m);
        // the queries in passes of up to Bounds::kMaxQ, as even as possible
        const int passes = (nu + Bounds::kMaxQ - 1) / Bounds::kMaxQ;
        for (int v = 0, pi = 0; pi < passes; ++pi) {
          const int nq = (nu - v) / (passes - pi) + ((nu - v) % (passes - pi) != 0);
          float* gq[Bounds::kMaxQ];
          for (int w = 0; w < nq; ++w) gq[w] = g.data() + us[v + w] * gs;
          bnd.bounds(us + v, nq, c, nb, gq);
          v += nq;
        }
        exact_checks(1 - s);
        // candidates: rows whose bound passes the query's threshold; while the heap is not full
        // (thr = inf) the ones below a group-minimum bound of its free places come first, sorted,
        // then the others unsorted (exact_checks tests them against the threshold of that time)
        const uint32_t last = rows % kLanes ? (1u << (rows % kLanes)) - 1u : 0xFFFFu;
        pend_r0[s] = r0;
        for (int v = 0; v < nu; ++v) {
          const int64_t u = us[v];
          const float* gq = g.data() + u * gs;
          const float thr = heap_threshold(heap.data() + u * k, cnt[u], k);
          const float t1 = std::min(thr, cnt[u] < k ? group_min_bound(gq, rows, k - cnt[u], mins) : thr);
          a.masks(gq, nb, thr, mk.data());
          mk[nb - 1] &= last;
          const int64_t lo = static_cast<int64_t>(cand[s].size());
          for (int64_t b = 0; b < nb; ++b)
            for (uint32_t m = mk[b]; m; m &= m - 1) {
              const int64_t j = b * kLanes + __builtin_ctz(m);
              cand[s].push_back((uint64_t(order_key(gq[j])) << 32) | uint64_t(j));
            }
          const int64_t hi = static_cast<int64_t>(cand[s].size());
          if (hi == lo) continue;
          const uint64_t key1 = (uint64_t(order_key(t1)) << 32) | 0xFFFFFFFFu;
          auto mid = std::partition(cand[s].begin() + lo, cand[s].begin() + hi, [&](uint64_t x) { return x <= key1; });
          std::sort(cand[s].begin() + lo, mid);
          const int64_t ns = mid - (cand[s].begin() + lo);
          for (int64_t t = lo; t < lo + std::min<int64_t>(ns, kPrefetch); ++t) {
            const int64_t row = r0 + static_cast<int64_t>(cand[s][t] & 0xFFFFFFFFu);
            prefetch_row(a.db + row * n, n);
            __builtin_prefetch(a.ids + row);
          }
          pend[s].push_back({u, lo, hi, ns});
        }
        s = 1 - s;
      }
      exact_checks(1 - s);
      for (int64_t u = 0; u < ng; ++u) {
        const int64_t i = order[w0 + u];
        Cand* h = heap.data() + u * k;
        std::sort(h, h + cnt[u], before);
        const double cx = inv_one_minus_sq(row_sq(a.q + i * n, n), a.euclidean);
        for (int64_t r = 0; r < k; ++r) {
          a.D[i * k + r] = r < cnt[u] ? static_cast<float>(dist_from_s(h[r].t * cx, a.euclidean)) : kInfF;
          a.I[i * k + r] = r < cnt[u] ? h[r].id : -1;
        }
      }
    }
  }
}

// float32 blocks: the augmented query rows against the packed augmented rows
struct FloatBounds {
  const float* packed;
  const int64_t* bo;
  int64_t n, K;
  DotsNFn dotsn;
  std::vector<float> xa;
  static constexpr int kMaxQ = 4;
  void query(int64_t u, const float* x) { make_qaug(x, n, xa.data() + u * K); }
  void bounds(const int64_t* us, int nq, int64_t c, int64_t nb, float* const* g) const {
    const float* xs[4];
    for (int v = 0; v < nq; ++v) xs[v] = xa.data() + us[v] * K;
    dotsn(nq, xs, packed + bo[c] * K * kLanes, K, nb, g);
  }
};

// int8 blocks: the queries' int8 codes against the packed row codes, D of each (query, cluster)
struct Int8Bounds {
  const uint8_t* blocks;
  const int64_t* bo;
  const float* cen;  // (C, n) reference points of the clusters
  int64_t n, G;
  Bounds8Fn fn;
  Dist2Fn d2;
  std::vector<int32_t> words;
  std::vector<Query8> qs;
  std::vector<const float*> xs;
  void query(int64_t u, const float* x) {
    qs[u] = quantise_query(x, n, words.data() + u * G);
    xs[u] = x;
  }
  static constexpr int kMaxQ = 8;
  void bounds(const int64_t* us, int nq, int64_t c, int64_t nb, float* const* g) const {
    Query8 q8[kMaxQ];
    float d8[kMaxQ];
    for (int v = 0; v < nq; ++v) {
      q8[v] = qs[us[v]];
      d8[v] = cluster_d8(d2(xs[us[v]], cen + c * n, n), n);
    }
    fn(nq, q8, d8, blocks + bo[c] * 64 * (G + kRowConsts), G, nb, g);
  }
};

Int8Bounds make_int8_bounds(const uint8_t* blocks, const int64_t* bo, const float* cen, int64_t n,
                            const Kernels& kern) {
  Int8Bounds b{blocks, bo, cen, n, groups8(n), kern.bounds8, kern.dist2, {}, {}, {}};
  b.words.assign(kGroup * b.G, 0);
  b.qs.resize(kGroup);
  b.xs.resize(kGroup);
  return b;
}

// ---------------------------------------------------------------------------------------------
// operators

// (C + 1,) block offsets of clusters with the given row offsets: every cluster starts a block
std::vector<int64_t> block_offsets_of(const int64_t* off, int64_t C) {
  std::vector<int64_t> bo(C + 1, 0);
  for (int64_t c = 0; c < C; ++c) bo[c + 1] = bo[c] + (off[c + 1] - off[c] + kLanes - 1) / kLanes;
  return bo;
}

std::tuple<at::Tensor, at::Tensor> ivf_pack_cpu(const at::Tensor& aug, const at::Tensor& offsets) {
  check_cpu_points(aug, "aug");
  const int64_t M = aug.size(0), K = aug.size(1);
  check_offsets_cpu(offsets, M, "offsets");
  const int64_t C = offsets.size(0) - 1;
  const int64_t* off = offsets.data_ptr<int64_t>();
  const std::vector<int64_t> bov = block_offsets_of(off, C);
  at::Tensor boff = at::empty({C + 1}, offsets.options());
  std::copy(bov.begin(), bov.end(), boff.data_ptr<int64_t>());
  const int64_t* bo = bov.data();
  at::Tensor packed = at::zeros({bo[C], K, kLanes}, aug.options());
  const float* a = aug.data_ptr<float>();
  float* p = packed.data_ptr<float>();
  at::parallel_for(0, C, 16, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      for (int64_t r = off[c]; r < off[c + 1]; ++r) {
        const int64_t j = r - off[c], b = bo[c] + j / kLanes, l = j % kLanes;
        for (int64_t d = 0; d < K; ++d) p[(b * K + d) * kLanes + l] = a[r * K + d];
      }
    }
  });
  return {packed, boff};
}

// one row's int8 code and constants into lane l of block p (see the file comment)
void pack8_row(const float* y, const float* m, int64_t n, bool euclidean, double m_norm, uint8_t* p, int64_t l) {
  const int64_t G = groups8(n);
  double amax = 0.0;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(double(y[i]) - double(m[i])));
  float s = static_cast<float>(amax / 127.0);
  if (!(s > 0.0f) || !std::isfinite(s)) s = 1.0f;
  const double inv = 1.0 / double(s);
  double r2 = 0.0, mr = 0.0, e2 = 0.0, c2 = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    const double r = double(y[i]) - double(m[i]);  // exact
    const int v = code8(r * inv);
    p[64 * (i / 4) + 4 * l + i % 4] = static_cast<uint8_t>(v + 128);
    const double e = r - double(s) * v;
    r2 += r * r;
    mr += double(m[i]) * r;
    e2 += e * e;
    c2 += double(v) * double(v);
  }
  const double rn = std::sqrt(r2) * (1.0 + 1e-12), en = std::sqrt(e2) * (1.0 + 1e-12), rcn = std::sqrt(c2);
  const double c = inv_one_minus_sq(row_sq(y, n), euclidean), dl = kDelta8;
  float* cst = reinterpret_cast<float*>(p + 64 * G);
  cst[l] = round_down(c * (1.0 - dl));
  cst[kLanes + l] = round_down(c * ((1.0 - dl) * r2 + 2.0 * mr - 2.0 * dl * m_norm * rn));
  cst[2 * kLanes + l] = static_cast<float>(2.0 * c * double(s));
  cst[3 * kLanes + l] = round_up(c * (2.0 * double(s) * rcn + 2.0 * dl * (rn + en)) * (1.0 + dl));
  cst[4 * kLanes + l] = round_up(c * (2.0 * en + 2.0 * dl * (rn + en)) * (1.0 + dl));
}

std::tuple<at::Tensor, at::Tensor> ivf_pack8_cpu(const at::Tensor& db, const at::Tensor& offsets,
                                                 const at::Tensor& centroids, bool euclidean) {
  check_cpu_points(db, "db");
  check_cpu_points(centroids, "centroids");
  const int64_t M = db.size(0), n = db.size(1);
  check_offsets_cpu(offsets, M, "offsets");
  const int64_t C = offsets.size(0) - 1;
  TORCH_CHECK(centroids.size(0) == C && centroids.size(1) == n, "centroids must be (n_clusters, dim) = (", C, ", ",
              n, "), got ", centroids.sizes());
  TORCH_CHECK(n <= kMaxDim8, "ivf_pack8 supports dimensions up to ", kMaxDim8, ", got ", n);
  const int64_t* off = offsets.data_ptr<int64_t>();
  const std::vector<int64_t> bov = block_offsets_of(off, C);
  at::Tensor boff = at::empty({C + 1}, offsets.options());
  std::copy(bov.begin(), bov.end(), boff.data_ptr<int64_t>());
  const int64_t* bo = bov.data();
  const int64_t G = groups8(n), S = stride8(n);
  // padding: codes 128 (= code 0), constants 0 (padding lanes are masked out by the scan)
  at::Tensor blocks = at::zeros({bo[C], S}, db.options().dtype(at::kByte));
  uint8_t* bp = blocks.data_ptr<uint8_t>();
  for (int64_t b = 0; b < bo[C]; ++b) std::memset(bp + b * S, 128, 64 * G);
  const float* y = db.data_ptr<float>();
  const float* cen = centroids.data_ptr<float>();
  at::parallel_for(0, C, 16, [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const double mn = std::sqrt(row_sq(cen + c * n, n)) * (1.0 + 1e-12);
      for (int64_t r = off[c]; r < off[c + 1]; ++r) {
        const int64_t j = r - off[c];
        pack8_row(y + r * n, cen + c * n, n, euclidean, mn, bp + (bo[c] + j / kLanes) * S, j % kLanes);
      }
    }
  });
  return {blocks, boff};
}

void check_packed(const at::Tensor& packed, int64_t K, const char* name) {
  TORCH_CHECK(packed.device().is_cpu() && packed.scalar_type() == at::kFloat && packed.dim() == 3 &&
                  packed.size(1) == K && packed.size(2) == kLanes && packed.is_contiguous(),
              name, " must be the contiguous (blocks, ", K, ", 16) float32 CPU output of ivf_pack, got shape ",
              packed.sizes());
}

void check_blocks8(const at::Tensor& blocks, int64_t n, const char* name) {
  TORCH_CHECK(blocks.device().is_cpu() && blocks.scalar_type() == at::kByte && blocks.dim() == 2 &&
                  blocks.size(1) == stride8(n) && blocks.is_contiguous(),
              name, " must be the contiguous (blocks, ", stride8(n), ") uint8 CPU output of ivf_pack8 for dimension ",
              n, ", got shape ", blocks.sizes(), " and dtype ", blocks.scalar_type());
}

at::Tensor ivf_probe_cpu(const at::Tensor& q, const at::Tensor& cen_aug, int64_t nprobe, bool euclidean) {
  check_cpu_points(q, "q");
  check_cpu_points(cen_aug, "cen_aug");
  const int64_t Q = q.size(0), n = q.size(1), K = n + 2, C = cen_aug.size(0);
  TORCH_CHECK(cen_aug.size(1) == K, "cen_aug must be the (C, ", K, ") knn_prepare output of the centroids, got ",
              cen_aug.sizes());
  TORCH_CHECK(nprobe >= 1, "nprobe must be >= 1, got ", nprobe);
  TORCH_CHECK(C < (int64_t(1) << 32), "ivf_probe supports fewer than 2^32 centroids");
  const int64_t P = std::max<int64_t>(1, std::min(nprobe, C));
  at::Tensor out = at::full({Q, P}, -1, q.options().dtype(at::kLong));
  if (Q == 0 || C == 0) return out;
  (void)euclidean;  // the centroids' augmented rows already carry the geometry
  const Kernels kern = pick_kernels();
  const float* qp = q.data_ptr<float>();
  int64_t* op = out.data_ptr<int64_t>();
  constexpr int64_t kChunk = 128;  // queries per GEMM
  at::parallel_for(0, (Q + kChunk - 1) / kChunk, 1, [&](int64_t c0, int64_t c1) {
    std::vector<float> xa(kChunk * K), g(kChunk * C), mins;
    std::vector<uint32_t> mk(C / kLanes + 1);
    std::vector<uint64_t> buf;
    for (int64_t ch = c0; ch < c1; ++ch) {
      const int64_t i0 = ch * kChunk, m = std::min(kChunk, Q - i0);
      for (int64_t u = 0; u < m; ++u) make_qaug(qp + (i0 + u) * n, n, xa.data() + u * K);
      gemm_nt(xa.data(), m, cen_aug.data_ptr<float>(), C, K, g.data());
      for (int64_t u = 0; u < m; ++u) select_smallest(g.data() + u * C, C, P, kern, mins, mk, buf, op + (i0 + u) * P);
    }
  });
  return out;
}

void check_query_db(const at::Tensor& q, const at::Tensor& db) {
  check_cpu_points(q, "q");
  check_cpu_points(db, "db");
  TORCH_CHECK(db.size(1) == q.size(1), "query dimension ", q.size(1), " != database dimension ", db.size(1));
}

// checks shared by ivf_knn and ivf_knn8; returns the number of clusters
int64_t check_scan_inputs(const at::Tensor& q, const at::Tensor& db, const at::Tensor& block_offsets, int64_t n_blocks,
                          const at::Tensor& ids, const at::Tensor& offsets, const at::Tensor& probes, int64_t k) {
  check_cpu_points(q, "q");
  check_cpu_points(db, "db");
  TORCH_CHECK(k >= 1, "k must be >= 1, got ", k);
  const int64_t Q = q.size(0), n = q.size(1), M = db.size(0);
  TORCH_CHECK(db.size(1) == n, "query dimension ", n, " != database dimension ", db.size(1));
  check_ids_cpu(ids, M, "ids");
  check_offsets_cpu(offsets, M, "offsets");
  const int64_t C = offsets.size(0) - 1;
  check_offsets_cpu(block_offsets, n_blocks, "block_offsets");
  TORCH_CHECK(block_offsets.size(0) == C + 1, "block_offsets must have n_clusters + 1 = ", C + 1, " entries, got ",
              block_offsets.size(0));
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int64_t* bo = block_offsets.data_ptr<int64_t>();
  for (int64_t c = 0; c < C; ++c)
    TORCH_CHECK(bo[c + 1] - bo[c] == (off[c + 1] - off[c] + kLanes - 1) / kLanes,
                "block_offsets do not match offsets at cluster ", c, " (use the block offsets of the pack)");
  TORCH_CHECK(probes.device().is_cpu() && probes.scalar_type() == at::kLong && probes.dim() == 2 &&
                  probes.size(0) == Q && probes.is_contiguous(),
              "probes must be a contiguous (Q, nprobe) int64 CPU tensor with Q = ", Q, " rows");
  const int64_t P = probes.size(1);
  const int64_t* pr = probes.data_ptr<int64_t>();
  for (int64_t i = 0; i < Q * P; ++i)
    TORCH_CHECK(pr[i] >= -1 && pr[i] < C, "probes must hold cluster numbers in [0, ", C, ") or -1, got ", pr[i],
                " at row ", i / std::max<int64_t>(P, 1));
  return C;
}

Scan make_scan(const at::Tensor& q, const at::Tensor& db, const at::Tensor& ids, const at::Tensor& offsets,
               const at::Tensor& block_offsets, const at::Tensor& probes, int64_t C, int64_t k, bool euclidean,
               const Kernels& kern, at::Tensor& D, at::Tensor& I) {
  return Scan{q.data_ptr<float>(), q.size(0), q.size(1), db.data_ptr<float>(), ids.data_ptr<int64_t>(),
              offsets.data_ptr<int64_t>(), block_offsets.data_ptr<int64_t>(), C, probes.data_ptr<int64_t>(),
              probes.size(1), k, euclidean, kern.masks, D.data_ptr<float>(), I.data_ptr<int64_t>()};
}

std::tuple<at::Tensor, at::Tensor> ivf_knn_cpu(const at::Tensor& q, const at::Tensor& db, const at::Tensor& packed,
                                               const at::Tensor& block_offsets, const at::Tensor& ids,
                                               const at::Tensor& offsets, const at::Tensor& probes, int64_t k,
                                               bool euclidean) {
  check_query_db(q, db);
  check_packed(packed, q.size(1) + 2, "packed");
  const int64_t C = check_scan_inputs(q, db, block_offsets, packed.size(0), ids, offsets, probes, k);
  at::Tensor D = at::empty({q.size(0), k}, q.options());
  at::Tensor I = at::empty({q.size(0), k}, q.options().dtype(at::kLong));
  if (q.size(0) == 0) return {D, I};
  const Kernels kern = pick_kernels();
  const Scan a = make_scan(q, db, ids, offsets, block_offsets, probes, C, k, euclidean, kern, D, I);
  const int64_t n = q.size(1);
  scan_groups<FloatBounds>(a, [&] {
    return FloatBounds{packed.data_ptr<float>(), a.bo, n, n + 2, kern.dotsn, std::vector<float>(kGroup * (n + 2))};
  });
  return {D, I};
}

void check_centroids8(const at::Tensor& centroids, int64_t C, int64_t n) {
  check_cpu_points(centroids, "centroids");
  TORCH_CHECK(centroids.size(0) == C && centroids.size(1) == n, "centroids must be the (n_clusters, dim) = (", C,
              ", ", n, ") reference points given to ivf_pack8, got ", centroids.sizes());
}

std::tuple<at::Tensor, at::Tensor> ivf_knn8_cpu(const at::Tensor& q, const at::Tensor& db, const at::Tensor& blocks,
                                                const at::Tensor& block_offsets, const at::Tensor& centroids,
                                                const at::Tensor& ids, const at::Tensor& offsets,
                                                const at::Tensor& probes, int64_t k, bool euclidean) {
  check_query_db(q, db);
  const int64_t n = q.size(1);
  check_blocks8(blocks, n, "blocks");
  const int64_t C = check_scan_inputs(q, db, block_offsets, blocks.size(0), ids, offsets, probes, k);
  check_centroids8(centroids, C, n);
  at::Tensor D = at::empty({q.size(0), k}, q.options());
  at::Tensor I = at::empty({q.size(0), k}, q.options().dtype(at::kLong));
  if (q.size(0) == 0) return {D, I};
  const Kernels kern = pick_kernels();
  const Scan a = make_scan(q, db, ids, offsets, block_offsets, probes, C, k, euclidean, kern, D, I);
  scan_groups<Int8Bounds>(a, [&] {
    return make_int8_bounds(blocks.data_ptr<uint8_t>(), a.bo, centroids.data_ptr<float>(), n, kern);
  });
  return {D, I};
}

// (Q, M) lower bounds of every query against every row (sorted order) from the int8 blocks
at::Tensor ivf_bounds8_cpu(const at::Tensor& q, const at::Tensor& blocks, const at::Tensor& block_offsets,
                           const at::Tensor& centroids, const at::Tensor& offsets) {
  check_cpu_points(q, "q");
  const int64_t Q = q.size(0), n = q.size(1);
  check_blocks8(blocks, n, "blocks");
  TORCH_CHECK(offsets.device().is_cpu() && offsets.scalar_type() == at::kLong && offsets.dim() == 1 &&
                  offsets.size(0) >= 1 && offsets.is_contiguous(),
              "offsets must be a contiguous 1-D int64 CPU tensor");
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int64_t C = offsets.size(0) - 1, M = off[C];
  check_offsets_cpu(offsets, M, "offsets");
  check_offsets_cpu(block_offsets, blocks.size(0), "block_offsets");
  TORCH_CHECK(block_offsets.size(0) == C + 1, "block_offsets must have n_clusters + 1 entries");
  const std::vector<int64_t> bov = block_offsets_of(off, C);
  TORCH_CHECK(std::equal(bov.begin(), bov.end(), block_offsets.data_ptr<int64_t>()),
              "block_offsets do not match offsets (use the block offsets of ivf_pack8)");
  check_centroids8(centroids, C, n);
  at::Tensor out = at::empty({Q, M}, q.options());
  if (Q == 0 || M == 0) return out;
  const Kernels kern = pick_kernels();
  int64_t max_blocks = 1;
  for (int64_t c = 0; c < C; ++c) max_blocks = std::max(max_blocks, bov[c + 1] - bov[c]);
  const float* qp = q.data_ptr<float>();
  float* op = out.data_ptr<float>();
  at::parallel_for(0, Q, 1, [&](int64_t i0, int64_t i1) {
    Int8Bounds bnd = make_int8_bounds(blocks.data_ptr<uint8_t>(), bov.data(), centroids.data_ptr<float>(), n, kern);
    std::vector<float> g(max_blocks * kLanes);
    const int64_t u0 = 0;
    for (int64_t i = i0; i < i1; ++i) {
      bnd.query(0, qp + i * n);
      for (int64_t c = 0; c < C; ++c) {
        const int64_t rows = off[c + 1] - off[c];
        if (rows == 0) continue;
        float* gp = g.data();
        bnd.bounds(&u0, 1, c, bov[c + 1] - bov[c], &gp);
        std::memcpy(op + i * M + off[c], gp, sizeof(float) * rows);
      }
    }
  });
  return out;
}

}  // namespace
}  // namespace cpu
}  // namespace xhyp

TORCH_LIBRARY_IMPL(xhyp_ext, CPU, m) {
  m.impl("ivf_pack", &xhyp::cpu::ivf_pack_cpu);
  m.impl("ivf_probe", &xhyp::cpu::ivf_probe_cpu);
  m.impl("ivf_knn", &xhyp::cpu::ivf_knn_cpu);
  m.impl("ivf_pack8", &xhyp::cpu::ivf_pack8_cpu);
  m.impl("ivf_knn8", &xhyp::cpu::ivf_knn8_cpu);
  m.impl("ivf_bounds8", &xhyp::cpu::ivf_bounds8_cpu);
}
