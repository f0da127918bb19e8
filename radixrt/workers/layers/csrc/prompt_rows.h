// Runs of a prompt's rows attended as decode rows (batch-invariant prefill where extend_attention
// does not run: float32, and bf16 on CPUs without AVX512-BF16), on AVX2 builds.
//
// attend_rows (decode_rows.h) gives each query vector the bits attend_one gives it alone, but its
// loops are a decode step's: a score is a dot product finished by a horizontal sum, and P.V keeps
// every vector's sums in memory. Here the same sums run in the order of a matrix product:
//   - Q.K: K is packed transposed, 8 keys side by side ([keys / 8][dim][8] float32), so that one
//     FMA adds one dimension's products for 8 keys. Lane l of attend_one's 16-lane dot product is
//     the FMA chain over dims l, l + 16, l + 32, ... (from zero); here that chain runs for 8 keys
//     at once, and the 16 chains are then added in the tree of Vec16::sum4 (AVX2):
//     t_l = p_l + p_{l+8}, score = ((t0 + t1) + (t2 + t3)) + ((t4 + t5) + (t6 + t7)).
//   - P.V: 6 vectors x 16 dims of running sums in registers, over a block of 64 keys in order (their
//     V rows stay in L1), carried from block to block through a 256-key span; the spans added in
//     order: attend_rows' sums, lane by lane.
// So every vector gets attend_one's bits (tests/workers/test_cpu_decode_kernel.py checks it). K
// (transposed) and V (widened, for bf16) are packed once per sequence and kv head, for all the
// runs that read them, and a prefix that several sequences share once for all of them. On an AVX2
// AMD EPYC, a 1,024-row prompt of the embedded model's shape (9 heads, 3 kv heads, 64 dims) took
// 22.5 ms a layer on one thread against attend_rows' 36.4.
#pragma once

#include "decode_rows.h"

#if defined(__AVX2__) && !defined(__AVX512F__)
#define RADIXRT_PROMPT_ROWS 1

