// CPU kernels: pairwise Poincaré distance, fused exact kNN and centroid-clustered kNN.
//
// Fused kNN (no Q x M distance matrix is ever materialised)
// ----------------------------------------------------------
// For a query x the ranking quantity is t(y) = c(y) |x - y|^2 with c(y) = 1 / (1 - |y|^2) (the
// Poincaré distance is monotone in t; Euclidean: c = 1).  Work is split into items of at most
// 64 (up to 1024 for short runs) queries x one contiguous run of database rows, processed in
// tiles of kDbTile rows:
//
//   1. one small GEMM (gemm_nt: at::mm_out, i.e. the BLAS torch ships: MKL/OpenBLAS with their own
//      run-time CPU dispatch, single-threaded because it runs inside our OpenMP region) gives,
//      for every (query, row) pair of the tile,
//          g = [x, |x|^2, 1] . [-2 c y, (1 - 2 gamma) c, (1 - 2 gamma) c |y|^2]
//            = c ((1 - 2 gamma)(|x|^2 + |y|^2) - 2 <x, y>),
//      a rigorous lower bound of t: gamma = 2 (n + 4) 2^-24 covers the float32 rounding of the
//      products and the sum (|error| <= (n + 2) 2^-24 c (|x| + |y|)^2, Higham 2002, eq. 3.5);
//   2. a vectorised pass compares g with the threshold of the query's running top-k (a max-heap
//      of (t, id)); only rows with g <= threshold (a few per query once the heap is full) get
//      their exact t computed from the float32 coordinates in double precision, and enter the
//      heap if better.
//
// Because g never exceeds t, no true neighbour can be filtered out by the GEMM's cancellation
// (which is severe for close pairs near the boundary: |x - y|^2 ~ 1e-10 vs float32 rounding of
// |x|^2 + |y|^2 ~ 1e-7); where the bound is loose, more rows are re-checked exactly, so the
// kernel stays exact and just gets slower on such data. The returned neighbours are the exact
// top-k of the float32 inputs (ties: lower id first), distances computed in double from t.
//
// Clustered kNN (Gerald & Baskiotis, CAp 2019, section 2.6)
// ----------------------------------------------------------
// The database rows arrive sorted by cluster. Each query first finds its nprobe nearest
// centroids (the same fused kernel, centroids as database), then the (query, probe) pairs are
// grouped by cluster, and each (cluster, block of queries) is one work item of the fused scan
// above, writing into the heap of its (query, probe) slot; the nprobe heaps of a query are merged
// at the end. Work items run under OpenMP with dynamic scheduling, largest first.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "xhyp_checks.h"
#include "xhyp_common.h"
#include "xhyp_cpu_gemm.h"
#include "xhyp_plan.h"
#include "xhyp_topk.h"

namespace xhyp {
namespace cpu {
namespace {

constexpr int64_t kQueryBlock = 64;    // queries per GEMM (rows of the tile) for long row ranges
constexpr int64_t kDbTile = 4096;      // database rows per GEMM (columns of the tile)
constexpr int64_t kTileFloats = kQueryBlock * kDbTile;  // GEMM output tile: 1 MiB, fits in L2
constexpr int64_t kMaxQueryBlock = 1024;  // queries per GEMM for short ranges (small clusters)

// queries per work item for a run of `rows` database rows: keep the tile at kTileFloats
inline int64_t query_block(int64_t rows) {
  const int64_t mt = std::max<int64_t>(1, std::min(kDbTile, rows));
  return std::max(kQueryBlock, std::min(kMaxQueryBlock, kTileFloats / mt));
}
constexpr int64_t kHeapBytes = int64_t(1) << 28;  // bound on the heaps of one query batch
using namespace topk;  // Cand, the heap, row_sq, exact_t (xhyp_topk.h)

inline double gamma_bound(int64_t n) { return kGammaUlps * double(n + 4) * std::ldexp(1.0, -24); }

int num_threads() { return std::max(1, at::get_num_threads()); }

// database rows -> (M, n + 2) augmented rows (see the file comment)
void make_db_aug(const float* db, int64_t M, int64_t n, bool euclidean, float* aug) {
  const int64_t K = n + 2;
  const double one_m_2g = 1.0 - 2.0 * gamma_bound(n);
  at::parallel_for(0, M, 1024, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) {
      const float* y = db + j * n;
      float* a = aug + j * K;
      double yn = row_sq(y, n);
      double c = inv_one_minus_sq(yn, euclidean);
      for (int64_t i = 0; i < n; ++i) a[i] = static_cast<float>(-2.0 * double(y[i]) * c);
      a[n] = static_cast<float>(one_m_2g * c);
      a[n + 1] = static_cast<float>(one_m_2g * yn * c);
    }
  });
}

// queries -> (Q, n + 2) rows [x, |x|^2, 1] and c(x) in double
void make_q_aug(const float* q, int64_t Q, int64_t n, bool euclidean, float* qaug, double* cx) {
  const int64_t K = n + 2;
  at::parallel_for(0, Q, 1024, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) {
      const float* x = q + j * n;
      float* a = qaug + j * K;
      double xn = row_sq(x, n);
      std::memcpy(a, x, sizeof(float) * n);
      a[n] = static_cast<float>(xn);
      a[n + 1] = 1.0f;
      cx[j] = inv_one_minus_sq(xn, euclidean);
    }
  });
}

