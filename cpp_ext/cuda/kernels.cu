// CUDA kernels of the xhyp extension and their launchers (declared in include/xhyp_cuda.h).
//
// Plain CUDA C++: no torch headers, so ``nvcc -c -I cpp_ext/include kernels.cu`` compiles it on
// any machine with nvcc (tests/test_kernels.py does); the torch glue is cuda/ops_cuda.cpp.
// NOTE: developed without a GPU: these kernels are compile-checked; their run-time tests
// (tests/test_kernels.py, the ``ext-cuda`` cases) run only where torch.cuda.is_available().
//
// Same operations and conventions as the CPU kernels (cpu/knn_cpu.cpp, cpu/vote_cpu.cpp):
//   t(y) = c(y) |x - y|^2 ranks database rows for a query x (c = 1 / (1 - |y|^2), Euclidean 1),
//   distance = 2 asinh(sqrt(t c(x))) (Euclidean: sqrt(t)), ties broken by the lower id.
// kNN: scan_kernel (below) tiles 8-32 queries per block over shared-memory tiles of the database
// (exact search, the clustered scan with a plan from include/xhyp_plan.h, and the centroid
// probe), with warp-level top-k selection on the double-precision t. Voting: vote_kernel adds in
// the CPU kernel's order (duplicate neighbours merged, ascending neighbour id, member by member).
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "xhyp_common.h"
#include "xhyp_cuda.h"

namespace xhyp {
namespace cuda {
namespace {

constexpr int kTile = 16;      // tile of the pairwise kernel
constexpr float kInfF = __builtin_huge_valf();

__global__ void inv_factor_kernel(const float* __restrict__ x, int64_t N, int64_t n, bool euclidean,
                                  double* __restrict__ c) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < N; i += (int64_t)gridDim.x * blockDim.x) {
    double s = 0.0;
    for (int64_t j = 0; j < n; ++j) {
      double v = x[i * n + j];
      s += v * v;
    }
    c[i] = inv_one_minus_sq(s, euclidean);
  }
}

__global__ void pairwise_kernel(const float* __restrict__ x, const float* __restrict__ y,
                                const double* __restrict__ cx, const double* __restrict__ cy, int64_t Q, int64_t M,
                                int64_t n, bool euclidean, float* __restrict__ out) {
  __shared__ float xs[kTile][kTile + 1];
  __shared__ float ys[kTile][kTile + 1];
  const int64_t qtiles = (Q + kTile - 1) / kTile;
  const int64_t j = blockIdx.x * (int64_t)kTile + threadIdx.x;  // database row of this thread
  for (int64_t by = blockIdx.y; by < qtiles; by += gridDim.y) {
    const int64_t i = by * kTile + threadIdx.y;  // query row of this thread
    float acc = 0.0f;
    for (int64_t c0 = 0; c0 < n; c0 += kTile) {
      const int64_t xr = by * kTile + threadIdx.y, yr = blockIdx.x * (int64_t)kTile + threadIdx.y;
      const int64_t col = c0 + threadIdx.x;
      xs[threadIdx.y][threadIdx.x] = (xr < Q && col < n) ? x[xr * n + col] : 0.0f;
      ys[threadIdx.y][threadIdx.x] = (yr < M && col < n) ? y[yr * n + col] : 0.0f;
      __syncthreads();
#pragma unroll
      for (int c = 0; c < kTile; ++c) {
        const float d = xs[threadIdx.y][c] - ys[threadIdx.x][c];
        acc = fmaf(d, d, acc);
      }
      __syncthreads();
    }
    if (i < Q && j < M) {
      const double s = euclidean ? double(acc) : double(acc) * cx[i] * cy[j];
      out[i * M + j] = static_cast<float>(dist_from_s(s, euclidean));
    }
  }
}

// one thread per query: the P nearest centroids, insertion into a sorted list in global memory
__global__ void probe_kernel(const float* __restrict__ q, const float* __restrict__ cent,
                             const double* __restrict__ cc, int64_t Q, int64_t C, int64_t n, int64_t P,
                             bool euclidean, int64_t* __restrict__ probe, float* __restrict__ scratch) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < Q; i += (int64_t)gridDim.x * blockDim.x) {
    const float* x = q + i * n;
    int64_t* pl = probe + i * P;
    float* tl = scratch + i * P;
    int64_t cnt = 0;
    for (int64_t c = 0; c < C; ++c) {
      const float* y = cent + c * n;
      float acc = 0.0f;
      for (int64_t j = 0; j < n; ++j) {
        const float d = x[j] - y[j];
        acc = fmaf(d, d, acc);
      }
      const float t = euclidean ? acc : static_cast<float>(double(acc) * cc[c]);
      if (cnt == P && !(t < tl[P - 1])) continue;  // c is larger than every kept id: ties lose
      int64_t pos = cnt < P ? cnt : P - 1;
      while (pos > 0 && t < tl[pos - 1]) {
        tl[pos] = tl[pos - 1];
        pl[pos] = pl[pos - 1];
        --pos;
      }
      tl[pos] = t;
      pl[pos] = c;
      if (cnt < P) ++cnt;
    }
    for (int64_t p = cnt; p < P; ++p) pl[p] = -1;
  }
}

