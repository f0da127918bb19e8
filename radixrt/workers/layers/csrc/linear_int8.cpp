// y = (x @ Q^T) * scale (+ bias): weight-only int8 linears, activations in bf16 or float32.
//
// Q holds each weight as an int8 and `scale` one float32 per output column (symmetric, per output
// channel: W ~ Q * scale[n]). A one-row step reads half the bytes of bf16 weights, which is what
// bounds decoding at small batches. Packed like linear.cpp's bf16 weights, K in pairs:
//   [N/16][K/2][16][2] int8
// In bf16, a pair step widens 32 int8 (exact in bf16) and feeds VDPBF16PS for up to 8 rows; in
// float32 the two K parities accumulate in separate lanes that are added at the end. Every output
// element is reduced over K in one fixed order, and the scale is applied once at the end, so, as
// in linear.cpp, a row's bits depend neither on the batch nor on the threads.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "linear_tiles.h"
#include "simd.h"

namespace {

using radixrt_linear::BLOCK;
using radixrt_linear::ceil_div;
using radixrt_linear::Tile;
using radixrt_linear::TILE_BLOCKS;

at::Tensor pack_int8_weight(const at::Tensor& q) {
  TORCH_CHECK(q.dim() == 2 && q.device().is_cpu() && q.scalar_type() == at::kChar, "q must be a 2-d CPU int8 tensor");
  const int64_t n = q.size(0), k = q.size(1), blocks = ceil_div(n, BLOCK), pairs = ceil_div(k, 2);
  const at::Tensor src_t = q.contiguous();
  at::Tensor packed = at::zeros({blocks, pairs, BLOCK, 2}, q.options());
  const int8_t* src = src_t.data_ptr<int8_t>();
  int8_t* dst = packed.data_ptr<int8_t>();
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t j = 0; j < BLOCK && b * BLOCK + j < n; ++j)
        for (int64_t i = 0; i < k; ++i) dst[((b * pairs + i / 2) * BLOCK + j) * 2 + i % 2] = src[(b * BLOCK + j) * k + i];
  });
  return packed;
}

// the finished sums of one block (16 columns of one row): * scale + bias, rounded once to T
template <typename T>
void store_block(const float* sums, const Tile& t, int64_t block, const float* scale, T* y) {
  const int64_t col = t.col0 + block * BLOCK;
  for (int64_t j = 0; j < BLOCK && col + j < t.n; ++j) {
    float v = sums[j] * scale[col + j];
    if (t.bias) v += t.bias[col + j];
    y[col + j] = static_cast<T>(v);
  }
}

#if defined(__AVX512BF16__)
// The tile's int8 weights widened to bf16 (exact), in linear.cpp's packed layout, once per thread
// and tile: every chunk of rows after the first reads them from cache.
void widen_tile(const int8_t* w, const Tile& t, at::BFloat16* out) {
  const int64_t pairs = ceil_div(t.k, 2);
  for (int64_t i = 0; i < t.nb * pairs; ++i) {
    const __m128i* src = reinterpret_cast<const __m128i*>(w + i * BLOCK * 2);
    const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(src)));
    const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(src + 1)));
    _mm512_storeu_si512(out + i * BLOCK * 2, (__m512i)_mm512_cvtne2ps_pbh(hi, lo));
  }
}

template <int ROWS>
void tile_bf16(const at::BFloat16* x, int64_t ldx, const at::BFloat16* widened, const float* scale, const Tile& t,
               at::BFloat16* y, int64_t ldy) {
  __m512 acc[ROWS][TILE_BLOCKS];
  for (int r = 0; r < ROWS; ++r)
    for (int64_t b = 0; b < t.nb; ++b) acc[r][b] = _mm512_setzero_ps();
  radixrt_linear::accumulate_bf16<ROWS>(x, ldx, widened, t, acc);
  alignas(64) float sums[BLOCK];
  for (int r = 0; r < ROWS; ++r)
    for (int64_t b = 0; b < t.nb; ++b) {
      _mm512_store_ps(sums, acc[r][b]);
      store_block(sums, t, b, scale, y + r * ldy);
    }
}
#endif

#if defined(__AVX512F__)
// float32 rows: lane 2j + e accumulates column j's products of K parity e
template <int ROWS>
void tile_f32(const float* x, int64_t ldx, const int8_t* w, const float* scale, const Tile& t, float* y, int64_t ldy) {
  const int64_t pairs = ceil_div(t.k, 2);
  __m512 acc[ROWS][TILE_BLOCKS][2];
  for (int r = 0; r < ROWS; ++r)
    for (int64_t b = 0; b < t.nb; ++b) acc[r][b][0] = acc[r][b][1] = _mm512_setzero_ps();
  for (int64_t p = 0; p < pairs; ++p)
    for (int64_t b = 0; b < t.nb; ++b) {
      const __m128i* src = reinterpret_cast<const __m128i*>(w + (b * pairs + p) * BLOCK * 2);
      const __m512 lo = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(src)));
      const __m512 hi = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(src + 1)));
      for (int r = 0; r < ROWS; ++r) {
        const float xy[2] = {x[r * ldx + 2 * p], 2 * p + 1 < t.k ? x[r * ldx + 2 * p + 1] : 0.f};
        double both;
        std::memcpy(&both, xy, sizeof(both));
        const __m512 pair = _mm512_castpd_ps(_mm512_set1_pd(both));  // x0 x1 x0 x1 ...
        acc[r][b][0] = _mm512_fmadd_ps(lo, pair, acc[r][b][0]);
        acc[r][b][1] = _mm512_fmadd_ps(hi, pair, acc[r][b][1]);
      }
    }
  alignas(64) float lanes[2 * BLOCK], sums[BLOCK];
  for (int r = 0; r < ROWS; ++r)
    for (int64_t b = 0; b < t.nb; ++b) {
      _mm512_store_ps(lanes, acc[r][b][0]);
      _mm512_store_ps(lanes + BLOCK, acc[r][b][1]);
      for (int64_t j = 0; j < BLOCK; ++j) sums[j] = lanes[2 * j] + lanes[2 * j + 1];
      store_block(sums, t, b, scale, y + r * ldy);
    }
}
#endif