namespace radixrt_decode {

constexpr int64_t kPromptVectors = 48;  // query vectors (rows x group) per run
constexpr int64_t kKeyLanes = 8;
constexpr int kTileVectors = 6;  // query vectors whose FMAs share each K or V load
constexpr int64_t kValueBlock = 64;  // keys whose V rows (16 KB at head_dim 64) every vector reads in turn

// Loads 8 values as float32 lanes
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const at::BFloat16* p) {
  return Vec16::widen(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// r[i][j] -> r[j][i] for 8 x 8 float32
inline void transpose8(__m256* r) {
  __m256 t[8], u[8];
  for (int i = 0; i < 8; i += 2) {
    t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    u[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
    u[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xee);
    u[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    u[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xee);
  }
  for (int i = 0; i < 4; ++i) {
    r[i] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x20);
    r[i + 4] = _mm256_permute2f128_ps(u[i], u[i + 4], 0x31);
  }
}

// One sequence's K of one kv head, transposed into [ceil(len / 8)][dim][8] (zeros past len), and
// its V rows as float32 (widened from bf16; for float32 pools, pointers into the pool). A sequence
// that starts with another one's slots (prompts after one shared prefix) takes that prefix's
// packing from it (`shared` groups of 8 keys, an even number, so that the pairs of groups the
// score loop reads never straddle the two) and packs only the rest. The buffers are kept from call
// to call (decode_attention.cpp), so packing writes memory that is already mapped.
template <typename T>
struct PackedSequence {
  std::vector<float> kt, v;
  std::vector<const float*> v_rows;
  const float* shared_kt = nullptr;
  int64_t shared = 0;

  const float* group(int64_t g, int64_t dim) const {
    return g < shared ? shared_kt + g * dim * kKeyLanes : kt.data() + (g - shared) * dim * kKeyLanes;
  }

  // `prefix` (packed already, or null) covers the first prefix_keys slots (a multiple of 16, at most
  // its own length) of this sequence
  void pack(const T* k_pool, const T* v_pool, int64_t slot_stride, const int64_t* slots, int64_t len,
            int64_t head_offset, int64_t dim, const PackedSequence* prefix = nullptr, int64_t prefix_keys = 0) {
    alignas(64) static const T zeros[256] = {};  // the keys past len of the last group of 8
    const int64_t groups = (len + kKeyLanes - 1) / kKeyLanes;
    shared = prefix ? prefix_keys / kKeyLanes : 0;
    shared_kt = prefix ? prefix->kt.data() : nullptr;
    kt.resize((groups - shared) * dim * kKeyLanes);
    for (int64_t g = shared; g < groups; ++g) {
      const T* keys[kKeyLanes];
      for (int64_t j = 0; j < kKeyLanes; ++j) {
        const int64_t m = g * kKeyLanes + j;
        keys[j] = m < len ? k_pool + slots[m] * slot_stride + head_offset : zeros;
      }
      float* dst = kt.data() + (g - shared) * dim * kKeyLanes;
      for (int64_t d = 0; d < dim; d += 8) {
        __m256 r[kKeyLanes];
        for (int64_t j = 0; j < kKeyLanes; ++j) r[j] = load8(keys[j] + d);
        transpose8(r);
        for (int64_t j = 0; j < 8; ++j) _mm256_storeu_ps(dst + (d + j) * kKeyLanes, r[j]);
      }
    }
    v_rows.resize(len);
    const int64_t first = shared * kKeyLanes;
    if (prefix) std::copy(prefix->v_rows.begin(), prefix->v_rows.begin() + first, v_rows.begin());
    if constexpr (std::is_same_v<T, float>) {
      for (int64_t m = first; m < len; ++m) v_rows[m] = v_pool + slots[m] * slot_stride + head_offset;
    } else {
      v.resize((len - first) * dim);
      for (int64_t m = first; m < len; ++m) {
        const T* src = v_pool + slots[m] * slot_stride + head_offset;
        float* dst = v.data() + (m - first) * dim;
        for (int64_t d = 0; d < dim; d += 16) Vec16::load(src + d).store(dst + d);
        v_rows[m] = dst;
      }
    }
  }

  int64_t floats() const { return static_cast<int64_t>(kt.capacity() + v.capacity()); }
};

// scores of NV query vectors (scaled, float32 [dim]) for NG groups of 8 keys: for each lane l the
// FMA chains of dims l + 16c, then of dims l + 8 + 16c (added to the first, kept in `half`), NV x NG
// of them side by side. Measured on an AVX2 AMD EPYC, 6 x 2 (one K register per group, the
// queries broadcast) ran 1.45x faster than 2 x 2 with both halves at once: K's 256-bit loads, not
// the FMAs, bound this loop.
template <int CHUNKS, int NV, int NG>
inline void score_groups(const float* const* q, const float* kt, float* const* out) {
  constexpr int64_t group_floats = CHUNKS * 16 * kKeyLanes;
  alignas(32) float t[8][NV][NG][8], half[NV][NG][8];
  for (int l = 0; l < 8; ++l) {
    for (int h = 0; h < 2; ++h) {
      __m256 acc[NV][NG];
      for (int v = 0; v < NV; ++v)
        for (int g = 0; g < NG; ++g) acc[v][g] = _mm256_setzero_ps();
      for (int c = 0; c < CHUNKS; ++c) {
        const int64_t d = c * 16 + h * 8 + l;
        __m256 k[NG];
        for (int g = 0; g < NG; ++g) k[g] = _mm256_loadu_ps(kt + g * group_floats + d * kKeyLanes);
        for (int v = 0; v < NV; ++v) {
          const __m256 qd = _mm256_broadcast_ss(q[v] + d);
          for (int g = 0; g < NG; ++g) acc[v][g] = _mm256_fmadd_ps(qd, k[g], acc[v][g]);
        }
      }
      for (int v = 0; v < NV; ++v)
        for (int g = 0; g < NG; ++g) {
          if (h == 0) _mm256_store_ps(half[v][g], acc[v][g]);
          else _mm256_store_ps(t[l][v][g], _mm256_add_ps(_mm256_load_ps(half[v][g]), acc[v][g]));
        }
    }
  }
  for (int v = 0; v < NV; ++v)
    for (int g = 0; g < NG; ++g) {
      const auto u = [&](int l) { return _mm256_load_ps(t[l][v][g]); };
      const __m256 low = _mm256_add_ps(_mm256_add_ps(u(0), u(1)), _mm256_add_ps(u(2), u(3)));
      const __m256 high = _mm256_add_ps(_mm256_add_ps(u(4), u(5)), _mm256_add_ps(u(6), u(7)));
      _mm256_storeu_ps(out[v] + g * kKeyLanes, _mm256_add_ps(low, high));
    }
}

// For NV vectors and 16 dims from `offset`: acc[v] += w[v][m] * rows[m][offset ..] over keys
// m0 <= m < m1 in order (acc: each vector's running sums of a span, [NV][dim] with stride `dim`)
template <int NV>
inline void value_tile(const float* w, int64_t w_stride, const float* const* rows, int64_t offset, int64_t m0,
                       int64_t m1, float* acc, int64_t dim) {
  __m256 a[NV][2];
  for (int v = 0; v < NV; ++v)
    for (int r = 0; r < 2; ++r) a[v][r] = _mm256_loadu_ps(acc + v * dim + 8 * r);
  for (int64_t m = m0; m < m1; ++m) {
    const float* row = rows[m] + offset;
    const __m256 x0 = _mm256_loadu_ps(row), x1 = _mm256_loadu_ps(row + 8);
    for (int v = 0; v < NV; ++v) {
      const __m256 p = _mm256_broadcast_ss(w + v * w_stride + m);
      a[v][0] = _mm256_fmadd_ps(p, x0, a[v][0]);
      a[v][1] = _mm256_fmadd_ps(p, x1, a[v][1]);
    }
  }
  for (int v = 0; v < NV; ++v)
    for (int r = 0; r < 2; ++r) _mm256_storeu_ps(acc + v * dim + 8 * r, a[v][r]);
}

// What attend_rows computes (rows x group query vectors, row r over the first len + r slots), from
// the sequence packed by PackedSequence; rows * group <= kPromptVectors.
template <typename T, int CHUNKS>
void attend_prompt_rows(const T* q, int64_t q_head_stride, int64_t q_row_stride, int64_t group, int64_t rows,
                        const PackedSequence<T>& seq, int64_t len, float scale, float* acc_out, float* max_out,
                        float* sum_out, std::vector<float>& scratch) {
  constexpr int64_t dim = CHUNKS * 16;
  const int64_t vectors = rows * group, longest = len + rows - 1;
  const int64_t groups = (longest + kKeyLanes - 1) / kKeyLanes, stride = groups * kKeyLanes;
  scratch.resize(vectors * (2 * dim + stride));
  float* qs = scratch.data();
  float* scores = qs + vectors * dim;
  const Vec16 scale_v = Vec16::broadcast(scale);
  for (int64_t i = 0; i < vectors; ++i) {
    const T* qi = q + (i / group) * q_row_stride + (i % group) * q_head_stride;
    for (int c = 0; c < CHUNKS; ++c) {
      Vec16 scaled = Vec16::zero();
      scaled.fma(Vec16::load(qi + c * 16), scale_v);
      scaled.store(qs + i * dim + c * 16);
    }
  }
  for (int64_t g = 0; g < groups; g += 2) {
    const float* kt = seq.group(g, dim);
    const bool pair = g + 1 < groups;
    const auto run = [&](auto nv, int64_t i) {
      constexpr int NV = decltype(nv)::value;
      const float* qv[NV];
      float* out[NV];
      for (int v = 0; v < NV; ++v) {
        qv[v] = qs + (i + v) * dim;
        out[v] = scores + (i + v) * stride + g * kKeyLanes;
      }
      if (pair) score_groups<CHUNKS, NV, 2>(qv, kt, out);
      else score_groups<CHUNKS, NV, 1>(qv, kt, out);
    };
    int64_t i = 0;
    for (; i + kTileVectors <= vectors; i += kTileVectors) run(std::integral_constant<int, kTileVectors>{}, i);
    for (; i < vectors; ++i) run(std::integral_constant<int, 1>{}, i);
  }
  for (int64_t i = 0; i < vectors; ++i) exponentiate(scores + i * stride, len + i / group, max_out + i, sum_out + i);
  // P.V a block of keys at a time (their V rows stay in L1 while every vector reads them)
  float* span = scores + vectors * stride;  // [vectors][dim]: each vector's sums of this span so far
  std::fill(acc_out, acc_out + vectors * dim, 0.f);
  for (int64_t s0 = 0; s0 < longest; s0 += kSpan) {
    const int64_t s1 = std::min(longest, s0 + kSpan);
    std::fill(span, span + vectors * dim, 0.f);
    for (int64_t b0 = s0; b0 < s1; b0 += kValueBlock) {
      const int64_t b1 = std::min(s1, b0 + kValueBlock);
      const auto reach = [&](int64_t i) { return std::min(b1, len + i / group); };  // a vector's own slots only
      for (int64_t i = 0; i < vectors; i += kTileVectors) {
        const int64_t n = std::min<int64_t>(kTileVectors, vectors - i);
        // a full tile runs together up to where its first vector's slots end (it reaches least),
        // then each of its vectors goes on alone
        const int64_t together = n == kTileVectors ? std::max(b0, reach(i)) : b0;
        const float* w = scores + i * stride;
        float* acc = span + i * dim;
        for (int64_t d = 0; d < dim; d += 16) {
          if (n == kTileVectors) value_tile<kTileVectors>(w, stride, seq.v_rows.data(), d, b0, together, acc + d, dim);
          for (int64_t v = 0; v < n; ++v) {
            value_tile<1>(w + v * stride, stride, seq.v_rows.data(), d, together, std::max(together, reach(i + v)),
                          acc + v * dim + d, dim);
          }
        }
      }
    }
    for (int64_t i = 0; i < vectors * dim; ++i) acc_out[i] += span[i];  // a vector past its slots adds +0
  }
}

template <typename T>
auto attend_prompt_rows_for(int64_t dim) -> decltype(&attend_prompt_rows<T, 4>) {
  switch (dim / 16) {
    case 1: return attend_prompt_rows<T, 1>;
    case 2: return attend_prompt_rows<T, 2>;
    case 4: return attend_prompt_rows<T, 4>;
    case 5: return attend_prompt_rows<T, 5>;
    case 6: return attend_prompt_rows<T, 6>;
    case 8: return attend_prompt_rows<T, 8>;
    case 16: return attend_prompt_rows<T, 16>;
    default: TORCH_CHECK(false, "head_dim ", dim, " is not one of 16, 32, 64, 80, 96, 128, 256");
  }
}

}  // namespace radixrt_decode

#endif
