// Operator registration for the xhyp extension (imported from Python as ``xhyp._C``).
//
// Layout, in the style of pytorch_cluster / pytorch_scatter:
//   xhyp_ext.cpp          this file: the operator schemas (one name per op, shared by all devices)
//                         and the Python module stub, nothing else;
//   cpu/knn_cpu.cpp       CPU kernels: pairwise_dist, knn_prepare, knn, clustered_knn;
//   cpu/ivf_cpu.cpp       CPU kernels of the ann index: ivf_pack, ivf_probe, ivf_knn, ivf_pack8,
//                         ivf_knn8, ivf_bounds8;
//   cpu/vote_cpu.cpp      CPU kernel: vote_topk;
//   cpu/optim_cpu.cpp     CPU kernels of training: lazy_adam_, riemannian_adam_ball_ (fused
//                         row-sparse optimiser steps);
//   cuda/kernels.cu       CUDA kernels and their launchers, plain CUDA C++ (no torch headers), so
//                         they compile with ``nvcc -c`` against include/xhyp_cuda.h only;
//   cuda/ops_cuda.cpp     torch glue for CUDA tensors (allocations, checks, stream), calling the
//                         launchers; only built by a CUDA-enabled torch.
// Each source file registers its implementations with TORCH_LIBRARY_IMPL(xhyp_ext, <device>, m),
// so ``torch.ops.xhyp_ext.knn`` dispatches on the device of its tensor arguments.
// The input checks of every operator, on every device, are in include/xhyp_checks.h. The Python
// wrappers with docstrings (shapes, dtypes, examples) are in xhyp/knn/kernels.py.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// ``import xhyp._C`` loads this shared object (and so registers the operators); the Python
// module itself is empty: the operators live in ``torch.ops.xhyp_ext``.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "xhyp C++/CUDA kernels "
                                          "(registered as torch.ops.xhyp_ext.*)", -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(xhyp_ext, m) {
  // (Q, n) x (M, n) float32 -> (Q, M) float32 Poincaré (or Euclidean) distances.
  m.def("pairwise_dist(Tensor x, Tensor y, bool euclidean=False) -> Tensor");
  // (M, n) float32 database -> (M, n + 2) float32 augmented rows used by knn / clustered_knn.
  m.def("knn_prepare(Tensor db, bool euclidean=False) -> Tensor");
  // exact k nearest neighbours: (Q, k) float32 distances ascending, (Q, k) int64 ids (-1 pad).
  m.def("knn(Tensor q, Tensor db, Tensor db_aug, int k, bool euclidean=False) -> (Tensor, Tensor)");
  // search restricted to the nprobe clusters whose centroids are nearest to each query; db rows
  // sorted by cluster (cluster c = rows offsets[c]:offsets[c+1]), ids = original row ids.
  m.def("clustered_knn(Tensor q, Tensor db, Tensor db_aug, Tensor ids, Tensor offsets, "
        "Tensor centroids, int k, int nprobe, bool euclidean=False) -> (Tensor, Tensor)");
  // "ann" index (cpu/ivf_cpu.cpp): augmented rows (M, K) sorted by cluster -> (B, K, 16) blocks
  // of 16 rows stored dimension-major, and the (C + 1,) block offsets of the clusters.
  m.def("ivf_pack(Tensor aug, Tensor offsets) -> (Tensor, Tensor)");
  // (Q, min(nprobe, C)) int64 nearest centroids of each query (nearest first, -1 pad), from the
  // (C, n + 2) knn_prepare rows of the centroids.
  m.def("ivf_probe(Tensor q, Tensor cen_aug, int nprobe, bool euclidean=False) -> Tensor");
  // exact top-k of the union of each query's probed clusters (query-major, one heap per query).
  m.def("ivf_knn(Tensor q, Tensor db, Tensor packed, Tensor block_offsets, Tensor ids, Tensor offsets, "
        "Tensor probes, int k, bool euclidean=False) -> (Tensor, Tensor)");
  // int8 residual codes of the rows (sorted by cluster) relative to their cluster's reference point
  // (centroids (C, n)): (B, 64 (ceil(n / 4) + 5)) uint8 blocks of 16 rows and the (C + 1,) block
  // offsets (layout and bound: cpu/ivf_cpu.cpp).
  m.def("ivf_pack8(Tensor db, Tensor offsets, Tensor centroids, bool euclidean=False) -> (Tensor, Tensor)");
  // as ivf_knn, the lower bounds from the int8 blocks of ivf_pack8 (same centroids and geometry).
  m.def("ivf_knn8(Tensor q, Tensor db, Tensor blocks, Tensor block_offsets, Tensor centroids, Tensor ids, "
        "Tensor offsets, Tensor probes, int k, bool euclidean=False) -> (Tensor, Tensor)");
  // (Q, M) int8-code lower bounds of t = c(y) |x - y|^2 of every query and row (tests).
  m.def("ivf_bounds8(Tensor q, Tensor blocks, Tensor block_offsets, Tensor centroids, Tensor offsets) -> Tensor");
  // work plan of the tiled clustered scan of the CUDA kernels (include/xhyp_plan.h): (Q, P) probes ->
  // (nb, block) queries of each block (-1 pad), (nb, E) clusters each block scans (-1 pad), (nb, E)
  // bit masks of the block's queries probing them. CPU and CUDA (the CPU one is for tests).
  m.def("scan_plan(Tensor probes, int n_clusters, int block) -> (Tensor, Tensor, Tensor)");
  // label voting over the neighbours of M ensemble members (lists of length M, or label
  // matrices of length 1 shared by all members), with the neighbours' weights precomputed
  // (xhyp.knn.vote.neighbour_weights): (Q, top_k) int64 labels (-1 pad), (Q, top_k) float32
  // scores, (Q,) int64 number of labels with a non-zero score.
  m.def("vote_topk(Tensor[] ids, Tensor[] weights, Tensor[] indptr, Tensor[] indices, int n_labels, "
        "int top_k) -> (Tensor, Tensor, Tensor)");
  // training: in-place lazy Adam step of the (R,) sorted unique rows of an (N, n) float32
  // embedding table and its two moments, given the rows' (R, n) gradient (xhyp.training.optim.LazyAdam).
  m.def("lazy_adam_(Tensor(a!) param, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, Tensor rows, Tensor grad, "
        "float step_size, float beta1, float beta2, float eps) -> ()");
  // the same for the Riemannian Adam step of label embeddings in the Poincaré ball
  // (xhyp.training.optim.SparseRiemannianAdam): step = the bias-correction count t, max_norm the guard.
  m.def("riemannian_adam_ball_(Tensor(a!) param, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, Tensor rows, "
        "Tensor grad, float lr, float beta1, float beta2, float eps, int step, float max_norm) -> ()");
}
