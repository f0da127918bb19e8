// Activations quantized for the integer linears (linear_int8.cpp, linear_q4_1.cpp): each row of x
// in groups of GROUP values along K, each group with its own scale, x ~ X * scale[g], X int8 in
// [-127, 127] rounded to nearest even; with each group's sum of X, which the kernels need to undo
// an offset on the weights (int8 stored + 128, Q4_1's minimum).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "linear_tiles.h"
#include "simd.h"

#if defined(__AVX2__)
#include <immintrin.h>
#endif

namespace radixrt_quant {

constexpr int64_t QUAD = 4;    // int8 values per VPDPBUSD lane
constexpr int64_t GROUP = 32;  // activation values sharing a scale (8 quads); GGUF's block size too
constexpr int64_t GROUP_QUADS = GROUP / QUAD;
constexpr float XMAX = 127.f;
constexpr int64_t HALF_ROWS = 4;  // rows per register pass of the integer tiles: int32 and float32 sums for 2 blocks each

struct QuantizedRows {
  int64_t padded, groups;
  std::vector<int8_t> x;      // [rows][padded], zero padded to whole quads
  std::vector<float> scale;   // [rows][groups]
  std::vector<int32_t> sum;   // [rows][groups]: the sum of the group's X
};

#if defined(__AVX2__)  // dot_s8 also serves AVX-512 CPUs without VNNI
using radixrt_simd::load8;
inline float max8(__m256 v) {
  __m128 m = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  m = _mm_max_ps(m, _mm_movehl_ps(m, m));
  return _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)));
}
inline int32_t sum8(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  return _mm_cvtsi128_si32(_mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1)));
}
// int32 lanes of acc += the sums of 4 products of signed bytes q and x (|q|, |x| <= 127): |x|
// times q with x's sign, in pairs of int16 (at most 2 * 127 * 127, never saturated), widened.
// What VPDPBUSD does on AVX-512 VNNI, exact, in four instructions.
inline __m256i dot_s8(__m256i acc, __m256i q, __m256i x) {
  const __m256i pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(q, x));
  return _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
}
#endif

// one group of `len` values of a row: its scale, its values as int8 and its sum
template <typename T>
float quantize_group(const T* src, int64_t len, int8_t* dst, int32_t* sum) {
  float amax = 0.f;
  int64_t i = 0;
#if defined(__AVX512F__)
  __m512 vmax = _mm512_setzero_ps();
  for (; i + 16 <= len; i += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(radixrt_simd::load16(src + i)));
  amax = _mm512_reduce_max_ps(vmax);
#elif defined(__AVX2__)
  __m256 vmax = _mm256_setzero_ps();
  const __m256 sign = _mm256_set1_ps(-0.f);
  for (; i + 8 <= len; i += 8) vmax = _mm256_max_ps(vmax, _mm256_andnot_ps(sign, load8(src + i)));
  amax = max8(vmax);
#endif
  for (; i < len; ++i) amax = std::max(amax, std::abs(static_cast<float>(src[i])));
  const float scale = amax > 0.f ? amax / XMAX : 1.f, inv = 1.f / scale;
  int32_t total = 0;
  i = 0;
#if defined(__AVX512F__)
  __m512i vsum = _mm512_setzero_si512();
  for (; i + 16 <= len; i += 16) {  // rounds to nearest even (the default mode), as std::nearbyint below
    __m512i v = _mm512_cvtps_epi32(_mm512_mul_ps(radixrt_simd::load16(src + i), _mm512_set1_ps(inv)));
    v = _mm512_max_epi32(_mm512_min_epi32(v, _mm512_set1_epi32(127)), _mm512_set1_epi32(-127));
    vsum = _mm512_add_epi32(vsum, v);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), _mm512_cvtepi32_epi8(v));
  }
  total = _mm512_reduce_add_epi32(vsum);
#elif defined(__AVX2__)
  __m256i vsum = _mm256_setzero_si256();
  for (; i + 8 <= len; i += 8) {  // as above, 8 lanes at a time
    __m256i v = _mm256_cvtps_epi32(_mm256_mul_ps(load8(src + i), _mm256_set1_ps(inv)));
    v = _mm256_max_epi32(_mm256_min_epi32(v, _mm256_set1_epi32(127)), _mm256_set1_epi32(-127));
    vsum = _mm256_add_epi32(vsum, v);
    const __m128i words = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    _mm_storel_epi64(reinterpret_cast<__m128i*>(dst + i), _mm_packs_epi16(words, words));
  }
  total = sum8(vsum);
#endif
  for (; i < len; ++i) {
    const int v = static_cast<int>(std::clamp(std::nearbyint(static_cast<float>(src[i]) * inv), -XMAX, XMAX));
    dst[i] = static_cast<int8_t>(v);
    total += v;
  }
  *sum = total;
  return scale;
}

template <typename T>
QuantizedRows quantize_rows(const T* x, int64_t rows, int64_t k) {
  using radixrt_linear::ceil_div;
  QuantizedRows q{ceil_div(k, QUAD) * QUAD, ceil_div(k, GROUP), {}, {}, {}};
  q.x.assign(rows * q.padded, 0);
  q.scale.resize(rows * q.groups);
  q.sum.resize(rows * q.groups);
  // NOTE: 4 rows a task: a batch of 16 decode rows quantized on one thread took 11 us of a 77 us
  // down projection (AMD EPYC)
  at::parallel_for(0, rows, 4, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t g = 0; g < q.groups; ++g) {
        const int64_t i = g * GROUP, len = std::min(GROUP, k - i);
        q.scale[r * q.groups + g] =
            quantize_group(x + r * k + i, len, q.x.data() + r * q.padded + i, &q.sum[r * q.groups + g]);
      }
  });
  return q;
}

// x as a 2-d contiguous CPU tensor of bf16 or float32 with k columns, checked
inline at::Tensor checked_rows(const at::Tensor& x, int64_t k) {
  TORCH_CHECK(x.dim() == 2 && x.device().is_cpu(), "x must be a 2-d CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat, "x must be bfloat16 or float32");
  TORCH_CHECK(x.size(1) == k, "x has ", x.size(1), " columns; the weights expect K = ", k);
  return x.contiguous();
}

// 16 float32 lanes of y (+ bias) into row `y` at column `col`, `width` of them valid
template <typename T>
inline void store_block(T* y, int64_t col, int64_t width, const float* bias, const float* acc) {
  for (int64_t j = 0; j < width; ++j) {
    volatile float v = acc[j];  // NOTE: rounded before the bias is added, as the vector path does
    y[col + j] = static_cast<T>(v + (bias ? bias[col + j] : 0.f));
  }
}

#if defined(__AVX512F__)
template <typename T>
inline void store_block(T* y, int64_t col, int64_t width, const float* bias, __m512 v) {
  const __mmask16 mask = static_cast<__mmask16>((1u << width) - 1);
  v = _mm512_add_ps(v, bias ? _mm512_maskz_loadu_ps(mask, bias + col) : _mm512_setzero_ps());
  if (width == radixrt_linear::BLOCK) {
    radixrt_simd::store16(y + col, v);
  } else {
    alignas(64) T tmp[radixrt_linear::BLOCK];
    radixrt_simd::store16(tmp, v);
    std::memcpy(y + col, tmp, width * sizeof(T));
  }
}
#endif

}  // namespace radixrt_quant
