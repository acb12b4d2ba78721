// Launchers of the CUDA kernels (cpp_ext/cuda/kernels.cu).
//
// This header is deliberately free of torch and CUDA headers: kernels.cu compiles with plain
// ``nvcc -c -I cpp_ext/include`` (checked by tests/test_kernels.py wherever nvcc exists, even
// with a CPU-only torch, whose wheel lacks the CUDA toolkit headers that torch's CUDA glue needs),
// and the torch-facing glue (cpp_ext/cuda/ops_cuda.cpp: tensor checks, allocation, the current
// stream) is compiled only by a CUDA-enabled torch.
//
// All pointers are device pointers to contiguous row-major arrays; ``stream`` is a cudaStream_t.
// Every launcher returns the cudaError_t of the launch (0 = success) as an int.
#pragma once

#include <cstdint>

namespace xhyp {
namespace cuda {

// Largest k (and nprobe for the centroid probe list) of the kNN kernels' per-thread lists.
constexpr int64_t kMaxK = 128;

// c[i] = 1 / ((1 - |x_i|)(1 + |x_i|)) in double (1 for Euclidean); x: (N, n).
int launch_inv_factor(const float* x, int64_t N, int64_t n, bool euclidean, double* c, void* stream);

// out (Q, M) = distances between the rows of x (Q, n) and y (M, n); cx, cy from launch_inv_factor.
int launch_pairwise(const float* x, const float* y, const double* cx, const double* cy, int64_t Q, int64_t M,
                    int64_t n, bool euclidean, float* out, void* stream);

// The P nearest centroids of every query by a float32 t (one thread a query, insertion into a
// sorted list): probe (Q, P) int64 cluster ids (ties: lower id), with scratch (Q, P) float. cc:
// launch_inv_factor of the centroids. P <= C. Used for P > kMaxK; launch_knn_scan otherwise.
int launch_probe(const float* q, const float* cent, const double* cc, int64_t Q, int64_t C, int64_t n, int64_t P,
                 bool euclidean, int64_t* probe, float* scratch, void* stream);

// Queries per thread block of launch_knn_scan for a given k (32 for k <= 32, 16 for k <= 64, else
// 8): the block size of the plan (include/xhyp_plan.h) of a clustered scan.
int scan_queries_per_block(int64_t k);

// k nearest rows per query (1 <= k <= kMaxK) by t = c(y) |x - y|^2, exact (double t, ties: lower
// id) among the scanned rows; any dimension n (tiles of 64 dimensions). ids: original id of each
// row (nullptr: the row number). Exact search: block_queries, entries, masks and offsets nullptr,
// n_blocks = ceil(Q / scan_queries_per_block(k)), one range [0, M). Clustered scan: the
// (n_blocks, QB) block_queries and (n_blocks, E) entries / masks of xhyp::scan_plan and the
// (C + 1) offsets of the clusters. Outputs D (Q, k) float32 distances ascending, I (Q, k) int64
// ids, padded with inf / -1.
int launch_knn_scan(const float* q, const float* db, const double* cx, const double* cy, const int64_t* ids,
                    const int64_t* offsets, const int64_t* block_queries, const int64_t* entries, const int64_t* masks,
                    int64_t n_blocks, int64_t E, int64_t Q, int64_t M, int64_t n, int64_t k, bool euclidean, float* D,
                    int64_t* I, void* stream);

// Voting, step 1: counts[i] = number of (neighbour, label) pairs of query i; ids (Q, K) with
// -1 for no neighbour, indptr (N + 1) of the label matrix.
int launch_vote_count(const int64_t* ids, int64_t Q, int64_t K, const int64_t* indptr, int64_t* counts,
                      void* stream);

// Voting, step 2: pair_off (Q + 1) = exclusive prefix sum of counts; scratch keys (P_total) int64
// and vals (P_total) double. w (Q, K) float64 weights, col_member (K) int32 member of each
// column (a member's columns are contiguous). In the CPU kernel's order: per member, duplicate
// neighbour ids are merged (weights summed in column order), a label's score adds its neighbours
// in ascending id order, member scores are added member by member. Outputs labels (Q, top_k)
// int64 (-1 pad), scores (Q, top_k) float32 (0 pad), n_scored (Q).
int launch_vote(const int64_t* ids, const double* w, const int32_t* col_member, int64_t Q, int64_t K,
                const int64_t* indptr, const int64_t* indices, const int64_t* pair_off, int64_t* keys, double* vals,
                int64_t top_k, int64_t* labels, float* scores, int64_t* n_scored, void* stream);

}  // namespace cuda
}  // namespace xhyp
