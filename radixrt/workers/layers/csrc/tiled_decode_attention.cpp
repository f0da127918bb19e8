// Decode attention that rounds exactly as extend_attention does, for batch-invariant forwards.
//
// decode_attention sums in float32 FMAs; extend_attention in bf16 dot products over packed tiles.
// A token's K/V in later layers depends on its attention output, so a token that was decoded gets
// other low bits in the cache than the same token prefilled: a cache hit on generated text could
// then change a greedy output that a cacheless run would give. Here a decoding row goes through the
// extend kernel's own arithmetic (attend_block over the same tiles, limit = its sequence length),
// so a decoded row gets the bits a prefill of that row gets, whatever the batch.
//
// One work item = (request, kv head), as in decode_attention: the request's tiles of that head are
// packed into the thread's scratch (a 1,024-token sequence is 256 KiB: it stays in L2), then walked
// by its G query heads, kBlock at a time. extend_attention instead packs every tile of the batch
// into one buffer first, which pays when many query blocks walk each tile (a prefill), and costs a
// write and a re-read of all K/V when only one does (a decode step): measured 1.9x decode_attention.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "bf16_tiles.h"
#include "ops.h"

#if defined(__AVX512BF16__)

namespace {

using namespace radixrt_tiles;

template <int DIM>
void tiled_decode_all(const uint16_t* q, int64_t q_row, int64_t q_head, const uint16_t* k_pool, const uint16_t* v_pool,
                      int64_t slot_stride, const int64_t* slots, const int64_t* starts, const int64_t* lens,
                      int64_t batch, int64_t heads, int64_t kv_heads, float scale, at::BFloat16* out) {
  constexpr int R = kBlock<DIM>;
  const int64_t group = heads / kv_heads;
  at::parallel_for(0, batch * kv_heads, 1, [&](int64_t begin, int64_t end) {
    BlockScratch<DIM> block;
    std::vector<uint32_t> packed;
    for (int64_t item = begin; item < end; ++item) {
      const int64_t b = item / kv_heads, h = item % kv_heads, len = lens[b];
      const int64_t* seq = slots + starts[b];
      const int64_t tiles = (len + kTile - 1) / kTile;
      packed.resize(tiles * tile_words<DIM>);
      block.tiles.clear();
      for (int64_t t = 0; t < tiles; ++t) {
        uint32_t* dst = packed.data() + t * tile_words<DIM>;
        const int64_t keys = std::min<int64_t>(kTile, len - t * kTile);
        // slots are scattered over the pool: fetch the next tile's rows while this one is packed
        for (int64_t key = (t + 1) * kTile; key < std::min<int64_t>(len, (t + 2) * kTile); ++key) {
          __builtin_prefetch(k_pool + seq[key] * slot_stride + h * DIM);
          __builtin_prefetch(v_pool + seq[key] * slot_stride + h * DIM);
          if constexpr (DIM == 128) {
            __builtin_prefetch(k_pool + seq[key] * slot_stride + h * DIM + 64);
            __builtin_prefetch(v_pool + seq[key] * slot_stride + h * DIM + 64);
          }
        }
        pack_tile<DIM>(k_pool, v_pool, seq + t * kTile, keys, slot_stride, h * DIM, dst, dst + (DIM / 2) * kTile);
        block.tiles.push_back(dst);
      }
      for (int64_t first = 0; first < group; first += R) {
        for (int r = 0; r < R; ++r) {
          const int64_t head = h * group + std::min<int64_t>(first + r, group - 1);  // padding repeats the last
          pack_query<DIM>(q + b * q_row + head * q_head, scale, block.qv + r * DIM / 2);
          block.limit[r] = len;
        }
        block.attend();
        for (int r = 0; r < R && first + r < group; ++r) block.write(r, out + (b * heads + h * group + first + r) * DIM);
      }
    }
  });
}

}  // namespace
#endif

// Same arguments and result as decode_attention, bf16 only, head_dim 64 or 128.
at::Tensor tiled_decode_attention(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool,
                                  const at::Tensor& kv_indices, const at::Tensor& kv_starts, const at::Tensor& kv_lens,
                                  double scale) {
#if defined(__AVX512BF16__)
  radixrt_tiles::check_tile_inputs(q, k_pool, v_pool, "tiled_decode_attention");
  radixrt_tiles::check_decode_rows(q, kv_indices, kv_starts, kv_lens);
  const int64_t batch = q.size(0), dim = q.size(2), heads = q.size(1), kv_heads = k_pool.size(1);
  const int64_t *starts = kv_starts.data_ptr<int64_t>(), *lens = kv_lens.data_ptr<int64_t>();
  auto out = at::empty({batch, heads * dim}, q.options());
  const auto* q_ptr = reinterpret_cast<const uint16_t*>(q.data_ptr<at::BFloat16>());
  const auto* k_ptr = reinterpret_cast<const uint16_t*>(k_pool.data_ptr<at::BFloat16>());
  const auto* v_ptr = reinterpret_cast<const uint16_t*>(v_pool.data_ptr<at::BFloat16>());
  auto run = dim == 64 ? tiled_decode_all<64> : tiled_decode_all<128>;
  run(q_ptr, q.stride(0), q.stride(1), k_ptr, v_ptr, k_pool.stride(0), kv_indices.data_ptr<int64_t>(), starts, lens,
      batch, heads, kv_heads, static_cast<float>(scale), out.data_ptr<at::BFloat16>());
  return out;
#else
  TORCH_CHECK(false, "tiled_decode_attention needs a CPU with AVX512-BF16");
#endif
}

TORCH_LIBRARY_FRAGMENT(radixrt, m) {
  m.def(
      "tiled_decode_attention(Tensor q, Tensor k_pool, Tensor v_pool, Tensor kv_indices, Tensor kv_starts, "
      "Tensor kv_lens, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(radixrt, CPU, m) { m.impl("tiled_decode_attention", &tiled_decode_attention); }