struct Problem {
  const float* q;     // (Q, n)
  const float* qaug;  // (Q, n + 2)
  int64_t n;
  const float* db;       // (M, n)
  const float* aug;      // (M, n + 2)
  const int64_t* ids;    // (M,) original ids, or nullptr for the identity
  int64_t k;
  bool euclidean;
};

// One work item: database rows [r0, r1) against queries lq[0..nq) whose heaps are slots ls[0..nq).
// qthr (nullable): per-query float threshold; rows whose bound exceeds it are skipped even while
// the slot's heap is not full (an upper bound of the query's k-th best t from an earlier pass).
void scan_item(const Problem& P, int64_t r0, int64_t r1, const int64_t* lq, const int64_t* ls,
               int64_t nq, Cand* heaps, int32_t* counts, float* xb, float* gb, const float* qthr) {
  const int64_t n = P.n, K = n + 2, k = P.k;
  for (int64_t a = 0; a < nq; ++a) std::memcpy(xb + a * K, P.qaug + lq[a] * K, sizeof(float) * K);
  for (int64_t t0 = r0; t0 < r1; t0 += kDbTile) {
    const int64_t mt = std::min(kDbTile, r1 - t0);
    gemm_nt(xb, nq, P.aug + t0 * K, mt, K, gb);
    for (int64_t a = 0; a < nq; ++a) {
      Cand* h = heaps + ls[a] * k;
      int32_t& cnt = counts[ls[a]];
      const float* x = P.q + lq[a] * n;
      const float* g = gb + a * mt;
      const float cap = qthr ? qthr[lq[a]] : kInf;
      float thr = std::min(cap, heap_threshold(h, cnt, k));
      for (int64_t j0 = 0; j0 < mt; j0 += 16) {
        const int64_t je = std::min(j0 + 16, mt);
        int any = 0;
#pragma omp simd reduction(| : any)
        for (int64_t j = j0; j < je; ++j) any |= (g[j] <= thr);
        if (!any) continue;
        for (int64_t j = j0; j < je; ++j) {
          if (g[j] <= thr) {
            const int64_t row = t0 + j;
            double t = exact_t(x, P.db + row * n, n, P.euclidean);
            heap_offer(h, cnt, k, t, P.ids ? P.ids[row] : row);
            thr = std::min(cap, heap_threshold(h, cnt, k));
          }
        }
      }
    }
  }
}

struct Item {
  int64_t r0, r1;  // database rows
  int64_t l0, nq;  // range in the (query, slot) lists
};

