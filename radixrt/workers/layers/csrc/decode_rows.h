// The decode-attention loop of one (request, kv head) in float32 FMAs over K/V rows read in place
// from the pool (decode_attention.cpp; shared_prefix_decode.cpp for the parts of a sequence no
// other request of the batch shares).
#pragma once

#include <ATen/ATen.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace radixrt_decode {

// 16 float32 lanes: one AVX-512 register, two AVX2 ones, or a plain array the compiler vectorizes
// as it can.
#if defined(__AVX512F__)
struct Vec16 {
  __m512 v;
  static Vec16 zero() { return {_mm512_setzero_ps()}; }
  static Vec16 broadcast(float x) { return {_mm512_set1_ps(x)}; }
  static Vec16 load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static Vec16 load(const at::BFloat16* p) {
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16))};
  }
  void fma(Vec16 a, Vec16 b) { v = _mm512_fmadd_ps(a.v, b.v, v); }  // this += a * b
  float sum() const {  // as sum4 adds, so a score's bits do not depend on which of the two computed it
    float out[4];
    const Vec16 d[4] = {*this, zero(), zero(), zero()};
    sum4(d, out);
    return out[0];
  }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  // out[j] = d[j].sum() for j < 4: neighbours interleaved and added, then the 128-bit lanes
  static void sum4(const Vec16* d, float* out) {
    const __m512 ab = _mm512_add_ps(_mm512_unpacklo_ps(d[0].v, d[1].v), _mm512_unpackhi_ps(d[0].v, d[1].v));
    const __m512 cd = _mm512_add_ps(_mm512_unpacklo_ps(d[2].v, d[3].v), _mm512_unpackhi_ps(d[2].v, d[3].v));
    const __m512d ab_d = _mm512_castps_pd(ab), cd_d = _mm512_castps_pd(cd);
    const __m512 lanes = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(ab_d, cd_d)),
                                       _mm512_castpd_ps(_mm512_unpackhi_pd(ab_d, cd_d)));
    const __m128 low = _mm_add_ps(_mm512_castps512_ps128(lanes), _mm512_extractf32x4_ps(lanes, 1));
    const __m128 high = _mm_add_ps(_mm512_extractf32x4_ps(lanes, 2), _mm512_extractf32x4_ps(lanes, 3));
    _mm_storeu_ps(out, _mm_add_ps(low, high));
  }
};
#elif defined(__AVX2__)
struct Vec16 {  // two AVX2 registers
  __m256 lo, hi;
  static Vec16 zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
  static Vec16 broadcast(float x) { return {_mm256_set1_ps(x), _mm256_set1_ps(x)}; }
  static Vec16 load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
  static Vec16 load(const at::BFloat16* p) {
    const __m256i bits = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    return {widen(_mm256_castsi256_si128(bits)), widen(_mm256_extracti128_si256(bits, 1))};
  }
  static __m256 widen(__m128i bf16) { return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(bf16), 16)); }
  void fma(Vec16 a, Vec16 b) {  // this += a * b
    lo = _mm256_fmadd_ps(a.lo, b.lo, lo);
    hi = _mm256_fmadd_ps(a.hi, b.hi, hi);
  }
  float sum() const {
    float out[4];
    const Vec16 d[4] = {*this, zero(), zero(), zero()};
    sum4(d, out);
    return out[0];
  }
  void store(float* p) const {
    _mm256_storeu_ps(p, lo);
    _mm256_storeu_ps(p + 8, hi);
  }
  // out[j] = d[j].sum() for j < 4: halves added, neighbours added pairwise twice, then the 128-bit lanes
  static void sum4(const Vec16* d, float* out) {
    __m256 s[4];
    for (int j = 0; j < 4; ++j) s[j] = _mm256_add_ps(d[j].lo, d[j].hi);
    const __m256 all = _mm256_hadd_ps(_mm256_hadd_ps(s[0], s[1]), _mm256_hadd_ps(s[2], s[3]));
    _mm_storeu_ps(out, _mm_add_ps(_mm256_castps256_ps128(all), _mm256_extractf128_ps(all, 1)));
  }
};
#else
struct Vec16 {
  float v[16];
  static Vec16 zero() { return broadcast(0.f); }
  static Vec16 broadcast(float x) {
    Vec16 r;
    std::fill(r.v, r.v + 16, x);
    return r;
  }
  static Vec16 load(const float* p) {
    Vec16 r;
    std::memcpy(r.v, p, sizeof r.v);
    return r;
  }
  static Vec16 load(const at::BFloat16* p) {
    Vec16 r;
    const auto* bits = reinterpret_cast<const uint16_t*>(p);
    for (int i = 0; i < 16; ++i) {
      const uint32_t widened = static_cast<uint32_t>(bits[i]) << 16;
      std::memcpy(r.v + i, &widened, sizeof(float));
    }
    return r;
  }
  void fma(Vec16 a, Vec16 b) {
    for (int i = 0; i < 16; ++i) v[i] += a.v[i] * b.v[i];
  }
  float sum() const {
    float s[16];
    std::memcpy(s, v, sizeof s);
    for (int width = 8; width > 0; width /= 2) {
      for (int i = 0; i < width; ++i) s[i] += s[i + width];
    }
    return s[0];
  }
  void store(float* p) const { std::memcpy(p, v, sizeof v); }
  static void sum4(const Vec16* d, float* out) {
    for (int j = 0; j < 4; ++j) out[j] = d[j].sum();
  }
};
#endif

