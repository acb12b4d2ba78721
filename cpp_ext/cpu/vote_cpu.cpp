// CPU kernel: label voting over the k nearest training examples (and over ensemble members).
//
// Gerald & Baskiotis (CAp 2019), sections 2.5-2.6: score[q, l] = sum over members m and
// neighbours j of query q in member m of w_m(q, j) * Y_m[j, l]; the top_k labels by score are
// returned, ties broken by the lower label id.
//
// The arithmetic follows xhyp/vote.py's scipy reference operation for operation, so that with the
// same weights the results are bit-identical: within a member, the weights of duplicate neighbour
// ids are summed first, then a label's score adds the weights of its neighbours in ascending
// neighbour id (scipy's CSR x CSR product order); member scores are then added member by member
// (sparse matrix sum); labels with a zero score are dropped (as csr_matmat does); ranking is on
// the double-precision score, descending, then label id ascending; scores are returned as float32.
//
// Weightings: include/xhyp_vote.h (shared with the CUDA glue).
//
// Each thread keeps a dense double accumulator over the labels and a list of touched labels, so
// the work per query is O(sum of the neighbours' label counts + touched * log(top_k)).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "xhyp_vote.h"

namespace xhyp {
namespace cpu {
namespace {

Weighting checked_weighting(const std::string& s) {
  const Weighting w = parse_weighting(s);
  TORCH_CHECK(w != Weighting::kUnknown, "unknown weighting '", s, "'; choose from count, distance, weight");
  return w;
}

struct Member {
  const int64_t* ids;  // (Q, k)
  at::Tensor dist;     // (Q, k) float32 or float64, contiguous
  int64_t k;
  const int64_t* indptr;   // (N + 1,)
  const int64_t* indices;  // (nnz,)
  int64_t n_rows;
};

std::tuple<at::Tensor, at::Tensor, at::Tensor> vote_topk_cpu(
    at::TensorList ids, at::TensorList dists, at::TensorList indptr, at::TensorList indices,
    int64_t n_labels, int64_t top_k, c10::string_view weighting, double alpha) {
  const Weighting wmode = checked_weighting(std::string(weighting));
  const int64_t n_members = static_cast<int64_t>(ids.size());
  TORCH_CHECK(n_members >= 1, "vote_topk needs at least one member");
  TORCH_CHECK(static_cast<int64_t>(dists.size()) == n_members, "ids and dists must have the same length");
  TORCH_CHECK(indptr.size() == indices.size() &&
                  (static_cast<int64_t>(indptr.size()) == n_members || indptr.size() == 1),
              "indptr/indices: one label matrix per member, or one shared by all");
  TORCH_CHECK(top_k >= 1, "top_k must be >= 1, got ", top_k);
  TORCH_CHECK(n_labels >= 0, "n_labels must be >= 0");
  const int64_t Q = ids[0].dim() == 2 ? ids[0].size(0) : -1;
  std::vector<Member> members;
  int64_t kmax = 0;
  for (int64_t m = 0; m < n_members; ++m) {
    const at::Tensor& id = ids[m];
    const at::Tensor& d = dists[m];
    const int64_t lm = indptr.size() == 1 ? 0 : m;
    const at::Tensor& ip = indptr[lm];
    const at::Tensor& ix = indices[lm];
    TORCH_CHECK(id.device().is_cpu() && id.scalar_type() == at::kLong && id.dim() == 2 && id.is_contiguous(),
                "ids[", m, "] must be a contiguous (Q, k) int64 CPU tensor");
    TORCH_CHECK(id.size(0) == Q, "every member must have the same number of queries");
    TORCH_CHECK(d.device().is_cpu() && (d.scalar_type() == at::kFloat || d.scalar_type() == at::kDouble) &&
                    d.sizes() == id.sizes() && d.is_contiguous(),
                "dists[", m, "] must be a contiguous float32/float64 CPU tensor shaped like ids[", m, "]");
    TORCH_CHECK(ip.device().is_cpu() && ip.scalar_type() == at::kLong && ip.dim() == 1 && ip.size(0) >= 1 &&
                    ip.is_contiguous(), "indptr must be a contiguous (N + 1,) int64 CPU tensor");
    TORCH_CHECK(ix.device().is_cpu() && ix.scalar_type() == at::kLong && ix.dim() == 1 && ix.is_contiguous(),
                "indices must be a contiguous (nnz,) int64 CPU tensor");
    const int64_t N = ip.size(0) - 1;
    const int64_t* ipp = ip.data_ptr<int64_t>();
    TORCH_CHECK(ipp[0] == 0 && ipp[N] == ix.size(0), "indptr must start at 0 and end at nnz");
    const int64_t* ixp = ix.data_ptr<int64_t>();
    for (int64_t i = 0; i < ix.size(0); ++i)
      TORCH_CHECK(ixp[i] >= 0 && ixp[i] < n_labels, "label id ", ixp[i], " out of range [0, ", n_labels, ")");
    const int64_t* idp = id.data_ptr<int64_t>();
    for (int64_t i = 0; i < id.numel(); ++i)
      TORCH_CHECK(idp[i] < N, "neighbour id ", idp[i], " >= number of training rows ", N);
    members.push_back({idp, d, id.size(1), ipp, ixp, N});
    kmax = std::max(kmax, id.size(1));
  }

  auto opts = at::TensorOptions().device(at::kCPU);
  at::Tensor labels = at::empty({Q, top_k}, opts.dtype(at::kLong));
  at::Tensor scores = at::empty({Q, top_k}, opts.dtype(at::kFloat));
  at::Tensor n_scored = at::empty({Q}, opts.dtype(at::kLong));
  int64_t* lp = labels.data_ptr<int64_t>();
  float* sp = scores.data_ptr<float>();
  int64_t* np_ = n_scored.data_ptr<int64_t>();

  at::parallel_for(0, Q, 16, [&](int64_t b, int64_t e) {
    std::vector<double> acc(n_labels, 0.0), total(n_labels, 0.0), w(kmax);
    std::vector<char> in_m(n_labels, 0), in_t(n_labels, 0);
    std::vector<int64_t> touched_m, touched_t;
    std::vector<std::pair<int64_t, double>> nb;  // (neighbour id, weight)
    std::vector<std::pair<double, int64_t>> ranked;
    for (int64_t q = b; q < e; ++q) {
      touched_t.clear();
      for (const Member& M : members) {
        const int64_t k = M.k;
        if (M.dist.scalar_type() == at::kFloat)
          load_weights(M.dist.data_ptr<float>() + q * k, k, wmode, alpha, w.data());
        else
          load_weights(M.dist.data_ptr<double>() + q * k, k, wmode, alpha, w.data());
        nb.clear();
        for (int64_t j = 0; j < k; ++j) {
          const int64_t id = M.ids[q * k + j];
          if (id >= 0) nb.emplace_back(id, w[j]);
        }
        // stable insertion sort by neighbour id (k is small; no allocation)
        for (size_t a = 1; a < nb.size(); ++a) {
          const std::pair<int64_t, double> v = nb[a];
          size_t c = a;
          for (; c > 0 && nb[c - 1].first > v.first; --c) nb[c] = nb[c - 1];
          nb[c] = v;
        }
        touched_m.clear();
        for (size_t a = 0; a < nb.size();) {
          const int64_t id = nb[a].first;
          double wsum = nb[a].second;
          size_t c = a + 1;
          for (; c < nb.size() && nb[c].first == id; ++c) wsum += nb[c].second;
          a = c;
          for (int64_t p = M.indptr[id]; p < M.indptr[id + 1]; ++p) {
            const int64_t l = M.indices[p];
            if (!in_m[l]) {
              in_m[l] = 1;
              acc[l] = 0.0;
              touched_m.push_back(l);
            }
            acc[l] += wsum;
          }
        }
        for (int64_t l : touched_m) {
          in_m[l] = 0;
          if (acc[l] == 0.0) continue;  // not stored by the sparse product
          if (!in_t[l]) {
            in_t[l] = 1;
            total[l] = acc[l];
            touched_t.push_back(l);
          } else {
            total[l] += acc[l];
          }
        }
      }
      ranked.clear();
      for (int64_t l : touched_t) {
        in_t[l] = 0;
        if (total[l] != 0.0) ranked.emplace_back(total[l], l);
      }
      const int64_t m = std::min<int64_t>(top_k, static_cast<int64_t>(ranked.size()));
      auto better = [](const std::pair<double, int64_t>& x, const std::pair<double, int64_t>& y) {
        return x.first > y.first || (x.first == y.first && x.second < y.second);
      };
      if (m > 0 && m < static_cast<int64_t>(ranked.size()))
        std::nth_element(ranked.begin(), ranked.begin() + (m - 1), ranked.end(), better);
      std::sort(ranked.begin(), ranked.begin() + m, better);
      for (int64_t r = 0; r < top_k; ++r) {
        lp[q * top_k + r] = r < m ? ranked[r].second : -1;
        sp[q * top_k + r] = r < m ? static_cast<float>(ranked[r].first) : 0.0f;
      }
      np_[q] = static_cast<int64_t>(ranked.size());
    }
  });
  return {labels, scores, n_scored};
}

}  // namespace
}  // namespace cpu
}  // namespace xhyp

TORCH_LIBRARY_IMPL(xhyp_ext, CPU, m) { m.impl("vote_topk", &xhyp::cpu::vote_topk_cpu); }
