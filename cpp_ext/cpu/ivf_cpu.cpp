// CPU kernels of the "ann" index: an inverted-file (IVF) search with a query-major scan.
//
// Layout
// ------
// The database rows are sorted by cluster (cluster c = rows offsets[c]:offsets[c+1]) and their
// augmented rows (knn_prepare, K = n + 2 floats: [-2 c y, (1 - 2 gamma) c, (1 - 2 gamma) c |y|^2],
// see knn_cpu.cpp) are packed by ivf_pack into blocks of 16 rows stored dimension-major
// ((B, K, 16) floats, every cluster starting a new block, padding lanes zero). For a query with
// augmented row [x, |x|^2, 1], the dot product with a row's augmented row is the rigorous float32
// lower bound g <= t(y) = c(y) |x - y|^2 of knn_cpu.cpp (the same rounding bound holds for any
// summation order, fused multiply-adds included).
//
// Search (ivf_probe + ivf_knn)
// ----------------------------
// 1. ivf_probe: each query's nprobe nearest centroids by the same bound g against the packed
//    centroids (one pass over C centroids, a bounded max-heap), nearest first.
// 2. ivf_knn: queries are ordered by their nearest centroid (queries that probe the same
//    clusters run one after another on a thread, so the clusters stay in cache) and each query
//    scans its probed clusters nearest first with ONE top-k heap shared by all its probes: g of
//    16 rows at a time (AVX-512 when the CPU has it, else portable code), and only rows with
//    g <= the heap's k-th t get their exact t computed in double from the float32 coordinates.
//    The result is the exact top-k (ties: lower id) of the union of the probed clusters.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <ATen/ops/full.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define XHYP_X86 1
#endif

#include "xhyp_checks.h"
#include "xhyp_common.h"
#include "xhyp_topk.h"