// ---------------------------------------------------------------------------------------------
// Tiled kNN scan (exact search and the clustered scan)
//
// A thread block owns QB queries (slots) and a sorted top-k list per slot in shared memory. It
// scans row ranges (exact search: [0, M); clustered: the entries of its plan, xhyp_plan.h) in
// tiles of 32 rows x 64 dimensions staged in shared memory together with the slots' queries;
// warp w computes, lane l for row l of the tile, the float32 sums |x - y|^2 of the warp's QW =
// QB / 4 slots (direct differences: no cancellation next to the boundary). Selection, FAISS-GPU
// style at warp level: a ballot keeps the rows whose estimate t_est = |x - y|^2_f c(y) can beat the
// slot's k-th t (t_est <= thr (1 + (n + 4) 2^-23) holds for every row with t <= thr: the float
// sum of n non-negative terms has a relative error below (n + 3) 2^-24); those rows get their t
// in double (warp-parallel sum, the ranking quantity of the CPU kernels) and the warp inserts
// them into the slot's sorted list (ties: lower id). The result is the exact top-k of the
// scanned rows by the double t, as on the CPU.

constexpr int kScanWarps = 4;
constexpr int kScanThreads = 32 * kScanWarps;
constexpr int kRowTile = 32;   // rows per tile (one per lane)
constexpr int kDimChunk = 64;  // dimensions per staged chunk (any dimension: chunks are summed)

// queries per block for the lists of KMAX entries (shared memory: lists QB KMAX 16 bytes)
template <int KMAX>
struct ScanShape {
  static constexpr int QB = KMAX <= 32 ? 32 : (KMAX <= 64 ? 16 : 8);
  static constexpr int QW = QB / kScanWarps;
};

struct ScanArgs {
  const float* q;
  const float* db;
  const double* cx;
  const double* cy;
  const int64_t* ids;            // row ids (nullptr: the row number)
  const int64_t* offsets;        // (C + 1) cluster offsets (clustered)
  const int64_t* block_queries;  // (n_blocks, QB) queries of each block (nullptr: block b = b QB ...)
  const int64_t* entries;        // (n_blocks, E) clusters of each block (nullptr: one range [0, M))
  const int64_t* masks;          // (n_blocks, E) slot masks of the entries
  int64_t n_blocks, E, Q, M, n, k;
  bool euclidean;
  float* D;
  int64_t* I;
};

__device__ __forceinline__ bool ranks_before(double ta, long long ia, double tb, long long ib) {
  return ta < tb || (ta == tb && ia < ib);
}

// t = c(y) |x - y|^2 in double, the warp's lanes summing strided dimensions; every lane gets
// lane 0's value (one summation order for all lanes)
__device__ double warp_exact_t(const float* __restrict__ x, const float* __restrict__ y, int64_t n, double cy,
                               bool euclidean, int lane) {
  double s = 0.0;
  for (int64_t d = lane; d < n; d += 32) {
    const double v = double(x[d]) - double(y[d]);
    s += v * v;
  }
  for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
  s = __shfl_sync(0xffffffffu, s, 0);
  return euclidean ? s : s * cy;
}