constexpr int64_t kMaxGroup = 16;  // query heads per kv head
// Slots are scattered over the pool, so the hardware prefetcher cannot guess the next row.
constexpr int64_t kPrefetchAhead = 8;
constexpr int64_t kWholeSlotPrefetchBytes = 768 << 10;  // within a core's L2 on current x86 CPUs

template <typename T>
inline void prefetch_row(const T* row, int64_t bytes) {
  for (int64_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(reinterpret_cast<const char*>(row) + offset);
}

// exp(x) for x <= 0 (scores minus their max): x = k ln2 + r with |r| <= ln2 / 2, exp(r) by
// its degree-7 Taylor polynomial (relative error below 2e-7), 2^k put into the float's exponent
// bits. Below -87 the result is 0. The vector lanes and the scalar tail do the same fused
// multiply-adds, so a value's result does not depend on where it lies in x. (Written as a plain
// loop, the compiler kept it scalar: with AVX2 a 1,024-token batch-1 step's attention took a
// quarter less once vectorized.)
inline float exp_nonpositive_one(float x) {
  const float v = std::max(x, -87.f);
  const float k = std::floor(std::fma(v, 1.44269504f, 0.5f));
  const float r = std::fma(-k, 1.42860677e-6f, std::fma(-k, 0.693145752f, v));
  float p = 1.f / 5040;
  for (const float c : {1.f / 720, 1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f}) p = std::fma(p, r, c);
  const uint32_t scale_bits = static_cast<uint32_t>(static_cast<int32_t>(k) + 127) << 23;
  float scale;
  std::memcpy(&scale, &scale_bits, sizeof(float));
  return p * scale;
}

#if defined(__AVX2__)
inline __m256 exp8_nonpositive(__m256 x) {  // exp_nonpositive_one on 8 lanes
  const __m256 v = _mm256_max_ps(x, _mm256_set1_ps(-87.f));
  const __m256 k = _mm256_floor_ps(_mm256_fmadd_ps(v, _mm256_set1_ps(1.44269504f), _mm256_set1_ps(0.5f)));
  const __m256 r = _mm256_fnmadd_ps(k, _mm256_set1_ps(1.42860677e-6f), _mm256_fnmadd_ps(k, _mm256_set1_ps(0.693145752f), v));
  __m256 p = _mm256_set1_ps(1.f / 5040);
  for (const float c : {1.f / 720, 1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f}) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
  const __m256i scale = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(scale));
}
#endif

// max over 16 interleaved partials (a loop the compiler vectorizes), in an order that depends on n
// only
inline float max_of(const float* x, int64_t n) {
  float part[16];
  std::fill(part, part + 16, -std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    for (int j = 0; j < 16; ++j) part[j] = std::max(part[j], x[i + j]);
  }
  for (; i < n; ++i) part[0] = std::max(part[0], x[i]);
  return *std::max_element(part, part + 16);
}