void run_items(const Problem& P, std::vector<Item>& items, const int64_t* lq, const int64_t* ls,
               Cand* heaps, int32_t* counts, const float* qthr = nullptr) {
  // largest first, then dynamic scheduling
  std::stable_sort(items.begin(), items.end(), [](const Item& a, const Item& b) {
    return (a.r1 - a.r0) * a.nq > (b.r1 - b.r0) * b.nq;
  });
  const int64_t K = P.n + 2;
  const int64_t n_items = static_cast<int64_t>(items.size());
  const int nt = static_cast<int>(std::min<int64_t>(num_threads(), std::max<int64_t>(n_items, 1)));
#pragma omp parallel num_threads(nt)
  {
    std::vector<float> xb(kMaxQueryBlock * K), gb(kTileFloats);
#pragma omp for schedule(dynamic, 1)
    for (int64_t w = 0; w < n_items; ++w) {
      const Item& it = items[w];
      scan_item(P, it.r0, it.r1, lq + it.l0, ls + it.l0, it.nq, heaps, counts, xb.data(), gb.data(), qthr);
    }
  }
}

// merge the nslot heaps of each query into its sorted top-k: distances and ids
void finish(const Cand* heaps, const int32_t* counts, int64_t Qb, int64_t nslot, int64_t k,
            const double* cx, bool euclidean, float* D, int64_t* I) {
  // grain: about 2^14 candidates a chunk (a parallel region costs a barrier, slow on a loaded machine)
  at::parallel_for(0, Qb, std::max<int64_t>(64, (int64_t(1) << 14) / std::max<int64_t>(1, nslot * k)),
                   [&](int64_t b, int64_t e) {
    std::vector<Cand> all;
    for (int64_t q = b; q < e; ++q) {
      all.clear();
      for (int64_t s = 0; s < nslot; ++s) {
        const int64_t slot = q * nslot + s;
        all.insert(all.end(), heaps + slot * k, heaps + slot * k + counts[slot]);
      }
      const int64_t m = std::min<int64_t>(k, static_cast<int64_t>(all.size()));
      std::partial_sort(all.begin(), all.begin() + m, all.end(), before);
      for (int64_t r = 0; r < k; ++r) {
        if (r < m) {
          D[q * k + r] = static_cast<float>(dist_from_s(all[r].t * cx[q], euclidean));
          I[q * k + r] = all[r].id;
        } else {
          D[q * k + r] = kInf;
          I[q * k + r] = -1;
        }
      }
    }
  });
}

int64_t query_batch(int64_t Q, int64_t nslot, int64_t k) {
  int64_t per_query = std::max<int64_t>(1, nslot * k * static_cast<int64_t>(sizeof(Cand)));
  return std::max<int64_t>(kQueryBlock, std::min<int64_t>(Q, kHeapBytes / per_query));
}

at::Tensor prepare_or_use(const at::Tensor& db, const at::Tensor& db_aug, bool euclidean) {
  const int64_t M = db.size(0), n = db.size(1);
  if (db_aug.defined() && db_aug.numel() > 0) {
    TORCH_CHECK(db_aug.scalar_type() == at::kFloat && db_aug.dim() == 2 && db_aug.size(0) == M &&
                    db_aug.size(1) == n + 2 && db_aug.is_contiguous(),
                "db_aug must be the (M, n + 2) float32 output of knn_prepare(db)");
    return db_aug;
  }
  at::Tensor aug = at::empty({M, n + 2}, db.options());
  if (M > 0) make_db_aug(db.data_ptr<float>(), M, n, euclidean, aug.data_ptr<float>());
  return aug;
}