// Portable path: float32 math in the float32 tile's order, for any CPU.
template <typename T, int ROWS>
void tile_generic(const T* x, int64_t ldx, const int8_t* w, const float* scale, const Tile& t, T* y, int64_t ldy) {
  const int64_t pairs = ceil_div(t.k, 2);
  for (int64_t b = 0; b < t.nb; ++b) {
    float acc[ROWS][BLOCK][2] = {};
    const int8_t* wb = w + b * pairs * BLOCK * 2;
    for (int64_t p = 0; p < pairs; ++p)
      for (int r = 0; r < ROWS; ++r)
        for (int64_t e = 0; e < 2; ++e) {
          const int64_t i = 2 * p + e;
          const float xv = i < t.k ? static_cast<float>(x[r * ldx + i]) : 0.f;
          for (int64_t j = 0; j < BLOCK; ++j) acc[r][j][e] = std::fma(xv, static_cast<float>(wb[(p * BLOCK + j) * 2 + e]), acc[r][j][e]);
        }
    float sums[BLOCK];
    for (int r = 0; r < ROWS; ++r) {
      for (int64_t j = 0; j < BLOCK; ++j) sums[j] = acc[r][j][0] + acc[r][j][1];
      store_block(sums, t, b, scale, y + r * ldy);
    }
  }
}

template <typename T>
void int8_impl(const at::Tensor& x, const at::Tensor& packed, const float* scale, const float* bias, int64_t n,
               at::Tensor& y) {
  const int64_t m = x.size(0), k = x.size(1), blocks = packed.size(0), block_bytes = packed.numel() / blocks;
  const T* xp = x.data_ptr<T>();
  const int8_t* wp = packed.data_ptr<int8_t>();
  T* yp = y.data_ptr<T>();
  radixrt_linear::for_each_tile(m, n, k, blocks, bias, [&](int64_t tile, const Tile& t, int64_t r0, int64_t rows, bool first) {
    const int8_t* w = wp + tile * TILE_BLOCKS * block_bytes;
#if defined(__AVX512BF16__)
    if constexpr (std::is_same_v<T, at::BFloat16>) {
      thread_local std::vector<at::BFloat16> widened;
      if (first) {
        widened.resize(TILE_BLOCKS * block_bytes);
        widen_tile(w, t, widened.data());
      }
      radixrt_linear::with_rows(rows, [&](auto r) { tile_bf16<decltype(r)::value>(xp + r0 * k, k, widened.data(), scale, t, yp + r0 * n, n); });
      return;
    }
#endif
#if defined(__AVX512F__)
    if constexpr (std::is_same_v<T, float>) {
      radixrt_linear::with_rows(rows, [&](auto r) { tile_f32<decltype(r)::value>(xp + r0 * k, k, w, scale, t, yp + r0 * n, n); });
      return;
    }
#endif
    radixrt_linear::with_rows(rows, [&](auto r) { tile_generic<T, decltype(r)::value>(xp + r0 * k, k, w, scale, t, yp + r0 * n, n); });
  });
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale, int64_t n, int64_t k,
                       const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.device().is_cpu(), "x must be a 2-d CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat, "x must be bfloat16 or float32");
  TORCH_CHECK(x.size(1) == k, "x has ", x.size(1), " columns; the weights expect K = ", k);
  TORCH_CHECK(packed.scalar_type() == at::kChar && packed.dim() == 4 && packed.size(0) == ceil_div(n, BLOCK) &&
                  packed.size(1) == ceil_div(k, 2),
              "packed int8 weights do not hold ", n, " x ", k);
  TORCH_CHECK(scale.scalar_type() == at::kFloat && scale.numel() == n && scale.is_contiguous(),
              "scale must be ", n, " contiguous float32 values");
  at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty({x.size(0), n}, x.options());
  const at::Tensor b32 = radixrt_linear::float_bias(bias, n);
  const float* bp = b32.defined() ? b32.data_ptr<float>() : nullptr;
  if (x.size(0) == 0) return y;
  if (x.scalar_type() == at::kBFloat16) {
    int8_impl<at::BFloat16>(xc, packed, scale.data_ptr<float>(), bp, n, y);
  } else {
    int8_impl<float>(xc, packed, scale.data_ptr<float>(), bp, n, y);
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(radixrt, m) {
  m.def("pack_int8_weight(Tensor q) -> Tensor");
  m.def("int8_linear(Tensor x, Tensor packed, Tensor scale, int n, int k, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(radixrt, CPU, m) {
  m.impl("pack_int8_weight", &pack_int8_weight);
  m.impl("int8_linear", &int8_linear);
}