// insert (t, id) into the sorted list (lt, lid) of cnt <= k entries; warp-cooperative
template <int KMAX>
__device__ void list_insert(double* lt, long long* lid, int& cnt, int k, double t, long long id, int lane) {
  int before = 0;
  for (int i = lane; i < cnt; i += 32) before += ranks_before(lt[i], lid[i], t, id) ? 1 : 0;
  for (int o = 16; o > 0; o >>= 1) before += __shfl_xor_sync(0xffffffffu, before, o);
  if (before >= k) return;
  const int last = cnt < k ? cnt : k - 1;  // entries [before, last) move up by one place
  constexpr int R = (KMAX + 31) / 32;
  double tv[R];
  long long iv[R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int i = before + lane + 32 * r;
    if (i < last) {
      tv[r] = lt[i];
      iv[r] = lid[i];
    }
  }
  __syncwarp();
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int i = before + lane + 32 * r;
    if (i < last) {
      lt[i + 1] = tv[r];
      lid[i + 1] = iv[r];
    }
  }
  __syncwarp();
  if (lane == 0) {
    lt[before] = t;
    lid[before] = id;
  }
  __syncwarp();
  if (cnt < k) ++cnt;
}

template <int KMAX>
__global__ void __launch_bounds__(kScanThreads) scan_kernel(ScanArgs a) {
  constexpr int QB = ScanShape<KMAX>::QB, QW = ScanShape<KMAX>::QW;
  __shared__ float ys[kRowTile][kDimChunk + 1];  // +1: lane l reads row l without bank conflicts
  __shared__ float xs[QB][kDimChunk];
  __shared__ double lt[QB][KMAX];
  __shared__ long long lid[QB][KMAX];
  __shared__ long long qid[QB];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int64_t n = a.n;
  const int k = static_cast<int>(a.k);
  const bool one_chunk = n <= kDimChunk;
  const double slack = 1.0 + double(n + 4) * 1.1920928955078125e-07;  // 1 + (n + 4) 2^-23
  for (int64_t blk = blockIdx.x; blk < a.n_blocks; blk += gridDim.x) {
    __syncthreads();  // the previous block's slots are written out
    if (tid < QB) {
      const int64_t g = blk * QB + tid;
      qid[tid] = a.block_queries ? a.block_queries[g] : (g < a.Q ? g : -1);
    }
    __syncthreads();
    if (one_chunk)
      for (int i = tid; i < QB * n; i += kScanThreads) {
        const int s = i / static_cast<int>(n), d = i % static_cast<int>(n);
        xs[s][d] = qid[s] >= 0 ? a.q[qid[s] * n + d] : 0.0f;
      }
    int cnt[QW];
    double thr[QW];
    long long myq[QW];
#pragma unroll
    for (int s = 0; s < QW; ++s) {
      cnt[s] = 0;
      thr[s] = __longlong_as_double(0x7ff0000000000000ll);  // +inf
      myq[s] = qid[warp * QW + s];
    }
    const int64_t n_ent = a.entries ? a.E : 1;
    for (int64_t e = 0; e < n_ent; ++e) {
      int64_t r0 = 0, r1 = a.M;
      long long mask = -1;
      if (a.entries) {
        const int64_t c = a.entries[blk * a.E + e];
        if (c < 0) break;  // the block's entries are packed at the front
        r0 = a.offsets[c];
        r1 = a.offsets[c + 1];
        mask = a.masks[blk * a.E + e];
      }
      for (int64_t t0 = r0; t0 < r1; t0 += kRowTile) {
        float acc[QW];
#pragma unroll
        for (int s = 0; s < QW; ++s) acc[s] = 0.0f;
        const int64_t row = t0 + lane;
        const bool rv = row < r1;
        for (int64_t d0 = 0; d0 < n; d0 += kDimChunk) {
          const int dc = static_cast<int>(n - d0 < kDimChunk ? n - d0 : kDimChunk);
          __syncthreads();  // the previous chunk is consumed
          for (int i = tid; i < kRowTile * dc; i += kScanThreads) {
            const int r = i / dc, d = i % dc;
            ys[r][d] = t0 + r < r1 ? a.db[(t0 + r) * n + d0 + d] : 0.0f;
          }
          if (!one_chunk)
            for (int i = tid; i < QB * dc; i += kScanThreads) {
              const int s = i / dc, d = i % dc;
              xs[s][d] = qid[s] >= 0 ? a.q[qid[s] * n + d0 + d] : 0.0f;
            }
          __syncthreads();
#pragma unroll
          for (int s = 0; s < QW; ++s) {
            const int slot = warp * QW + s;
            if (myq[s] < 0 || !((mask >> slot) & 1)) continue;  // warp-uniform
            float v = acc[s];
            for (int d = 0; d < dc; ++d) {
              const float df = xs[slot][d] - ys[lane][d];
              v = fmaf(df, df, v);
            }
            acc[s] = v;
          }
        }
#pragma unroll
        for (int s = 0; s < QW; ++s) {
          const int slot = warp * QW + s;
          if (myq[s] < 0 || !((mask >> slot) & 1)) continue;  // warp-uniform
          bool pass = false;
          if (rv) {
            const double est = a.euclidean ? double(acc[s]) : double(acc[s]) * a.cy[row];
            pass = est <= thr[s] * slack;
          }
          unsigned bal = __ballot_sync(0xffffffffu, pass);
          while (bal) {
            const int src = __ffs(bal) - 1;
            bal &= bal - 1;
            const int64_t r = t0 + src;
            const double t = warp_exact_t(a.q + myq[s] * n, a.db + r * n, n, a.cy[r], a.euclidean, lane);
            const long long id = a.ids ? a.ids[r] : r;
            if (cnt[s] < k || ranks_before(t, id, lt[slot][k - 1], lid[slot][k - 1])) {
              list_insert<KMAX>(lt[slot], lid[slot], cnt[s], k, t, id, lane);
              if (cnt[s] == k) thr[s] = lt[slot][k - 1];
            }
          }
        }
      }
    }
#pragma unroll
    for (int s = 0; s < QW; ++s) {
      const int slot = warp * QW + s;
      const long long qi = myq[s];
      if (qi < 0) continue;
      for (int r = lane; r < k; r += 32) {
        const bool ok = r < cnt[s];
        a.D[qi * k + r] = ok ? static_cast<float>(dist_from_s(lt[slot][r] * a.cx[qi], a.euclidean)) : kInfF;
        a.I[qi * k + r] = ok ? lid[slot][r] : -1;
      }
    }
  }
}

