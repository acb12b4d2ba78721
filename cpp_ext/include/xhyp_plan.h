// Work plan of the tiled clustered scan (cuda/kernels.cu): which clusters each block of queries
// scans and which of its queries probe each cluster. Plain ATen operations, so the same function
// runs on CPU tensors (operator scan_plan, tested in tests/test_cuda_vs_cpu.py without a GPU) and
// on CUDA tensors (cuda/ops_cuda.cpp, before the scan kernel).
//
// Queries are ordered by their nearest probe (queries that scan the same clusters share a block)
// and cut into blocks of QB slots. A block's entries are the distinct clusters probed by its
// queries, in the order of their first appearance in rank-major order (every query's nearest
// probe first, then every query's second probe, ...), so that the nearest clusters, which fill
// the top-k lists with good candidates, are scanned first; each entry carries the bit mask of the
// block's slots that probe it (a cluster probed twice by one query is scanned once).
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <tuple>

namespace xhyp {

// probes: (Q, P) int64 cluster numbers in [0, C) or -1 (none), nearest first.
// Returns (block_queries (nb, QB) int64 query numbers, -1 for empty slots; entries (nb, E) int64
// clusters, -1 after the block's last entry; masks (nb, E) int64 slot bit masks), nb = ceil(Q / QB).
inline std::tuple<at::Tensor, at::Tensor, at::Tensor> scan_plan(const at::Tensor& probes, int64_t C, int64_t QB) {
  TORCH_CHECK(probes.scalar_type() == at::kLong && probes.dim() == 2, "probes must be a (Q, P) int64 tensor");
  TORCH_CHECK(QB >= 1 && QB <= 62, "scan_plan: 1 <= queries per block <= 62, got ", QB);
  TORCH_CHECK(C >= 0, "scan_plan: the number of clusters must be >= 0");
  const int64_t Q = probes.size(0), P = probes.size(1), nb = (Q + QB - 1) / QB, L = P * QB;
  const auto lopt = probes.options().dtype(at::kLong);
  if (Q == 0) return {at::empty({0, QB}, lopt), at::empty({0, 0}, lopt), at::empty({0, 0}, lopt)};
  // query order: by nearest probe (stable), queries without probes last
  at::Tensor first = P > 0 ? probes.select(1, 0) : at::full({Q}, -1, lopt);
  first = at::where(first < 0, at::full_like(first, C), first);
  at::Tensor order = std::get<1>(at::sort(first, /*stable=*/true, /*dim=*/0, /*descending=*/false));
  at::Tensor bq = at::full({nb * QB}, -1, lopt);
  bq.narrow(0, 0, Q).copy_(order);
  bq = bq.view({nb, QB});
  if (P == 0 || C == 0) return {bq, at::full({nb, 0}, -1, lopt), at::zeros({nb, 0}, lopt)};
  // the slots' probes in rank-major order: position j = rank * QB + slot
  at::Tensor pp = at::full({nb * QB, P}, -1, lopt);
  pp.narrow(0, 0, Q).copy_(probes.index_select(0, order));
  pp = pp.view({nb, QB, P}).transpose(1, 2).contiguous().view({nb * L});
  at::Tensor pos = at::arange(nb * L, lopt);
  at::Tensor valid = pp >= 0;
  at::Tensor blk = at::floor_divide(pos, L).masked_select(valid);
  at::Tensor j = at::remainder(pos, L).masked_select(valid);
  at::Tensor cl = pp.masked_select(valid);
  if (cl.numel() == 0) return {bq, at::full({nb, 0}, -1, lopt), at::zeros({nb, 0}, lopt)};
  TORCH_CHECK(cl.max().item<int64_t>() < C, "probes must hold cluster numbers < ", C);
  // sort the (block, cluster) pairs, each by its positions
  at::Tensor key = blk * C + cl;
  at::Tensor comb = std::get<0>(at::sort(key * L + j));
  key = at::floor_divide(comb, L);
  j = at::remainder(comb, L);
  at::Tensor slot = at::remainder(j, QB);
  at::Tensor is_first = at::ones_like(key, key.options().dtype(at::kBool));
  if (key.numel() > 1) is_first.narrow(0, 1, key.numel() - 1).copy_(key.narrow(0, 1, key.numel() - 1) !=
                                                                    key.narrow(0, 0, key.numel() - 1));
  at::Tensor grp = at::cumsum(is_first.to(at::kLong), 0) - 1;  // (block, cluster) group of each position
  const int64_t G = grp[-1].item<int64_t>() + 1;
  // slot masks: a dense (G, QB) table of the probing slots, then its bits
  at::Tensor dense = at::zeros({G, QB}, lopt);
  dense.index_put_({grp, slot}, at::ones_like(grp));
  at::Tensor bits = at::pow(at::full({QB}, 2, lopt), at::arange(QB, lopt));
  at::Tensor mask = (dense * bits.unsqueeze(0)).sum(1);
  // entries of each block, by first position
  at::Tensor gkey = key.masked_select(is_first), gpos = j.masked_select(is_first);
  at::Tensor gblk = at::floor_divide(gkey, C), gcl = at::remainder(gkey, C);
  at::Tensor eorder = std::get<1>(at::sort(gblk * L + gpos));
  gblk = gblk.index_select(0, eorder);
  gcl = gcl.index_select(0, eorder);
  mask = mask.index_select(0, eorder);
  at::Tensor counts = at::bincount(gblk, {}, nb);
  const int64_t E = counts.max().item<int64_t>();
  at::Tensor start = at::cumsum(counts, 0) - counts;
  at::Tensor rank = at::arange(G, lopt) - start.index_select(0, gblk);
  at::Tensor entries = at::full({nb, E}, -1, lopt), masks = at::zeros({nb, E}, lopt);
  entries.index_put_({gblk, rank}, gcl);
  masks.index_put_({gblk, rank}, mask);
  return {bq, entries, masks};
}

}  // namespace xhyp
