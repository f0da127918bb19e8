// Prefill ("extend") attention on the CPU, bf16, with AVX-512 BF16 dot products.
//
// Request i's new rows j = 0 .. E-1 attend causally over its sequence of S slots (a cached prefix
// of S - E, then the new tokens): row j sees the first S - E + j + 1. The sequences' K and V are
// first packed from the pool, 64 keys (a tile) at a time, into the layouts the dot-product
// instruction wants (16 keys side by side for Q.K, key pairs side by side for P.V); a tile whose
// slots another request of the batch lists too (fork siblings, prompts after one shared few-shot
// block) is packed once. Then every block of 256 / head_dim query vectors (rows x the query heads
// of one kv head) walks its tiles once with an online softmax, flash-attention style; a tile's
// softmax bookkeeping (max, rescale, sum) is paid once per 64 keys. The blocks of all requests are
// shared out to the threads by the tiles they walk.
// Tiles start at the sequence's first key and padding rows or keys add exact zeros, so a row's
// result depends only on its own query and sequence: a prompt prefilled whole or in cached pieces,
// alone or in any batch, gets the same bits. PyTorch's flash kernel does the same sums in float32
// FMAs at about half the speed on AVX512-BF16 CPUs.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <numeric>
#include <vector>

#include "bf16_tiles.h"

#if defined(__AVX512BF16__)

namespace {

using namespace radixrt_tiles;

template <int DIM>
void extend_all(const uint16_t* q, int64_t q_row, int64_t q_head, const uint16_t* k_pool, const uint16_t* v_pool,
                int64_t slot_stride, const int64_t* slots, const Requests& reqs, int64_t heads, int64_t kv_heads,
                float scale, at::BFloat16* out) {
  constexpr int R = kBlock<DIM>;
  const int64_t group = heads / kv_heads;
  const TilePlan plan(slots, reqs);
  const int64_t distinct = static_cast<int64_t>(plan.tile_slots.size());
  std::vector<int64_t> every_tile(distinct);
  std::iota(every_tile.begin(), every_tile.end(), 0);
  const uint32_t* packed = pack_tiles<DIM>(plan, every_tile, k_pool, v_pool, slot_stride, kv_heads);

  // Work items (request, kv head, block of R query vectors), each costing the tiles it walks; the
  // threads take contiguous runs of items of about equal cost.
  struct Item {
    int64_t request, h, block;
  };
  std::vector<Item> items;
  std::vector<int64_t> cost_before{0};
  for (int64_t i = 0; i < reqs.count; ++i) {
    const int64_t vectors = reqs.q_lens[i] * group, blocks = (vectors + R - 1) / R;
    const int64_t prefix = reqs.seq_lens[i] - reqs.q_lens[i];
    for (int64_t h = 0; h < kv_heads; ++h) {
      for (int64_t block = 0; block < blocks; ++block) {
        const int64_t last_row = std::min(block * R + R, vectors) - 1;
        items.push_back({i, h, block});
        cost_before.push_back(cost_before.back() + 1 + (prefix + last_row / group + kTile) / kTile);
      }
    }
  }
  for_each_by_cost<BlockScratch<DIM>>(cost_before, [&](int64_t index, BlockScratch<DIM>& block) {
    const Item& item = items[index];
    const int64_t i = item.request, new_rows = reqs.q_lens[i], seq_len = reqs.seq_lens[i];
    const int64_t prefix = seq_len - new_rows, vectors = new_rows * group;
    block.tiles.clear();
    for (int64_t t = plan.first[i]; t < plan.first[i + 1]; ++t) {
      block.tiles.push_back(packed + (item.h * distinct + plan.ids[t]) * tile_words<DIM>);
    }
    const uint16_t* q_request = q + reqs.q_starts[i] * q_row;
    for (int r = 0; r < R; ++r) {
      const int64_t v = std::min(item.block * R + r, vectors - 1);  // padding repeats the last vector
      const int64_t row = v / group, head = item.h * group + v % group;
      pack_query<DIM>(q_request + row * q_row + head * q_head, scale, block.qv + r * DIM / 2);
      block.limit[r] = prefix + row + 1;
    }
    block.attend();
    at::BFloat16* out_request = out + reqs.q_starts[i] * heads * DIM;
    for (int r = 0; r < R && item.block * R + r < vectors; ++r) {
      const int64_t v = item.block * R + r, row = v / group, head = item.h * group + v % group;
      block.write(r, out_request + (row * heads + head) * DIM);
    }
  });
}

}  // namespace
#endif