__global__ void vote_count_kernel(const int64_t* __restrict__ ids, int64_t Q, int64_t K,
                                  const int64_t* __restrict__ indptr, int64_t* __restrict__ counts) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < Q; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t s = 0;
    for (int64_t c = 0; c < K; ++c) {
      const int64_t id = ids[i * K + c];
      if (id >= 0) s += indptr[id + 1] - indptr[id];
    }
    counts[i] = s;
  }
}

// in-place heapsort of keys[0..n) with vals alongside, by the strict weak order Less(a, b) on
// positions
template <class Less>
__device__ void heapsort(int64_t* keys, double* vals, int64_t n, Less less) {
  auto swap = [&](int64_t a, int64_t b) {
    const int64_t tk = keys[a];
    keys[a] = keys[b];
    keys[b] = tk;
    const double tv = vals[a];
    vals[a] = vals[b];
    vals[b] = tv;
  };
  auto sift = [&](int64_t i, int64_t end) {
    for (;;) {
      int64_t c = 2 * i + 1;
      if (c >= end) break;
      if (c + 1 < end && less(c, c + 1)) ++c;
      if (!less(i, c)) break;
      swap(i, c);
      i = c;
    }
  };
  for (int64_t i = n / 2 - 1; i >= 0; --i) sift(i, n);
  for (int64_t end = n - 1; end > 0; --end) {
    swap(0, end);
    sift(0, end);
  }
}