// exact kNN of queries (already augmented) against rows [0, M) of a database
void exact_search(const float* q, const float* qaug, const double* cx, int64_t Q, int64_t n,
                  const float* db, const float* aug, int64_t M, int64_t k, bool euclidean,
                  float* D, int64_t* I) {
  if (Q == 0) return;
  Problem P{nullptr, nullptr, n, db, aug, nullptr, k, euclidean};
  const int64_t QB = query_batch(Q, 1, k);
  std::vector<Cand> heaps(QB * k);
  std::vector<int32_t> counts(QB);
  std::vector<int64_t> lq(QB), ls(QB);
  for (int64_t s = 0; s < QB; ++s) ls[s] = s;
  for (int64_t q0 = 0; q0 < Q; q0 += QB) {
    const int64_t nb = std::min(QB, Q - q0);
    std::fill(counts.begin(), counts.begin() + nb, 0);
    for (int64_t s = 0; s < nb; ++s) lq[s] = s;
    P.q = q + q0 * n;
    P.qaug = qaug + q0 * (n + 2);
    std::vector<Item> items;
    if (M > 0) {
      // split the database too when there are few query blocks, to keep every thread busy
      const int64_t qb = query_block(M);
      const int64_t qblocks = (nb + qb - 1) / qb;
      int64_t dsplit = 1;
      while (qblocks * dsplit < 4 * num_threads() && M / (dsplit * 2) >= 8 * kDbTile) dsplit *= 2;
      // with a database split, one heap per (query, split) slot is needed: handled by running
      // the splits as separate slots below.
      if (dsplit == 1) {
        for (int64_t l0 = 0; l0 < nb; l0 += qb) items.push_back({0, M, l0, std::min(qb, nb - l0)});
        run_items(P, items, lq.data(), ls.data(), heaps.data(), counts.data());
        finish(heaps.data(), counts.data(), nb, 1, k, cx + q0, euclidean, D + q0 * k, I + q0 * k);
      } else {
        std::vector<Cand> sheaps(nb * dsplit * k);
        std::vector<int32_t> scounts(nb * dsplit, 0);
        std::vector<int64_t> slq(nb * dsplit), sls(nb * dsplit);
        const int64_t step = (M + dsplit - 1) / dsplit;
        for (int64_t d = 0; d < dsplit; ++d) {
          for (int64_t s = 0; s < nb; ++s) {
            slq[d * nb + s] = s;
            sls[d * nb + s] = s * dsplit + d;
          }
          const int64_t r0 = d * step, r1 = std::min(M, r0 + step);
          for (int64_t l0 = 0; l0 < nb; l0 += qb) items.push_back({r0, r1, d * nb + l0, std::min(qb, nb - l0)});
        }
        run_items(P, items, slq.data(), sls.data(), sheaps.data(), scounts.data());
        finish(sheaps.data(), scounts.data(), nb, dsplit, k, cx + q0, euclidean, D + q0 * k, I + q0 * k);
      }
    } else {
      finish(heaps.data(), counts.data(), nb, 1, k, cx + q0, euclidean, D + q0 * k, I + q0 * k);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// operators

at::Tensor pairwise_dist_cpu(const at::Tensor& x, const at::Tensor& y, bool euclidean) {
  check_cpu_points(x, "x");
  check_cpu_points(y, "y");
  TORCH_CHECK(x.size(1) == y.size(1), "x and y differ in dimension: ", x.size(1), " vs ", y.size(1));
  const int64_t Q = x.size(0), M = y.size(0), n = x.size(1);
  at::Tensor out = at::empty({Q, M}, x.options());
  if (Q == 0 || M == 0) return out;
  const float* xp = x.data_ptr<float>();
  const float* yp = y.data_ptr<float>();
  float* op = out.data_ptr<float>();
  std::vector<double> cy(M);
  at::parallel_for(0, M, 1024, [&](int64_t b, int64_t e) {
    for (int64_t j = b; j < e; ++j) cy[j] = inv_one_minus_sq(row_sq(yp + j * n, n), euclidean);
  });
  constexpr int64_t JB = 512;
  const int64_t jblocks = (M + JB - 1) / JB;
  at::parallel_for(0, Q * jblocks, 1, [&](int64_t b, int64_t e) {
    for (int64_t w = b; w < e; ++w) {
      const int64_t i = w / jblocks, j0 = (w % jblocks) * JB, j1 = std::min(M, j0 + JB);
      const float* xi = xp + i * n;
      const double cxi = inv_one_minus_sq(row_sq(xi, n), euclidean);
      for (int64_t j = j0; j < j1; ++j) {
        const float* yj = yp + j * n;
        double acc = 0.0;
#pragma omp simd reduction(+ : acc)
        for (int64_t c = 0; c < n; ++c) {
          double d = double(xi[c]) - double(yj[c]);
          acc += d * d;
        }
        op[i * M + j] = static_cast<float>(dist_from_s(euclidean ? acc : acc * cxi * cy[j], euclidean));
      }
    }
  });
  return out;
}

at::Tensor knn_prepare_cpu(const at::Tensor& db, bool euclidean) {
  check_cpu_points(db, "db");
  return prepare_or_use(db, at::Tensor(), euclidean);
}

std::tuple<at::Tensor, at::Tensor> knn_cpu(const at::Tensor& q, const at::Tensor& db,
                                           const at::Tensor& db_aug, int64_t k, bool euclidean) {
  check_cpu_points(q, "q");
  check_cpu_points(db, "db");
  TORCH_CHECK(k >= 1, "k must be >= 1, got ", k);
  TORCH_CHECK(q.size(1) == db.size(1), "query dimension ", q.size(1), " != database dimension ", db.size(1));
  const int64_t Q = q.size(0), M = db.size(0), n = q.size(1);
  at::Tensor aug = prepare_or_use(db, db_aug, euclidean);
  at::Tensor D = at::empty({Q, k}, q.options());
  at::Tensor I = at::empty({Q, k}, q.options().dtype(at::kLong));
  std::vector<float> qaug(Q * (n + 2));
  std::vector<double> cx(Q);
  make_q_aug(q.data_ptr<float>(), Q, n, euclidean, qaug.data(), cx.data());
  exact_search(q.data_ptr<float>(), qaug.data(), cx.data(), Q, n, db.data_ptr<float>(),
               aug.data_ptr<float>(), M, k, euclidean, D.data_ptr<float>(), I.data_ptr<int64_t>());
  return {D, I};
}

std::tuple<at::Tensor, at::Tensor> clustered_knn_cpu(const at::Tensor& q, const at::Tensor& db,
                                                     const at::Tensor& db_aug, const at::Tensor& ids,
                                                     const at::Tensor& offsets, const at::Tensor& centroids,
                                                     int64_t k, int64_t nprobe, bool euclidean) {
  check_cpu_points(q, "q");
  check_cpu_points(db, "db");
  check_cpu_points(centroids, "centroids");
  TORCH_CHECK(k >= 1, "k must be >= 1, got ", k);
  TORCH_CHECK(nprobe >= 1, "nprobe must be >= 1, got ", nprobe);
  const int64_t Q = q.size(0), M = db.size(0), n = q.size(1), C = centroids.size(0);
  TORCH_CHECK(db.size(1) == n && centroids.size(1) == n, "q, db and centroids must have the same dimension");
  check_ids_cpu(ids, M, "ids");
  TORCH_CHECK(offsets.dim() == 1 && offsets.size(0) == C + 1, "offsets must have n_clusters + 1 = ", C + 1,
              " entries, got shape ", offsets.sizes());
  if (C > 0) check_offsets_cpu(offsets, M, "offsets");  // starts at 0, ends at M, never decreases
  const int64_t* off = offsets.data_ptr<int64_t>();

  at::Tensor aug = prepare_or_use(db, db_aug, euclidean);
  at::Tensor D = at::empty({Q, k}, q.options());
  at::Tensor I = at::empty({Q, k}, q.options().dtype(at::kLong));
  if (Q == 0) return {D, I};
  const float* qp = q.data_ptr<float>();
  std::vector<float> qaug(Q * (n + 2));
  std::vector<double> cx(Q);
  make_q_aug(qp, Q, n, euclidean, qaug.data(), cx.data());

  // 1. the nprobe nearest centroids of every query (exact, same kernel)
  const int64_t P_ = std::max<int64_t>(1, std::min(nprobe, C));
  std::vector<int64_t> probe(Q * P_, -1);
  if (C > 0) {
    at::Tensor caug = prepare_or_use(centroids, at::Tensor(), euclidean);
    std::vector<float> cd(Q * P_);
    exact_search(qp, qaug.data(), cx.data(), Q, n, centroids.data_ptr<float>(), caug.data_ptr<float>(), C,
                 P_, euclidean, cd.data(), probe.data());
  }

  // 2. scan the probed clusters, query batches bound the heap memory
  Problem P{nullptr, nullptr, n, db.data_ptr<float>(), aug.data_ptr<float>(), ids.data_ptr<int64_t>(), k, euclidean};
  const int64_t QB = query_batch(Q, P_, k);
  std::vector<Cand> heaps(QB * P_ * k);
  std::vector<int32_t> counts(QB * P_);
  std::vector<int64_t> cstart(C + 1), lq(QB * P_), ls(QB * P_);
  float* Dp = D.data_ptr<float>();
  int64_t* Ip = I.data_ptr<int64_t>();
  std::vector<float> qthr(QB);
  for (int64_t q0 = 0; q0 < Q; q0 += QB) {
    const int64_t nb = std::min(QB, Q - q0);
    std::fill(counts.begin(), counts.begin() + nb * P_, 0);
    P.q = qp + q0 * n;
    P.qaug = qaug.data() + q0 * (n + 2);
    // pass 1 scans every query's nearest cluster (slot 0), pass 2 the other probed clusters with
    // the k-th best t of pass 1 as a cap: most true neighbours are in the nearest cluster, and
    // the cap spares the exact re-check of rows that cannot enter the final top-k
    for (int pass = 0; pass < 2; ++pass) {
      if (pass == 1 && P_ == 1) break;
      // group (query, slot) pairs of this pass by cluster (counting sort, queries ascending)
      std::fill(cstart.begin(), cstart.end(), 0);
      for (int64_t s = 0; s < nb * P_; ++s) {
        const int64_t c = probe[q0 * P_ + s];
        if (c >= 0 && ((s % P_ == 0) == (pass == 0))) ++cstart[c + 1];
      }
      for (int64_t c = 0; c < C; ++c) cstart[c + 1] += cstart[c];
      std::vector<int64_t> fill(cstart.begin(), cstart.end() - (C > 0 ? 1 : 0));
      for (int64_t s = 0; s < nb * P_; ++s) {
        const int64_t c = probe[q0 * P_ + s];
        if (c < 0 || ((s % P_ == 0) != (pass == 0))) continue;
        const int64_t pos = fill[c]++;
        lq[pos] = s / P_;
        ls[pos] = s;
      }
      std::vector<Item> items;
      for (int64_t c = 0; c < C; ++c) {
        if (off[c + 1] == off[c]) continue;  // empty cluster
        const int64_t qb = query_block(off[c + 1] - off[c]);
        for (int64_t l0 = cstart[c]; l0 < cstart[c + 1]; l0 += qb)
          items.push_back({off[c], off[c + 1], l0, std::min(qb, cstart[c + 1] - l0)});
      }
      if (pass == 1) {
        for (int64_t i = 0; i < nb; ++i) qthr[i] = heap_threshold(heaps.data() + i * P_ * k, counts[i * P_], k);
      }
      run_items(P, items, lq.data(), ls.data(), heaps.data(), counts.data(), pass == 1 ? qthr.data() : nullptr);
    }
    finish(heaps.data(), counts.data(), nb, P_, k, cx.data() + q0, euclidean, Dp + q0 * k, Ip + q0 * k);
  }
  return {D, I};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> scan_plan_cpu(const at::Tensor& probes, int64_t n_clusters,
                                                             int64_t block) {
  TORCH_CHECK(probes.device().is_cpu(), "probes must be a CPU tensor");
  return scan_plan(probes.contiguous(), n_clusters, block);
}

}  // namespace
}  // namespace cpu
}  // namespace xhyp

TORCH_LIBRARY_IMPL(xhyp_ext, CPU, m) {
  m.impl("scan_plan", &xhyp::cpu::scan_plan_cpu);
  m.impl("pairwise_dist", &xhyp::cpu::pairwise_dist_cpu);
  m.impl("knn_prepare", &xhyp::cpu::knn_prepare_cpu);
  m.impl("knn", &xhyp::cpu::knn_cpu);
  m.impl("clustered_knn", &xhyp::cpu::clustered_knn_cpu);
}
