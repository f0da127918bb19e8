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
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <memory>
#include <unordered_map>
#include <vector>

#include "simd.h"

#if defined(__AVX512BF16__)

namespace {

using radixrt_simd::exp16;

constexpr int kTile = 64;                  // keys per tile: four registers of float32 scores per query
constexpr int kVectors = kTile / 16;       // score registers per query vector
template <int DIM>
constexpr int kBlock = 256 / DIM;          // query vectors per pass: their accumulators fill 16 registers

inline uint16_t bf16_bits(float x) { return c10::BFloat16(x).x; }

inline float from_bf16(uint16_t bits) {
  const uint32_t widened = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &widened, sizeof f);
  return f;
}

// A 16 x 16 block of 32-bit words transposed in registers: rows[i] word j -> rows[j] word i.
inline void transpose16(__m512i rows[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {  // within 128-bit lanes: [a0 b0 a1 b1], [a2 b2 a3 b3]
    t[i] = _mm512_unpacklo_epi32(rows[i], rows[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(rows[i], rows[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // rows[i + j] lane L: word 4L + j of rows i .. i + 3
    rows[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    rows[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    rows[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    rows[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int j = 0; j < 4; ++j) {  // gather each word's four row groups into its register's lanes
    t[j] = _mm512_shuffle_i32x4(rows[j], rows[4 + j], 0x88);
    t[4 + j] = _mm512_shuffle_i32x4(rows[j], rows[4 + j], 0xdd);
    t[8 + j] = _mm512_shuffle_i32x4(rows[8 + j], rows[12 + j], 0x88);
    t[12 + j] = _mm512_shuffle_i32x4(rows[8 + j], rows[12 + j], 0xdd);
  }
  for (int j = 0; j < 4; ++j) {
    rows[j] = _mm512_shuffle_i32x4(t[j], t[8 + j], 0x88);
    rows[8 + j] = _mm512_shuffle_i32x4(t[j], t[8 + j], 0xdd);
    rows[4 + j] = _mm512_shuffle_i32x4(t[4 + j], t[12 + j], 0x88);
    rows[12 + j] = _mm512_shuffle_i32x4(t[4 + j], t[12 + j], 0xdd);
  }
}

// One tile (up to 64 keys) of one kv head, as 32-bit words: K [DIM / 2 dim pairs][64 keys], each
// word a key's pair of dims; V [32 key pairs][DIM], each word one dim of two neighbouring keys.
// Keys past `keys` are zeros.
template <int DIM>
void pack_tile(const uint16_t* k_pool, const uint16_t* v_pool, const int64_t* slots, int64_t keys, int64_t slot_stride,
               int64_t head_offset, uint32_t* k_tile, uint32_t* v_tile) {
  constexpr int P = DIM / 2;
  for (int first = 0; first < kTile; first += 16) {
    for (int word = 0; word < P; word += 16) {
      __m512i rows[16];
      for (int i = 0; i < 16; ++i) {
        const int64_t key = first + i;
        rows[i] = key < keys ? _mm512_loadu_si512(k_pool + slots[key] * slot_stride + head_offset + 2 * word)
                             : _mm512_setzero_si512();
      }
      transpose16(rows);
      for (int i = 0; i < 16; ++i) _mm512_storeu_si512(k_tile + (word + i) * kTile + first, rows[i]);
    }
  }
  for (int64_t key = 0; key < kTile; key += 2) {
    uint32_t* row = v_tile + (key / 2) * DIM;
    if (key >= keys) {
      std::fill(row, row + DIM, 0u);
      continue;
    }
    const uint16_t* v0 = v_pool + slots[key] * slot_stride + head_offset;
    const uint16_t* v1 = key + 1 < keys ? v_pool + slots[key + 1] * slot_stride + head_offset : nullptr;
    for (int d = 0; d < DIM; d += 16) {
      const __m512i low = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v0 + d)));
      const __m512i high = v1 == nullptr ? _mm512_setzero_si512()
                                         : _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(v1 + d)));
      _mm512_storeu_si512(row + d, _mm512_or_si512(low, _mm512_slli_epi32(high, 16)));
    }
  }
}

// lanes of score register j that hold one of the row's first `valid` keys of the tile
inline __mmask16 valid_lanes(int64_t valid, int j) {
  const int64_t n = valid - j * 16;
  return n >= 16 ? static_cast<__mmask16>(0xffff) : n <= 0 ? static_cast<__mmask16>(0) : static_cast<__mmask16>((1u << n) - 1);
}

// kBlock query vectors (bf16 pairs, pre-scaled) over the packed tiles of one sequence and kv head; vector r sees keys [0, limit[r]).
// Keys a row must not see get probability exactly 0, and every sum runs in the same order
// whatever the other rows of the block are.
template <int DIM>
// NOTE: never inlined: inside the work loop its 32 accumulator and score registers spill (2x slower).
__attribute__((noinline)) void attend_block(const uint32_t* q, const uint32_t* const* tiles, const int64_t* limit, float* out) {
  constexpr int P = DIM / 2, C = DIM / 16, R = kBlock<DIM>;
  __m512 acc[R][C];
  float max[R], sum[R];
  int64_t longest = 0;
  for (int r = 0; r < R; ++r) {
    max[r] = -INFINITY;
    sum[r] = 0.f;
    longest = std::max(longest, limit[r]);
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_ps();
  }
  alignas(64) uint16_t probs[R][kTile];
  for (int64_t t = 0; t * kTile < longest; ++t) {
    __m512 scores[R][kVectors];
    for (int r = 0; r < R; ++r) {
      for (int j = 0; j < kVectors; ++j) scores[r][j] = _mm512_setzero_ps();
    }
    const uint32_t* k_tile = tiles[t];
    for (int p = 0; p < P; ++p) {
      __m512bh keys[kVectors];
      for (int j = 0; j < kVectors; ++j) keys[j] = (__m512bh)_mm512_loadu_si512(k_tile + p * kTile + j * 16);
      for (int r = 0; r < R; ++r) {
        const __m512bh query = (__m512bh)_mm512_set1_epi32(q[r * P + p]);
        for (int j = 0; j < kVectors; ++j) scores[r][j] = _mm512_dpbf16_ps(scores[r][j], query, keys[j]);
      }
    }
    for (int r = 0; r < R; ++r) {
      const int64_t valid = limit[r] - t * kTile;
      if (valid <= 0) {  // past this row's last key: it adds exact zeros below
        std::fill(probs[r], probs[r] + kTile, 0);
        continue;
      }
      __m512 tile_max = _mm512_set1_ps(-INFINITY);
      for (int j = 0; j < kVectors; ++j) tile_max = _mm512_mask_max_ps(tile_max, valid_lanes(valid, j), tile_max, scores[r][j]);
      const float new_max = std::max(max[r], _mm512_reduce_max_ps(tile_max));
      if (new_max != max[r]) {  // (the first tile: exp(-inf) = 0 clears nothing but zeros)
        const float rescale = std::exp(max[r] - new_max);
        sum[r] *= rescale;
        for (int c = 0; c < C; ++c) acc[r][c] = _mm512_mul_ps(acc[r][c], _mm512_set1_ps(rescale));
        max[r] = new_max;
      }
      __m512 total = _mm512_setzero_ps();
      for (int j = 0; j < kVectors; ++j) {
        const __m512 p = _mm512_maskz_mov_ps(valid_lanes(valid, j), exp16(_mm512_sub_ps(scores[r][j], _mm512_set1_ps(new_max))));
        total = _mm512_add_ps(total, p);
        _mm256_store_si256(reinterpret_cast<__m256i*>(probs[r] + j * 16), (__m256i)_mm512_cvtneps_pbh(p));
      }
      sum[r] += _mm512_reduce_add_ps(total);
    }
    const uint32_t* v_tile = tiles[t] + P * kTile;
    const int64_t pairs = (std::min<int64_t>(kTile, longest - t * kTile) + 1) / 2;  // later pairs: zeros for all rows
    for (int64_t pair = 0; pair < pairs; ++pair) {
      __m512bh weights[R];
      for (int r = 0; r < R; ++r) {
        uint32_t two;
        std::memcpy(&two, &probs[r][pair * 2], sizeof two);
        weights[r] = (__m512bh)_mm512_set1_epi32(two);
      }
      for (int c = 0; c < C; ++c) {
        const __m512bh values = (__m512bh)_mm512_loadu_si512(v_tile + pair * DIM + c * 16);
        for (int r = 0; r < R; ++r) acc[r][c] = _mm512_dpbf16_ps(acc[r][c], weights[r], values);
      }
    }
  }
  for (int r = 0; r < R; ++r) {
    const __m512 inv = _mm512_set1_ps(1.f / sum[r]);
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(out + r * DIM + c * 16, _mm512_mul_ps(acc[r][c], inv));
  }
}

struct Requests {
  const int64_t *q_starts, *q_lens, *kv_starts, *seq_lens;
  int64_t count;
};

// Every request's tiles, packed once per distinct slot list: fork siblings and the prompts of one
// few-shot block list the same slots for their shared prefix, and read the same packed tiles.
struct TilePlan {
  std::vector<int64_t> first;               // request i's tiles: ids[first[i] .. first[i + 1])
  std::vector<int64_t> ids;                 // distinct tile of each (request, tile)
  std::vector<const int64_t*> tile_slots;   // per distinct tile: its slots
  std::vector<int64_t> tile_keys;           // and how many

  TilePlan(const int64_t* slots, const Requests& reqs) : first{0} {
    std::unordered_map<int64_t, std::vector<int64_t>> by_first_slot;
    for (int64_t i = 0; i < reqs.count; ++i) {
      const int64_t* seq = slots + reqs.kv_starts[i];
      for (int64_t start = 0; start < reqs.seq_lens[i]; start += kTile) {
        const int64_t keys = std::min<int64_t>(kTile, reqs.seq_lens[i] - start);
        auto& seen = by_first_slot[seq[start]];
        const auto same = std::find_if(seen.begin(), seen.end(), [&](int64_t id) {
          return tile_keys[id] == keys && std::equal(seq + start, seq + start + keys, tile_slots[id]);
        });
        if (same != seen.end()) {
          ids.push_back(*same);
          continue;
        }
        seen.push_back(static_cast<int64_t>(tile_slots.size()));
        ids.push_back(static_cast<int64_t>(tile_slots.size()));
        tile_slots.push_back(seq + start);
        tile_keys.push_back(keys);
      }
      first.push_back(static_cast<int64_t>(ids.size()));
    }
  }
};

// The packed tiles' buffer outlives a call on the calling thread (grown to the largest batch seen,
// never shrunk), so a forward's layers do not each map and fault in fresh pages.
uint32_t* packed_buffer(int64_t words) {
  thread_local std::unique_ptr<uint32_t, decltype(&std::free)> buffer(nullptr, &std::free);
  thread_local int64_t capacity = 0;
  if (words > capacity) {  // 64-byte aligned: a tile row is one cache line
    buffer.reset(static_cast<uint32_t*>(std::aligned_alloc(64, (words * sizeof(uint32_t) + 63) / 64 * 64)));
    TORCH_CHECK(buffer != nullptr, "extend_attention: out of memory for ", words * sizeof(uint32_t), " bytes of packed K/V");
    capacity = words;
  }
  return buffer.get();
}

template <int DIM>
void extend_all(const uint16_t* q, int64_t q_row, int64_t q_head, const uint16_t* k_pool, const uint16_t* v_pool,
                int64_t slot_stride, const int64_t* slots, const Requests& reqs, int64_t heads, int64_t kv_heads,
                float scale, at::BFloat16* out) {
  constexpr int P = DIM / 2, R = kBlock<DIM>;
  constexpr int64_t tile_words = P * kTile + (kTile / 2) * DIM;  // K, then V
  const int64_t group = heads / kv_heads;
  const TilePlan plan(slots, reqs);
  const int64_t distinct = static_cast<int64_t>(plan.tile_slots.size());
  uint32_t* packed = packed_buffer(distinct * kv_heads * tile_words);
  at::parallel_for(0, distinct * kv_heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t h = item / distinct, tile = item % distinct;
      uint32_t* dst = packed + item * tile_words;
      pack_tile<DIM>(k_pool, v_pool, plan.tile_slots[tile], plan.tile_keys[tile], slot_stride, h * DIM, dst,
                     dst + P * kTile);
    }
  });

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
  const int64_t shares = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), items.size()));
  at::parallel_for(0, shares, 1, [&](int64_t share_begin, int64_t share_end) {
    alignas(64) uint32_t qv[R * P];
    alignas(64) float result[R * DIM];
    int64_t limit[R];
    std::vector<const uint32_t*> tiles;
    const int64_t total = cost_before.back();
    auto first_item = [&](int64_t share) {  // the first item whose cost starts at or past share's part
      return std::lower_bound(cost_before.begin(), cost_before.end() - 1, total * share / shares) - cost_before.begin();
    };
    for (int64_t index = first_item(share_begin), stop = first_item(share_end); index < stop; ++index) {
      const Item& item = items[index];
      const int64_t i = item.request, new_rows = reqs.q_lens[i], seq_len = reqs.seq_lens[i];
      const int64_t prefix = seq_len - new_rows, vectors = new_rows * group;
      tiles.clear();
      for (int64_t t = plan.first[i]; t < plan.first[i + 1]; ++t) {
        tiles.push_back(packed + (item.h * distinct + plan.ids[t]) * tile_words);
      }
      const uint16_t* q_request = q + reqs.q_starts[i] * q_row;
      for (int r = 0; r < R; ++r) {
        const int64_t v = std::min(item.block * R + r, vectors - 1);  // padding repeats the last vector
        const int64_t row = v / group, head = item.h * group + v % group;
        const uint16_t* src = q_request + row * q_row + head * q_head;
        for (int p = 0; p < P; ++p) {
          const uint16_t lo = bf16_bits(from_bf16(src[2 * p]) * scale), hi = bf16_bits(from_bf16(src[2 * p + 1]) * scale);
          qv[r * P + p] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
        }
        limit[r] = prefix + row + 1;
      }
      attend_block<DIM>(qv, tiles.data(), limit, result);
      at::BFloat16* out_request = out + reqs.q_starts[i] * heads * DIM;
      for (int r = 0; r < R && item.block * R + r < vectors; ++r) {
        const int64_t v = item.block * R + r, row = v / group, head = item.h * group + v % group;
        for (int d = 0; d < DIM; ++d) out_request[(row * heads + head) * DIM + d] = c10::BFloat16(result[r * DIM + d]);
      }
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
  TORCH_CHECK(q.device().is_cpu() && k_pool.device().is_cpu() && v_pool.device().is_cpu(), "CPU tensors only");
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 && k_pool.scalar_type() == at::kBFloat16 &&
                  v_pool.scalar_type() == at::kBFloat16, "extend_attention takes bfloat16 only");
  TORCH_CHECK(q.dim() == 3 && q.stride(2) == 1, "q must be [T, H, D] with contiguous dims");
  TORCH_CHECK(k_pool.dim() == 3 && k_pool.is_contiguous() && v_pool.is_contiguous() && k_pool.sizes() == v_pool.sizes(),
              "k and v pools must be contiguous [slots, Hkv, D] of one shape");
  const int64_t dim = q.size(2), heads = q.size(1), kv_heads = k_pool.size(1);
  TORCH_CHECK(dim == k_pool.size(2) && heads % kv_heads == 0, "head shapes do not match");
  TORCH_CHECK(dim == 64 || dim == 128, "head_dim ", dim, " is not 64 or 128");
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