// scores[i * stride + l] = qv[i] . (K row of slots[l]) for l < len and the first `vectors` query
// vectors (VECTORS where it is a compile-time constant), four keys at a time where they can be
template <typename T, int CHUNKS, int VECTORS>
void score_keys(const Vec16* qv, int64_t runtime_vectors, const T* k_pool, int64_t slot_stride, const int64_t* slots,
                int64_t len, int64_t head_offset, int64_t fetch_offset, int64_t fetch_bytes, float* scores,
                int64_t stride) {
  const int64_t vectors = VECTORS > 0 ? VECTORS : runtime_vectors;
  Vec16 rows[4][CHUNKS];
  int64_t l = 0;
  for (; l + 4 <= len; l += 4) {
    for (int j = 0; j < 4; ++j) {
      if (l + j + kPrefetchAhead < len) {
        prefetch_row(k_pool + slots[l + j + kPrefetchAhead] * slot_stride + fetch_offset, fetch_bytes);
      }
      const T* k = k_pool + slots[l + j] * slot_stride + head_offset;
      for (int c = 0; c < CHUNKS; ++c) rows[j][c] = Vec16::load(k + c * 16);
    }
    for (int64_t i = 0; i < vectors; ++i) {
      Vec16 dots[4] = {Vec16::zero(), Vec16::zero(), Vec16::zero(), Vec16::zero()};
      for (int c = 0; c < CHUNKS; ++c) {
        for (int j = 0; j < 4; ++j) dots[j].fma(qv[i * CHUNKS + c], rows[j][c]);
      }
      Vec16::sum4(dots, scores + i * stride + l);
    }
  }
  for (; l < len; ++l) {
    const T* k = k_pool + slots[l] * slot_stride + head_offset;
    for (int c = 0; c < CHUNKS; ++c) rows[0][c] = Vec16::load(k + c * 16);
    for (int64_t i = 0; i < vectors; ++i) {
      Vec16 dot = Vec16::zero();
      for (int c = 0; c < CHUNKS; ++c) dot.fma(qv[i * CHUNKS + c], rows[0][c]);
      scores[i * stride + l] = dot.sum();
    }
  }
}

// NOTE: P.V sums the keys in spans of kSpan: each span from zero in key order, then the spans' sums
// added in order (float32, lane by lane). Up to kSpan keys this is one running sum; beyond, a
// long sequence's spans are pieces that threads can share when the batch has too few items to
// keep them busy (decode_attention.cpp), and every path sums this way, so the bits agree.
constexpr int64_t kSpan = 256;  // a multiple of 4: score_keys sums keys four at a time from 0

// the query vectors times the softmax scale, as the score loops read them
template <typename T, int CHUNKS>
inline void load_queries(const T* q, int64_t q_head_stride, int64_t vectors, float scale, Vec16* qv) {
  const Vec16 scale_v = Vec16::broadcast(scale);
  for (int64_t g = 0; g < vectors; ++g) {
    for (int c = 0; c < CHUNKS; ++c) {
      qv[g * CHUNKS + c] = Vec16::zero();
      qv[g * CHUNKS + c].fma(Vec16::load(q + g * q_head_stride + c * 16), scale_v);
    }
  }
}

// x[i] -> exp(x[i] - max) in place, and their sum, in one pass. The sum's order depends on n only:
// 16 interleaved partials over whole blocks of 16, the rest into the first, then a tree.
inline float exp_shifted_sum(float* x, int64_t n, float max) {
  alignas(32) float part[16] = {};
  int64_t i = 0;
#if defined(__AVX2__)
  const __m256 shift = _mm256_set1_ps(max);
  __m256 low = _mm256_setzero_ps(), high = _mm256_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    const __m256 a = exp8_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(x + i), shift));
    const __m256 b = exp8_nonpositive(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8), shift));
    _mm256_storeu_ps(x + i, a);
    _mm256_storeu_ps(x + i + 8, b);
    low = _mm256_add_ps(low, a);
    high = _mm256_add_ps(high, b);
  }
  _mm256_store_ps(part, low);
  _mm256_store_ps(part + 8, high);
#else
  for (; i + 16 <= n; i += 16) {
    for (int j = 0; j < 16; ++j) part[j] += x[i + j] = exp_nonpositive_one(x[i + j] - max);
  }
#endif
  for (; i < n; ++i) part[0] += x[i] = exp_nonpositive_one(x[i] - max);
  for (int width = 8; width > 0; width /= 2) {
    for (int j = 0; j < width; ++j) part[j] += part[j + width];
  }
  return part[0];
}