// q [T, H, D] bf16 (rows and heads may be strided, dims contiguous); k_pool, v_pool [slots, Hkv, D];
// request i: new rows q_starts[i] .. + q_lens[i], sequence kv_indices[kv_starts[i] : + seq_lens[i]]
// (K/V of the new rows already stored). Returns [T, H * D]; rows of no request are left unset.
at::Tensor extend_attention(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool,
                            const at::Tensor& kv_indices, const at::Tensor& q_starts, const at::Tensor& q_lens,
                            const at::Tensor& kv_starts, const at::Tensor& seq_lens, double scale) {
#if defined(__AVX512BF16__)
  radixrt_tiles::check_tile_inputs(q, k_pool, v_pool, "extend_attention");
  const int64_t dim = q.size(2), heads = q.size(1), kv_heads = k_pool.size(1);
  for (const auto* t : {&kv_indices, &q_starts, &q_lens, &kv_starts, &seq_lens}) {
    TORCH_CHECK(t->scalar_type() == at::kLong && t->is_contiguous(), "indices must be contiguous int64");
  }
  const int64_t requests = q_starts.numel();
  TORCH_CHECK(q_lens.numel() == requests && kv_starts.numel() == requests && seq_lens.numel() == requests,
              "one q start, q length, kv start and sequence length per request");
  auto out = at::empty({q.size(0), heads * dim}, q.options());
  const auto* q_ptr = reinterpret_cast<const uint16_t*>(q.data_ptr<at::BFloat16>());
  const auto* k_ptr = reinterpret_cast<const uint16_t*>(k_pool.data_ptr<at::BFloat16>());
  const auto* v_ptr = reinterpret_cast<const uint16_t*>(v_pool.data_ptr<at::BFloat16>());
  const int64_t* slots = kv_indices.data_ptr<int64_t>();
  const int64_t *qs = q_starts.data_ptr<int64_t>(), *ql = q_lens.data_ptr<int64_t>();
  const int64_t *ks = kv_starts.data_ptr<int64_t>(), *sl = seq_lens.data_ptr<int64_t>();
  for (int64_t i = 0; i < requests; ++i) {
    TORCH_CHECK(0 < ql[i] && ql[i] <= sl[i], "request ", i, ": 0 < new rows <= sequence length");
    TORCH_CHECK(qs[i] >= 0 && qs[i] + ql[i] <= q.size(0) && ks[i] >= 0 && ks[i] + sl[i] <= kv_indices.numel(),
                "request ", i, ": its rows and slots must lie within q and kv_indices");
  }
  auto run = dim == 64 ? extend_all<64> : extend_all<128>;
  run(q_ptr, q.stride(0), q.stride(1), k_ptr, v_ptr, k_pool.stride(0), slots, Requests{qs, ql, ks, sl, requests}, heads,
      kv_heads, static_cast<float>(scale), out.data_ptr<at::BFloat16>());
  return out;
#else
  TORCH_CHECK(false, "extend_attention needs a CPU with AVX512-BF16");
#endif
}

TORCH_LIBRARY_FRAGMENT(radixrt, m) {
  m.def(
      "extend_attention(Tensor q, Tensor k_pool, Tensor v_pool, Tensor kv_indices, Tensor q_starts, Tensor q_lens, "
      "Tensor kv_starts, Tensor seq_lens, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(radixrt, CPU, m) { m.impl("extend_attention", &extend_attention); }
