// The bf16 tile machinery of the CPU attention kernels (extend_attention.cpp,
// shared_prefix_decode.cpp): K and V packed from the pool, 64 keys at a time, into the layouts of
// the AVX-512 BF16 dot-product instruction, and a flash-attention pass of a block of query vectors
// over a list of packed tiles.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <unordered_map>
#include <vector>

#include "simd.h"
#include "work_split.h"

#if defined(__AVX512BF16__)

namespace radixrt_tiles {

using radixrt_work::for_each_by_cost;

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
// whatever the other rows of the block are. Vector r's result is out[r] / sum_out[r]: out holds
// the sum of exp(score - max_out[r]) * V, so that partial results over disjoint keys merge.
template <int DIM>
// NOTE: never inlined: inside the work loop its 32 accumulator and score registers spill (2x slower).
__attribute__((noinline)) void attend_block(const uint32_t* q, const uint32_t* const* tiles, const int64_t* limit, float* out,
                                              float* max_out, float* sum_out) {
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
    max_out[r] = max[r];
    sum_out[r] = sum[r];
    for (int c = 0; c < C; ++c) _mm512_storeu_ps(out + r * DIM + c * 16, acc[r][c]);
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
inline uint32_t* packed_buffer(int64_t words) {
  thread_local std::unique_ptr<uint32_t, decltype(&std::free)> buffer(nullptr, &std::free);
  thread_local int64_t capacity = 0;
  if (words > capacity) {  // 64-byte aligned: a tile row is one cache line
    buffer.reset(static_cast<uint32_t*>(std::aligned_alloc(64, (words * sizeof(uint32_t) + 63) / 64 * 64)));
    TORCH_CHECK(buffer != nullptr, "radixrt attention kernels: out of memory for ", words * sizeof(uint32_t), " bytes of packed K/V");
    capacity = words;
  }
  return buffer.get();
}

template <int DIM>
constexpr int64_t tile_words = (DIM / 2) * kTile + (kTile / 2) * DIM;  // K, then V

// The plan's distinct tiles `which` (ids), for every kv head, packed in parallel: which[j] of kv
// head h starts at the result + (h * which.size() + j) * tile_words<DIM>.
template <int DIM>
uint32_t* pack_tiles(const TilePlan& plan, const std::vector<int64_t>& which, const uint16_t* k_pool,
                     const uint16_t* v_pool, int64_t slot_stride, int64_t kv_heads) {
  const int64_t count = static_cast<int64_t>(which.size());
  uint32_t* packed = packed_buffer(std::max<int64_t>(1, count * kv_heads * tile_words<DIM>));
  at::parallel_for(0, count * kv_heads, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t h = item / count, tile = which[item % count];
      uint32_t* dst = packed + item * tile_words<DIM>;
      pack_tile<DIM>(k_pool, v_pool, plan.tile_slots[tile], plan.tile_keys[tile], slot_stride, h * DIM, dst,
                     dst + (DIM / 2) * kTile);
    }
  });
  return packed;
}

// One query head's row, times the softmax scale, as the bf16 pairs attend_block reads.
template <int DIM>
inline void pack_query(const uint16_t* src, float scale, uint32_t* dst) {
  for (int p = 0; p < DIM / 2; ++p) {
    const uint16_t lo = bf16_bits(from_bf16(src[2 * p]) * scale), hi = bf16_bits(from_bf16(src[2 * p + 1]) * scale);
    dst[p] = static_cast<uint32_t>(lo) | (static_cast<uint32_t>(hi) << 16);
  }
}

// A thread's buffers for attend_block: kBlock query vectors in, results out.
template <int DIM>
struct BlockScratch {
  alignas(64) uint32_t qv[kBlock<DIM> * DIM / 2];
  alignas(64) float result[kBlock<DIM> * DIM];
  float max[kBlock<DIM>], sum[kBlock<DIM>];
  int64_t limit[kBlock<DIM>];
  std::vector<const uint32_t*> tiles;

  void attend() { attend_block<DIM>(qv, tiles.data(), limit, result, max, sum); }

  // vector r's attention output, normalized and rounded once to bf16
  void write(int r, at::BFloat16* dst) const {
    const float inv = 1.f / sum[r];
    for (int d = 0; d < DIM; ++d) dst[d] = c10::BFloat16(result[r * DIM + d] * inv);
  }
};

// What every bf16 tile op checks of q [rows, H, D] and the pools [slots, Hkv, D]; `op` names it.
inline void check_tile_inputs(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool, const char* op) {
  TORCH_CHECK(q.device().is_cpu() && k_pool.device().is_cpu() && v_pool.device().is_cpu(), "CPU tensors only");
  TORCH_CHECK(q.scalar_type() == at::kBFloat16 && k_pool.scalar_type() == at::kBFloat16 &&
                  v_pool.scalar_type() == at::kBFloat16, op, " takes bfloat16 only");
  TORCH_CHECK(q.dim() == 3 && q.stride(2) == 1, "q must be [rows, H, D] with contiguous dims");
  TORCH_CHECK(k_pool.dim() == 3 && k_pool.is_contiguous() && v_pool.is_contiguous() && k_pool.sizes() == v_pool.sizes(),
              "k and v pools must be contiguous [slots, Hkv, D] of one shape");
  const int64_t dim = q.size(2);
  TORCH_CHECK(dim == k_pool.size(2) && q.size(1) % k_pool.size(1) == 0, "head shapes do not match");
  TORCH_CHECK(dim == 64 || dim == 128, "head_dim ", dim, " is not 64 or 128");
}

// What the decode ops check of their rows: row b attends over kv_indices[kv_starts[b] : + kv_lens[b]].
inline void check_decode_rows(const at::Tensor& q, const at::Tensor& kv_indices, const at::Tensor& kv_starts,
                              const at::Tensor& kv_lens) {
  for (const auto* t : {&kv_indices, &kv_starts, &kv_lens}) {
    TORCH_CHECK(t->scalar_type() == at::kLong && t->is_contiguous(), "indices must be contiguous int64");
  }
  const int64_t batch = q.size(0);
  TORCH_CHECK(kv_starts.numel() == batch && kv_lens.numel() == batch, "one start and length per row");
  const int64_t *starts = kv_starts.data_ptr<int64_t>(), *lens = kv_lens.data_ptr<int64_t>();
  for (int64_t b = 0; b < batch; ++b) {
    TORCH_CHECK(lens[b] > 0 && starts[b] >= 0 && starts[b] + lens[b] <= kv_indices.numel(), "row ", b,
                ": its slots must be a non-empty range of kv_indices");
  }
}

}  // namespace radixrt_tiles

#endif