// one thread per query: gather (label, column) keys, sort, sum per member then across members,
// sort by (score desc, label asc), write the top_k
__global__ void vote_kernel(const int64_t* __restrict__ ids, const double* __restrict__ w,
                            const int32_t* __restrict__ col_member, int64_t Q, int64_t K,
                            const int64_t* __restrict__ indptr, const int64_t* __restrict__ indices,
                            const int64_t* __restrict__ pair_off, int64_t* __restrict__ keys_all,
                            double* __restrict__ vals_all, int64_t top_k, int64_t* __restrict__ labels,
                            float* __restrict__ scores, int64_t* __restrict__ n_scored) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < Q; i += (int64_t)gridDim.x * blockDim.x) {
    int64_t* keys = keys_all + pair_off[i];
    double* vals = vals_all + pair_off[i];
    const int64_t* id = ids + i * K;
    const double* wi = w + i * K;
    int64_t m = 0;
    // per member (a run of columns): its distinct neighbour ids in ascending order, each with the
    // sum of its columns' weights in column order (the CPU kernel's stable sort + merge); key
    // label * K + (first column of the member + rank of the id), so that sorting the keys orders
    // every label's additions by member, then by ascending neighbour id, as the CPU kernel adds
    for (int64_t c0 = 0; c0 < K;) {
      int64_t c1 = c0 + 1;
      while (c1 < K && col_member[c1] == col_member[c0]) ++c1;
      long long prev = -1;
      for (int64_t rank = 0;; ++rank) {
        long long nxt = LLONG_MAX;
        for (int64_t c = c0; c < c1; ++c)
          if (id[c] > prev && id[c] < nxt) nxt = id[c];
        if (nxt == LLONG_MAX) break;
        double wsum = 0.0;
        bool first = true;
        for (int64_t c = c0; c < c1; ++c)
          if (id[c] == nxt) {
            wsum = first ? wi[c] : wsum + wi[c];
            first = false;
          }
        for (int64_t p = indptr[nxt]; p < indptr[nxt + 1]; ++p) {
          keys[m] = indices[p] * K + c0 + rank;
          vals[m] = wsum;
          ++m;
        }
        prev = nxt;
      }
      c0 = c1;
    }
    heapsort(keys, vals, m, [&](int64_t a, int64_t b) { return keys[a] < keys[b]; });
    int64_t u = 0;
    for (int64_t a = 0; a < m;) {
      const int64_t label = keys[a] / K;
      double total = 0.0;
      bool first = true;
      while (a < m && keys[a] / K == label) {
        const int32_t member = col_member[keys[a] % K];
        double sub = 0.0;
        while (a < m && keys[a] / K == label && col_member[keys[a] % K] == member) sub += vals[a++];
        if (sub != 0.0) {
          total = first ? sub : total + sub;
          first = false;
        }
      }
      if (total != 0.0) {
        keys[u] = label;
        vals[u] = total;
        ++u;
      }
    }
    n_scored[i] = u;
    heapsort(keys, vals, u, [&](int64_t a, int64_t b) {  // "a ranks before b": ascending = best first
      return vals[a] > vals[b] || (vals[a] == vals[b] && keys[a] < keys[b]);
    });
    for (int64_t r = 0; r < top_k; ++r) {
      labels[i * top_k + r] = r < u ? keys[r] : -1;
      scores[i * top_k + r] = r < u ? static_cast<float>(vals[r]) : 0.0f;
    }
  }
}

inline int grid_for(int64_t n, int threads) {
  int64_t g = (n + threads - 1) / threads;
  if (g < 1) g = 1;
  return static_cast<int>(g > 65535 ? 65535 : g);
}

inline int status() { return static_cast<int>(cudaGetLastError()); }

}  // namespace