// one query vector's scores in place -> exp(score - max), with that max and the sum
inline void exponentiate(float* s, int64_t len, float* max_out, float* sum_out) {
  *max_out = max_of(s, len);
  *sum_out = exp_shifted_sum(s, len, *max_out);
}

// out[g * dim + d] = sum over keys s0 <= l < s1, in order, of weights[g * stride + l] * V[slots[l]][d]
// for the group's query vectors (GROUP where it is a compile-time constant)
template <typename T, int CHUNKS, int GROUP>
void value_span(const float* weights, int64_t stride, int64_t runtime_group, const T* v_pool, int64_t slot_stride,
                const int64_t* slots, int64_t len, int64_t head_offset, int64_t fetch_offset, int64_t fetch_bytes,
                int64_t s0, int64_t s1, float* out) {
  const int64_t group = GROUP > 0 ? GROUP : runtime_group;
  Vec16 acc[kMaxGroup * CHUNKS];
  for (int64_t i = 0; i < group * CHUNKS; ++i) acc[i] = Vec16::zero();
  Vec16 row[CHUNKS];
  for (int64_t l = s0; l < s1; ++l) {
    if (l + kPrefetchAhead < len) prefetch_row(v_pool + slots[l + kPrefetchAhead] * slot_stride + fetch_offset, fetch_bytes);
    const T* v = v_pool + slots[l] * slot_stride + head_offset;
    for (int c = 0; c < CHUNKS; ++c) row[c] = Vec16::load(v + c * 16);
    for (int64_t g = 0; g < group; ++g) {
      const Vec16 p = Vec16::broadcast(weights[g * stride + l]);
      for (int c = 0; c < CHUNKS; ++c) acc[g * CHUNKS + c].fma(p, row[c]);
    }
  }
  for (int64_t i = 0; i < group * CHUNKS; ++i) acc[i].store(out + i * 16);
}

// scores[g * len + l] of the group's query vectors for the keys of one span, l0 <= l < l1
template <typename T, int CHUNKS>
void score_span(const T* q, int64_t q_head_stride, int64_t group, float scale, const T* k_pool, int64_t slot_stride,
                const int64_t* slots, int64_t len, int64_t kv_head, int64_t l0, int64_t l1, float* scores) {
  Vec16 qv[kMaxGroup * CHUNKS];
  load_queries<T, CHUNKS>(q, q_head_stride, group, scale, qv);
  const int64_t head_offset = kv_head * CHUNKS * 16;
  score_keys<T, CHUNKS, 0>(qv, group, k_pool, slot_stride, slots + l0, l1 - l0, head_offset, head_offset,
                           CHUNKS * 16 * sizeof(T), scores + l0, len);
}

// CHUNKS = head_dim / 16 is a compile-time constant, so that a K or V row lives in registers;
// GROUP too where it is not 0 (the common shapes), so that the P.V accumulators do.
template <typename T, int CHUNKS, int GROUP>
void attend_one(const T* q, int64_t q_head_stride, const T* k_pool, const T* v_pool, int64_t slot_stride,
                const int64_t* slots, int64_t len, int64_t kv_head, int64_t runtime_group, float scale, float* acc_out,
                float* max_out, float* sum_out, std::vector<float>& scores) {
  const int64_t group = GROUP > 0 ? GROUP : runtime_group;
  constexpr int64_t dim = CHUNKS * 16, row_bytes = dim * sizeof(T);
  const int64_t head_offset = kv_head * dim;
  // The first kv head's item prefetches whole slots (every head's row, contiguous): the same
  // request's other heads, the next items on this thread, then find their rows in cache
  // (batch 16 at 512-token contexts: 12.4 -> 10.7 ms of attention per step). Only while the
  // request's K and V fit in cache: beyond, the prefetched rows would be gone before their use.
  const int64_t slot_bytes = slot_stride * static_cast<int64_t>(sizeof(T));
  const bool whole_slots = kv_head == 0 && 2 * len * slot_bytes <= kWholeSlotPrefetchBytes;
  const int64_t fetch_offset = whole_slots ? 0 : head_offset;
  const int64_t fetch_bytes = whole_slots ? slot_bytes : row_bytes;
  Vec16 qv[kMaxGroup * CHUNKS];
  load_queries<T, CHUNKS>(q, q_head_stride, group, scale, qv);
  scores.resize(group * len);
  // Q.K four keys at a time: their dot products are summed across lanes together
  score_keys<T, CHUNKS, GROUP>(qv, group, k_pool, slot_stride, slots, len, head_offset, fetch_offset, fetch_bytes,
                               scores.data(), len);
  for (int64_t g = 0; g < group; ++g) exponentiate(scores.data() + g * len, len, max_out + g, sum_out + g);
  const int64_t n = group * CHUNKS * 16;
  std::fill(acc_out, acc_out + n, 0.f);
  alignas(64) float span[kMaxGroup * CHUNKS * 16];
  for (int64_t s0 = 0; s0 < len; s0 += kSpan) {
    value_span<T, CHUNKS, GROUP>(scores.data(), len, group, v_pool, slot_stride, slots, len, head_offset, fetch_offset,
                                 fetch_bytes, s0, std::min(len, s0 + kSpan), span);
    for (int64_t i = 0; i < n; ++i) acc_out[i] += span[i];
  }
}

