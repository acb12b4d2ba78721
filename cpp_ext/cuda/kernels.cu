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
// The GPU kNN computes every t directly from coordinate differences (no GEMM expansion, so no
// cancellation next to the boundary): one thread block per query, each thread keeps a sorted
// list of its best k rows, and the block merges the lists in k rounds of an argmin reduction.
#include <cuda_runtime.h>

#include <climits>
#include <cstdint>

#include "xhyp_common.h"
#include "xhyp_cuda.h"

namespace xhyp {
namespace cuda {
namespace {

constexpr int kThreads = 128;  // threads per block of the kNN kernel (4 warps)
constexpr int kTile = 16;      // tile of the pairwise kernel
constexpr float kInfF = __builtin_huge_valf();

__device__ __forceinline__ bool cand_less(float ta, long long ia, float tb, long long ib) {
  return ta < tb || (ta == tb && ia < ib);
}

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

template <int KMAX>
__global__ void __launch_bounds__(kThreads) knn_kernel(
    const float* __restrict__ q, const float* __restrict__ db, const double* __restrict__ cx,
    const double* __restrict__ cy, const int64_t* __restrict__ ids, const int64_t* __restrict__ offsets,
    const int64_t* __restrict__ probe, int64_t P, int64_t Q, int64_t M, int64_t n, int64_t k, bool euclidean,
    float* __restrict__ D, int64_t* __restrict__ I) {
  extern __shared__ float qs[];  // the query row, n floats
  __shared__ float red_t[kThreads / 32];
  __shared__ long long red_id[kThreads / 32];
  __shared__ int red_owner[kThreads / 32];
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  for (int64_t qi = blockIdx.x; qi < Q; qi += gridDim.x) {
    for (int64_t c = tid; c < n; c += blockDim.x) qs[c] = q[qi * n + c];
    __syncthreads();
    float lt[KMAX];
    long long lid[KMAX];
    int cnt = 0;
    const int64_t nranges = probe ? P : 1;
    for (int64_t p = 0; p < nranges; ++p) {
      int64_t a = 0, b = M;
      if (probe) {
        const int64_t c = probe[qi * P + p];
        if (c < 0) continue;
        a = offsets[c];
        b = offsets[c + 1];
      }
      for (int64_t r = a + tid; r < b; r += blockDim.x) {
        const float* y = db + r * n;
        float acc = 0.0f;
        for (int64_t c = 0; c < n; ++c) {
          const float d = qs[c] - y[c];
          acc = fmaf(d, d, acc);
        }
        const float t = euclidean ? acc : static_cast<float>(double(acc) * cy[r]);
        const long long id = ids ? ids[r] : r;
        if (cnt == k && !cand_less(t, id, lt[cnt - 1], lid[cnt - 1])) continue;
        int pos = cnt < k ? cnt : int(k) - 1;
        while (pos > 0 && cand_less(t, id, lt[pos - 1], lid[pos - 1])) {
          lt[pos] = lt[pos - 1];
          lid[pos] = lid[pos - 1];
          --pos;
        }
        lt[pos] = t;
        lid[pos] = id;
        if (cnt < k) ++cnt;
      }
    }
    // merge the per-thread sorted lists: k rounds of a block-wide argmin over the list heads
    int head = 0;
    for (int64_t out = 0; out < k; ++out) {
      float bt = head < cnt ? lt[head] : kInfF;
      long long bid = head < cnt ? lid[head] : LLONG_MAX;
      int owner = tid;
      for (int off = 16; off > 0; off >>= 1) {
        const float ot = __shfl_down_sync(0xffffffffu, bt, off);
        const long long oid = __shfl_down_sync(0xffffffffu, bid, off);
        const int oo = __shfl_down_sync(0xffffffffu, owner, off);
        if (cand_less(ot, oid, bt, bid)) {
          bt = ot;
          bid = oid;
          owner = oo;
        }
      }
      if (lane == 0) {
        red_t[warp] = bt;
        red_id[warp] = bid;
        red_owner[warp] = owner;
      }
      __syncthreads();
      if (tid == 0) {
        for (int w = 1; w < kThreads / 32; ++w) {
          if (cand_less(red_t[w], red_id[w], red_t[0], red_id[0])) {
            red_t[0] = red_t[w];
            red_id[0] = red_id[w];
            red_owner[0] = red_owner[w];
          }
        }
        const bool valid = red_id[0] != LLONG_MAX;
        D[qi * k + out] = valid ? static_cast<float>(dist_from_s(double(red_t[0]) * cx[qi], euclidean)) : kInfF;
        I[qi * k + out] = valid ? red_id[0] : -1;
      }
      __syncthreads();
      if (tid == red_owner[0]) ++head;
      __syncthreads();
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
    int64_t m = 0;
    for (int64_t c = 0; c < K; ++c) {
      const int64_t id = ids[i * K + c];
      if (id < 0) continue;
      for (int64_t p = indptr[id]; p < indptr[id + 1]; ++p) {
        keys[m] = indices[p] * K + c;
        vals[m] = w[i * K + c];
        ++m;
      }
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

int launch_knn(const float* q, const float* db, const double* cx, const double* cy, const int64_t* ids,
               const int64_t* offsets, const int64_t* probe, int64_t P, int64_t Q, int64_t M, int64_t n, int64_t k,
               bool euclidean, float* D, int64_t* I, void* stream) {
  if (Q == 0) return 0;
  if (k < 1 || k > kMaxK) return static_cast<int>(cudaErrorInvalidValue);
  const unsigned grid = static_cast<unsigned>(Q < (int64_t(1) << 20) ? Q : (int64_t(1) << 20));
  const size_t shmem = sizeof(float) * static_cast<size_t>(n);
  cudaStream_t s = static_cast<cudaStream_t>(stream);
#define XHYP_KNN(KM) \
  knn_kernel<KM><<<grid, kThreads, shmem, s>>>(q, db, cx, cy, ids, offsets, probe, P, Q, M, n, k, euclidean, D, I)
  if (k <= 16)
    XHYP_KNN(16);
  else if (k <= 32)
    XHYP_KNN(32);
  else if (k <= 64)
    XHYP_KNN(64);
  else
    XHYP_KNN(128);
#undef XHYP_KNN
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