int launch_inv_factor(const float* x, int64_t N, int64_t n, bool euclidean, double* c, void* stream) {
  if (N == 0) return 0;
  inv_factor_kernel<<<grid_for(N, 256), 256, 0, static_cast<cudaStream_t>(stream)>>>(x, N, n, euclidean, c);
  return status();
}

int launch_pairwise(const float* x, const float* y, const double* cx, const double* cy, int64_t Q, int64_t M,
                    int64_t n, bool euclidean, float* out, void* stream) {
  if (Q == 0 || M == 0) return 0;
  const int64_t gx = (M + kTile - 1) / kTile, gy = (Q + kTile - 1) / kTile;
  if (gx > INT_MAX) return static_cast<int>(cudaErrorInvalidConfiguration);
  dim3 grid(static_cast<unsigned>(gx), static_cast<unsigned>(gy > 65535 ? 65535 : gy));
  dim3 block(kTile, kTile);
  pairwise_kernel<<<grid, block, 0, static_cast<cudaStream_t>(stream)>>>(x, y, cx, cy, Q, M, n, euclidean, out);
  return status();
}

int launch_probe(const float* q, const float* cent, const double* cc, int64_t Q, int64_t C, int64_t n, int64_t P,
                 bool euclidean, int64_t* probe, float* scratch, void* stream) {
  if (Q == 0 || P == 0) return 0;
  probe_kernel<<<grid_for(Q, 128), 128, 0, static_cast<cudaStream_t>(stream)>>>(q, cent, cc, Q, C, n, P, euclidean,
                                                                                probe, scratch);
  return status();
}

int scan_queries_per_block(int64_t k) { return k <= 32 ? 32 : (k <= 64 ? 16 : 8); }

int launch_knn_scan(const float* q, const float* db, const double* cx, const double* cy, const int64_t* ids,
                    const int64_t* offsets, const int64_t* block_queries, const int64_t* entries, const int64_t* masks,
                    int64_t n_blocks, int64_t E, int64_t Q, int64_t M, int64_t n, int64_t k, bool euclidean, float* D,
                    int64_t* I, void* stream) {
  if (Q == 0 || n_blocks == 0) return 0;
  if (k < 1 || k > kMaxK) return static_cast<int>(cudaErrorInvalidValue);
  const ScanArgs a{q, db, cx, cy, ids, offsets, block_queries, entries, masks, n_blocks, E, Q, M, n, k, euclidean, D, I};
  const unsigned grid = static_cast<unsigned>(n_blocks < (int64_t(1) << 20) ? n_blocks : (int64_t(1) << 20));
  cudaStream_t s = static_cast<cudaStream_t>(stream);
  if (k <= 16)
    scan_kernel<16><<<grid, kScanThreads, 0, s>>>(a);
  else if (k <= 32)
    scan_kernel<32><<<grid, kScanThreads, 0, s>>>(a);
  else if (k <= 64)
    scan_kernel<64><<<grid, kScanThreads, 0, s>>>(a);
  else
    scan_kernel<128><<<grid, kScanThreads, 0, s>>>(a);
  return status();
}

int launch_vote_count(const int64_t* ids, int64_t Q, int64_t K, const int64_t* indptr, int64_t* counts,
                      void* stream) {
  if (Q == 0) return 0;
  vote_count_kernel<<<grid_for(Q, 128), 128, 0, static_cast<cudaStream_t>(stream)>>>(ids, Q, K, indptr, counts);
  return status();
}

int launch_vote(const int64_t* ids, const double* w, const int32_t* col_member, int64_t Q, int64_t K,
                const int64_t* indptr, const int64_t* indices, const int64_t* pair_off, int64_t* keys, double* vals,
                int64_t top_k, int64_t* labels, float* scores, int64_t* n_scored, void* stream) {
  if (Q == 0) return 0;
  vote_kernel<<<grid_for(Q, 64), 64, 0, static_cast<cudaStream_t>(stream)>>>(
      ids, w, col_member, Q, K, indptr, indices, pair_off, keys, vals, top_k, labels, scores, n_scored);
  return status();
}

}  // namespace cuda
}  // namespace xhyp