namespace xhyp {
namespace cpu {
namespace {

constexpr int64_t kLanes = 16;
using namespace topk;  // Cand, the heap, row_sq, exact_t (xhyp_topk.h)
constexpr float kInfF = topk::kInf;

// g of one query (xa: K floats) against blocks [0, nb) of packed rows (nb * K * 16 floats).
void block_dots_generic(const float* xa, const float* blk, int64_t K, int64_t nb, float* g) {
  for (int64_t b = 0; b < nb; ++b) {
    float acc[kLanes] = {0};
    const float* p = blk + b * K * kLanes;
    for (int64_t d = 0; d < K; ++d) {
      const float xd = xa[d];
#pragma omp simd
      for (int64_t l = 0; l < kLanes; ++l) acc[l] += xd * p[d * kLanes + l];
    }
    std::memcpy(g + b * kLanes, acc, sizeof(acc));
  }
}

#ifdef XHYP_X86
__attribute__((target("avx512f,fma"))) void block_dots_avx512(const float* xa, const float* blk, int64_t K,
                                                              int64_t nb, float* g) {
  const int64_t S = K * kLanes;
  int64_t b = 0;
  for (; b + 4 <= nb; b += 4) {  // four independent accumulators hide the FMA latency
    const float* p = blk + b * S;
    __m512 a0 = _mm512_setzero_ps(), a1 = _mm512_setzero_ps(), a2 = _mm512_setzero_ps(), a3 = _mm512_setzero_ps();
    for (int64_t d = 0; d < K; ++d) {
      const __m512 xd = _mm512_set1_ps(xa[d]);
      a0 = _mm512_fmadd_ps(xd, _mm512_loadu_ps(p + d * kLanes), a0);
      a1 = _mm512_fmadd_ps(xd, _mm512_loadu_ps(p + S + d * kLanes), a1);
      a2 = _mm512_fmadd_ps(xd, _mm512_loadu_ps(p + 2 * S + d * kLanes), a2);
      a3 = _mm512_fmadd_ps(xd, _mm512_loadu_ps(p + 3 * S + d * kLanes), a3);
    }
    _mm512_storeu_ps(g + b * kLanes, a0);
    _mm512_storeu_ps(g + (b + 1) * kLanes, a1);
    _mm512_storeu_ps(g + (b + 2) * kLanes, a2);
    _mm512_storeu_ps(g + (b + 3) * kLanes, a3);
  }
  for (; b < nb; ++b) {
    const float* p = blk + b * S;
    __m512 a0 = _mm512_setzero_ps();
    for (int64_t d = 0; d < K; ++d) a0 = _mm512_fmadd_ps(_mm512_set1_ps(xa[d]), _mm512_loadu_ps(p + d * kLanes), a0);
    _mm512_storeu_ps(g + b * kLanes, a0);
  }
}
#endif

// g of nq (<= 4) queries xa[0..nq) against blocks [0, nb): g[u][b * 16 + lane]
void block_dotsn_generic(int nq, const float* const* xa, const float* blk, int64_t K, int64_t nb, float* const* g) {
  for (int u = 0; u < nq; ++u) block_dots_generic(xa[u], blk, K, nb, g[u]);
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

using DotsFn = void (*)(const float*, const float*, int64_t, int64_t, float*);
using DotsNFn = void (*)(int, const float* const*, const float*, int64_t, int64_t, float* const*);
using MasksFn = void (*)(const float*, int64_t, float, uint32_t*);

struct Kernels {
  DotsFn dots = &block_dots_generic;
  DotsNFn dotsn = &block_dotsn_generic;
  MasksFn masks = &block_masks_generic;
};

Kernels pick_kernels() {
  Kernels k;
#ifdef XHYP_X86
  if (__builtin_cpu_supports("avx512f")) {
    k.dots = &block_dots_avx512;
    k.dotsn = &block_dotsn_avx512;
    k.masks = &block_masks_avx512;
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

// ---------------------------------------------------------------------------------------------
// operators

std::tuple<at::Tensor, at::Tensor> ivf_pack_cpu(const at::Tensor& aug, const at::Tensor& offsets) {
  check_cpu_points(aug, "aug");
  const int64_t M = aug.size(0), K = aug.size(1);
  check_offsets_cpu(offsets, M, "offsets");
  const int64_t C = offsets.size(0) - 1;
  const int64_t* off = offsets.data_ptr<int64_t>();
  at::Tensor boff = at::empty({C + 1}, offsets.options());
  int64_t* bo = boff.data_ptr<int64_t>();
  bo[0] = 0;
  for (int64_t c = 0; c < C; ++c) bo[c + 1] = bo[c] + (off[c + 1] - off[c] + kLanes - 1) / kLanes;
  const int64_t B = bo[C];
  at::Tensor packed = at::zeros({B, K, kLanes}, aug.options());
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

void check_packed(const at::Tensor& packed, int64_t K, const char* name) {
  TORCH_CHECK(packed.device().is_cpu() && packed.scalar_type() == at::kFloat && packed.dim() == 3 &&
                  packed.size(1) == K && packed.size(2) == kLanes && packed.is_contiguous(),
              name, " must be the contiguous (blocks, ", K, ", 16) float32 CPU output of ivf_pack, got shape ",
              packed.sizes());
}

at::Tensor ivf_probe_cpu(const at::Tensor& q, const at::Tensor& cen_aug, int64_t nprobe, bool euclidean) {
  check_cpu_points(q, "q");
  check_cpu_points(cen_aug, "cen_aug");
  const int64_t Q = q.size(0), n = q.size(1), K = n + 2, C = cen_aug.size(0);
  TORCH_CHECK(cen_aug.size(1) == K, "cen_aug must be the (C, ", K, ") knn_prepare output of the centroids, got ",
              cen_aug.sizes());
  TORCH_CHECK(nprobe >= 1, "nprobe must be >= 1, got ", nprobe);
  const int64_t P = std::max<int64_t>(1, std::min(nprobe, C));
  at::Tensor out = at::full({Q, P}, -1, q.options().dtype(at::kLong));
  if (Q == 0 || C == 0) return out;
  (void)euclidean;  // the centroids' augmented rows already carry the geometry
  const Kernels kern = pick_kernels();
  const float* qp = q.data_ptr<float>();
  int64_t* op = out.data_ptr<int64_t>();
  constexpr int64_t kChunk = 128;  // queries per GEMM
  const int64_t nb = C / kLanes;   // full blocks of 16 centroids (the tail is compared one by one)
  at::parallel_for(0, (Q + kChunk - 1) / kChunk, 1, [&](int64_t c0, int64_t c1) {
    std::vector<float> xa(kChunk * K), g(kChunk * C);
    std::vector<uint32_t> mk(1);
    auto opts = at::TensorOptions().dtype(at::kFloat);
    // selection: a buffer of up to 2P candidates below a threshold; when it fills up, keep its P
    // best and lower the threshold to the P-th (amortised O(C) work, no per-candidate heap op)
    std::vector<std::pair<float, int64_t>> buf;
    buf.reserve(2 * P + kLanes);
    auto less = [](const std::pair<float, int64_t>& a, const std::pair<float, int64_t>& b) {
      return a.first < b.first || (a.first == b.first && a.second < b.second);
    };
    for (int64_t ch = c0; ch < c1; ++ch) {
      const int64_t i0 = ch * kChunk, m = std::min(kChunk, Q - i0);
      for (int64_t u = 0; u < m; ++u) make_qaug(qp + (i0 + u) * n, n, xa.data() + u * K);
      at::Tensor gt = at::from_blob(g.data(), {m, C}, opts);
      at::mm_out(gt, at::from_blob(xa.data(), {m, K}, opts), cen_aug.t());
      for (int64_t u = 0; u < m; ++u) {
        const float* gr = g.data() + u * C;
        buf.clear();
        float thr = kInfF;  // candidates with g <= thr are kept (ties: resolved by the final sort)
        auto take = [&](int64_t cc) {
          buf.emplace_back(gr[cc], cc);
          if ((int64_t)buf.size() >= 2 * P) {
            std::nth_element(buf.begin(), buf.begin() + (P - 1), buf.end(), less);
            buf.resize(P);
            thr = buf[P - 1].first;
          }
        };
        for (int64_t blk = 0; blk < nb; ++blk) {
          kern.masks(gr + blk * kLanes, 1, thr, mk.data());
          for (uint32_t bits = mk[0]; bits; bits &= bits - 1) {
            const int64_t cc = blk * kLanes + __builtin_ctz(bits);
            if (gr[cc] <= thr) take(cc);
          }
        }
        for (int64_t cc = nb * kLanes; cc < C; ++cc)
          if (gr[cc] <= thr) take(cc);
        const int64_t r = std::min<int64_t>(P, static_cast<int64_t>(buf.size()));
        std::partial_sort(buf.begin(), buf.begin() + r, buf.end(), less);
        for (int64_t j = 0; j < r; ++j) op[(i0 + u) * P + j] = buf[j].second;
      }
    }
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> ivf_knn_cpu(const at::Tensor& q, const at::Tensor& db, const at::Tensor& packed,
                                               const at::Tensor& block_offsets, const at::Tensor& ids,
                                               const at::Tensor& offsets, const at::Tensor& probes, int64_t k,
                                               bool euclidean) {
  check_cpu_points(q, "q");
  check_cpu_points(db, "db");
  TORCH_CHECK(k >= 1, "k must be >= 1, got ", k);
  const int64_t Q = q.size(0), n = q.size(1), K = n + 2, M = db.size(0);
  TORCH_CHECK(db.size(1) == n, "query dimension ", n, " != database dimension ", db.size(1));
  check_packed(packed, K, "packed");
  check_ids_cpu(ids, M, "ids");
  check_offsets_cpu(offsets, M, "offsets");
  const int64_t C = offsets.size(0) - 1;
  check_offsets_cpu(block_offsets, packed.size(0), "block_offsets");
  TORCH_CHECK(block_offsets.size(0) == C + 1, "block_offsets must have n_clusters + 1 = ", C + 1, " entries, got ",
              block_offsets.size(0));
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int64_t* bo = block_offsets.data_ptr<int64_t>();
  for (int64_t c = 0; c < C; ++c)
    TORCH_CHECK(bo[c + 1] - bo[c] == (off[c + 1] - off[c] + kLanes - 1) / kLanes,
                "block_offsets do not match offsets at cluster ", c, " (use ivf_pack)");
  TORCH_CHECK(probes.device().is_cpu() && probes.scalar_type() == at::kLong && probes.dim() == 2 &&
                  probes.size(0) == Q && probes.is_contiguous(),
              "probes must be a contiguous (Q, nprobe) int64 CPU tensor with Q = ", Q, " rows");
  const int64_t P = probes.size(1);
  const int64_t* pr = probes.data_ptr<int64_t>();
  for (int64_t i = 0; i < Q * P; ++i)
    TORCH_CHECK(pr[i] >= -1 && pr[i] < C, "probes must hold cluster numbers in [0, ", C, ") or -1, got ", pr[i],
                " at row ", i / std::max<int64_t>(P, 1));

  at::Tensor D = at::empty({Q, k}, q.options());
  at::Tensor I = at::empty({Q, k}, q.options().dtype(at::kLong));
  if (Q == 0) return {D, I};
  int64_t max_blocks = 0;
  for (int64_t c = 0; c < C; ++c) max_blocks = std::max(max_blocks, bo[c + 1] - bo[c]);

  // query order: by nearest probed cluster (counting sort, stable), queries without probes last
  std::vector<int64_t> order(Q), start(C + 2, 0);
  for (int64_t i = 0; i < Q; ++i) ++start[(P > 0 && pr[i * P] >= 0 ? pr[i * P] : C) + 1];
  for (int64_t c = 0; c <= C; ++c) start[c + 1] += start[c];
  for (int64_t i = 0; i < Q; ++i) order[start[(P > 0 && pr[i * P] >= 0 ? pr[i * P] : C)]++] = i;

  const Kernels kern = pick_kernels();
  const float* qp = q.data_ptr<float>();
  const float* dbp = db.data_ptr<float>();
  const float* pk = packed.data_ptr<float>();
  const int64_t* idp = ids.data_ptr<int64_t>();
  float* Dp = D.data_ptr<float>();
  int64_t* Ip = I.data_ptr<int64_t>();

  // work groups: up to kGroup consecutive queries of `order` with the same nearest cluster; a
  // group scans the union of its queries' probes cluster by cluster (nearest-ranked first), the
  // queries that probe a cluster together (each block of rows is loaded once for up to 4 queries)
  constexpr int64_t kGroup = 16;
  std::vector<int64_t> gstart;
  for (int64_t w = 0; w < Q;) {
    gstart.push_back(w);
    const int64_t c0 = P > 0 ? pr[order[w] * P] : -1;
    int64_t e = w + 1;
    while (e < Q && e - w < kGroup && (P > 0 ? pr[order[e] * P] : -1) == c0) ++e;
    w = e;
  }
  gstart.push_back(Q);
  const int64_t n_groups = static_cast<int64_t>(gstart.size()) - 1;
  const int nt = static_cast<int>(std::min<int64_t>(num_threads(), std::max<int64_t>(1, n_groups / 4)));
#pragma omp parallel num_threads(nt)
  {
    std::vector<float> xa(kGroup * K), g(kGroup * std::max<int64_t>(1, max_blocks) * kLanes);
    std::vector<uint32_t> mk(std::max<int64_t>(1, max_blocks));
    std::vector<Cand> heap(kGroup * k);
    std::vector<int64_t> cnt(kGroup);
    std::vector<int32_t> slot(std::max<int64_t>(C, 1), -1);
    struct Entry {
      int64_t c, rank;
      uint32_t mask;
    };
    std::vector<Entry> ent;
#pragma omp for schedule(dynamic, 4)
    for (int64_t gi = 0; gi < n_groups; ++gi) {
      const int64_t w0 = gstart[gi], ng = gstart[gi + 1] - w0;
      ent.clear();
      for (int64_t u = 0; u < ng; ++u) {
        const int64_t i = order[w0 + u];
        make_qaug(qp + i * n, n, xa.data() + u * K);
        cnt[u] = 0;
        for (int64_t p = 0; p < P; ++p) {
          const int64_t c = pr[i * P + p];
          if (c < 0) continue;
          if (slot[c] < 0) {
            slot[c] = static_cast<int32_t>(ent.size());
            ent.push_back({c, p, 0u});
          }
          Entry& e = ent[slot[c]];
          e.mask |= 1u << u;  // a repeated probe sets the same bit: scanned once
          e.rank = std::min(e.rank, p);
        }
      }
      for (const Entry& e : ent) slot[e.c] = -1;
      std::stable_sort(ent.begin(), ent.end(), [](const Entry& a, const Entry& b) { return a.rank < b.rank; });
      for (const Entry& e : ent) {
        const int64_t c = e.c, r0 = off[c], rows = off[c + 1] - r0, nb = bo[c + 1] - bo[c];
        if (rows == 0) continue;
        const float* blk = pk + bo[c] * K * kLanes;
        int64_t us[kGroup];
        int64_t nu = 0;
        for (uint32_t m = e.mask; m; m &= m - 1) us[nu++] = __builtin_ctz(m);
        const int64_t gs = max_blocks * kLanes;
        for (int64_t a = 0; a < nu; a += 4) {
          const int nq = static_cast<int>(std::min<int64_t>(4, nu - a));
          const float* xs[4];
          float* gq4[4];
          for (int v = 0; v < nq; ++v) {
            xs[v] = xa.data() + us[a + v] * K;
            gq4[v] = g.data() + us[a + v] * gs;
          }
          kern.dotsn(nq, xs, blk, K, nb, gq4);
        }
        const uint32_t last = rows % kLanes ? (1u << (rows % kLanes)) - 1u : 0xFFFFu;
        for (int64_t v = 0; v < nu; ++v) {
          const int64_t u = us[v], i = order[w0 + u];
          const float* x = qp + i * n;
          const float* gq = g.data() + u * gs;
          Cand* h = heap.data() + u * k;
          float thr = heap_threshold(h, cnt[u], k);
          kern.masks(gq, nb, thr, mk.data());
          mk[nb - 1] &= last;
          for (int64_t b = 0; b < nb; ++b) {
            for (uint32_t m = mk[b]; m; m &= m - 1) {
              const int64_t j = b * kLanes + __builtin_ctz(m);
              if (!(gq[j] <= thr)) continue;
              const int64_t row = r0 + j;
              heap_offer(h, cnt[u], k, exact_t(x, dbp + row * n, n, euclidean), idp[row]);
              thr = heap_threshold(h, cnt[u], k);
            }
          }
        }
      }
      for (int64_t u = 0; u < ng; ++u) {
        const int64_t i = order[w0 + u];
        Cand* h = heap.data() + u * k;
        std::sort(h, h + cnt[u], before);
        const double cx = inv_one_minus_sq(row_sq(qp + i * n, n), euclidean);
        for (int64_t r = 0; r < k; ++r) {
          if (r < cnt[u]) {
            Dp[i * k + r] = static_cast<float>(dist_from_s(h[r].t * cx, euclidean));
            Ip[i * k + r] = h[r].id;
          } else {
            Dp[i * k + r] = kInfF;
            Ip[i * k + r] = -1;
          }
        }
      }
    }
  }
  return {D, I};
}

}  // namespace
}  // namespace cpu
}  // namespace xhyp

TORCH_LIBRARY_IMPL(xhyp_ext, CPU, m) {
  m.impl("ivf_pack", &xhyp::cpu::ivf_pack_cpu);
  m.impl("ivf_probe", &xhyp::cpu::ivf_probe_cpu);
  m.impl("ivf_knn", &xhyp::cpu::ivf_knn_cpu);
}