// `rows` consecutive prompt rows of one request (row r over the first len + r slots) and their
// `group` query heads each, as rows x group query vectors that share every K and V row read: each
// vector gets the bits attend_one gives it alone (the same scores, four keys or one at a time
// alike, softmax over its own slots, and V rows added in the same order), at one read of K/V for
// all. rows * group <= kMaxGroup.
template <typename T, int CHUNKS>
void attend_rows(const T* q, int64_t q_head_stride, int64_t q_row_stride, int64_t group, int64_t rows,
                 const T* k_pool, const T* v_pool, int64_t slot_stride, const int64_t* slots, int64_t len,
                 int64_t kv_head, float scale, float* acc_out, float* max_out, float* sum_out,
                 std::vector<float>& scores) {
  constexpr int64_t dim = CHUNKS * 16;
  const int64_t head_offset = kv_head * dim, vectors = rows * group, longest = len + rows - 1;
  Vec16 qv[kMaxGroup * CHUNKS];
  const Vec16 scale_v = Vec16::broadcast(scale);
  for (int64_t i = 0; i < vectors; ++i) {
    const T* qi = q + (i / group) * q_row_stride + (i % group) * q_head_stride;
    for (int c = 0; c < CHUNKS; ++c) {
      qv[i * CHUNKS + c] = Vec16::zero();
      qv[i * CHUNKS + c].fma(Vec16::load(qi + c * 16), scale_v);
    }
  }
  scores.resize(vectors * longest);
  score_keys<T, CHUNKS, 0>(qv, vectors, k_pool, slot_stride, slots, longest, head_offset, head_offset, dim * sizeof(T),
                           scores.data(), longest);
  for (int64_t i = 0; i < vectors; ++i) {
    exponentiate(scores.data() + i * longest, len + i / group, max_out + i, sum_out + i);  // its own slots
  }
  // P.V by spans as attend_one sums them; a vector whose slots ended before a span adds +0 for it
  std::fill(acc_out, acc_out + vectors * CHUNKS * 16, 0.f);
  Vec16 acc[kMaxGroup * CHUNKS];
  Vec16 row[CHUNKS];
  for (int64_t s0 = 0; s0 < longest; s0 += kSpan) {
    for (int64_t i = 0; i < vectors * CHUNKS; ++i) acc[i] = Vec16::zero();
    for (int64_t m = s0; m < std::min(longest, s0 + kSpan); ++m) {
      if (m + kPrefetchAhead < longest) prefetch_row(v_pool + slots[m + kPrefetchAhead] * slot_stride + head_offset, dim * sizeof(T));
      const T* v = v_pool + slots[m] * slot_stride + head_offset;
      for (int c = 0; c < CHUNKS; ++c) row[c] = Vec16::load(v + c * 16);
      // the rows that reach slot m: all but the first m - len + 1
      for (int64_t i = std::max<int64_t>(0, m - len + 1) * group; i < vectors; ++i) {
        const Vec16 p = Vec16::broadcast(scores[i * longest + m]);
        for (int c = 0; c < CHUNKS; ++c) acc[i * CHUNKS + c].fma(p, row[c]);
      }
    }
    alignas(64) float lanes[16];
    for (int64_t i = 0; i < vectors * CHUNKS; ++i) {
      acc[i].store(lanes);
      for (int d = 0; d < 16; ++d) acc_out[i * 16 + d] += lanes[d];
    }
  }
}

template <typename T>
auto attend_rows_for(int64_t dim) -> decltype(&attend_rows<T, 4>) {
  switch (dim / 16) {
    case 1: return attend_rows<T, 1>;
    case 2: return attend_rows<T, 2>;
    case 4: return attend_rows<T, 4>;
    case 5: return attend_rows<T, 5>;
    case 6: return attend_rows<T, 6>;
    case 8: return attend_rows<T, 8>;
    case 16: return attend_rows<T, 16>;
    default: TORCH_CHECK(false, "head_dim ", dim, " is not one of 16, 32, 64, 80, 96, 128, 256");
  }
}

// head_dim 64 and 128 with 1-8 query heads per kv head get the group as a constant too
template <typename T, int CHUNKS>
auto with_group(int64_t group) -> decltype(&attend_one<T, CHUNKS, 0>) {
  switch (group) {
    case 1: return attend_one<T, CHUNKS, 1>;
    case 2: return attend_one<T, CHUNKS, 2>;
    case 3: return attend_one<T, CHUNKS, 3>;
    case 4: return attend_one<T, CHUNKS, 4>;
    case 5: return attend_one<T, CHUNKS, 5>;
    case 6: return attend_one<T, CHUNKS, 6>;
    case 7: return attend_one<T, CHUNKS, 7>;
    case 8: return attend_one<T, CHUNKS, 8>;
    default: return attend_one<T, CHUNKS, 0>;
  }
}

// The attend_one instance for this head_dim and group (keep in step with
// cpu_kernels.DECODE_HEAD_DIMS).
template <typename T>
auto attend_for(int64_t dim, int64_t group) -> decltype(&attend_one<T, 4, 0>) {
  switch (dim / 16) {
    case 1: return attend_one<T, 1, 0>;
    case 2: return attend_one<T, 2, 0>;
    case 4: return with_group<T, 4>(group);
    case 5: return attend_one<T, 5, 0>;
    case 6: return attend_one<T, 6, 0>;
    case 8: return with_group<T, 8>(group);
    case 16: return attend_one<T, 16, 0>;
    default: TORCH_CHECK(false, "head_dim ", dim, " is not one of 16, 32, 64, 80, 96, 128, 256");
  }
}

// score_span and a value_span instance for this head_dim and group
template <typename T>
struct SpanPieces {
  decltype(&score_span<T, 4>) score;
  decltype(&value_span<T, 4, 0>) values;
};

template <typename T, int CHUNKS>
SpanPieces<T> span_pieces_with_group(int64_t group) {
  switch (group) {
    case 1: return {score_span<T, CHUNKS>, value_span<T, CHUNKS, 1>};
    case 2: return {score_span<T, CHUNKS>, value_span<T, CHUNKS, 2>};
    case 3: return {score_span<T, CHUNKS>, value_span<T, CHUNKS, 3>};
    case 4: return {score_span<T, CHUNKS>, value_span<T, CHUNKS, 4>};
    case 6: return {score_span<T, CHUNKS>, value_span<T, CHUNKS, 6>};
    case 8: return {score_span<T, CHUNKS>, value_span<T, CHUNKS, 8>};
    default: return {score_span<T, CHUNKS>, value_span<T, CHUNKS, 0>};
  }
}

template <typename T>
SpanPieces<T> span_pieces_for(int64_t dim, int64_t group) {
  switch (dim / 16) {
    case 1: return {score_span<T, 1>, value_span<T, 1, 0>};
    case 2: return {score_span<T, 2>, value_span<T, 2, 0>};
    case 4: return span_pieces_with_group<T, 4>(group);
    case 5: return {score_span<T, 5>, value_span<T, 5, 0>};
    case 6: return {score_span<T, 6>, value_span<T, 6, 0>};
    case 8: return span_pieces_with_group<T, 8>(group);
    case 16: return {score_span<T, 16>, value_span<T, 16, 0>};
    default: TORCH_CHECK(false, "head_dim ", dim, " is not one of 16, 32, 64, 80, 96, 128, 256");
  }
}

// out[r * dim + d] = acc[r * dim + d] / sum[r], rounded to T, for rows r < rows
template <typename T>
inline void normalize_rows(const float* acc, const float* sum, int64_t rows, int64_t dim, T* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const float inv = 1.f / sum[r];
    for (int64_t d = 0; d < dim; ++d) out[r * dim + d] = static_cast<T>(acc[r * dim + d] * inv);
  }
}

}  // namespace radixrt_decode
