// y = x @ W^T (+ bias) with W packed once into blocks of 16 output columns, for bf16 and float32.
//
// Each output element is reduced over K in one fixed order (one float32 accumulator per element,
// K walked front to back in pairs for bf16) whatever M is, whatever rows share the call and
// however the work is split over threads: a row gets the same bits alone or inside any batch.
// That is what oneDNN and ATen do not promise (their kernels change with M: AMX tiles, GEMV vs
// GEMM), and what a radix cache needs so that a cache hit or a batch never changes an output.
//
// Packed layouts (zero padded to whole blocks):
//   bf16:    [N/16][K/2][16][2]   a block's 16 columns, one K pair after another, so one 64-byte
//                                 load feeds VDPBF16PS (16 lanes x 2 products) for up to 8 rows
//   float32: [N/16][K][16]
// The work is split as linear_tiles.h says. For one row (decode at batch 1) this is a stream of the
// weights at memory bandwidth.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "linear_tiles.h"
#include "ops.h"
#include "simd.h"

namespace {

using radixrt_linear::BLOCK;
using radixrt_linear::ceil_div;
using radixrt_linear::Tile;
using radixrt_linear::TILE_BLOCKS;

// ---- packing --------------------------------------------------------------------------------

at::Tensor pack_linear_weight(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.device().is_cpu(), "weight must be a 2-d CPU tensor");
  TORCH_CHECK(weight.scalar_type() == at::kBFloat16 || weight.scalar_type() == at::kFloat,
              "weight must be bfloat16 or float32, got ", weight.scalar_type());
  const int64_t n = weight.size(0), k = weight.size(1), blocks = ceil_div(n, BLOCK);
  const at::Tensor w = weight.contiguous();
  if (weight.scalar_type() == at::kFloat) {
    at::Tensor packed = at::zeros({blocks, k, BLOCK}, weight.options());
    const float* src = w.data_ptr<float>();
    float* dst = packed.data_ptr<float>();
    at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t b = b0; b < b1; ++b)
        for (int64_t j = 0; j < BLOCK && b * BLOCK + j < n; ++j)
          for (int64_t i = 0; i < k; ++i) dst[(b * k + i) * BLOCK + j] = src[(b * BLOCK + j) * k + i];
    });
    return packed;
  }
  const int64_t pairs = ceil_div(k, 2);
  at::Tensor packed = at::zeros({blocks, pairs, BLOCK, 2}, weight.options());
  const uint16_t* src = reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>());
  uint16_t* dst = reinterpret_cast<uint16_t*>(packed.data_ptr<at::BFloat16>());
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t j = 0; j < BLOCK && b * BLOCK + j < n; ++j)
        for (int64_t i = 0; i < k; ++i) dst[((b * pairs + i / 2) * BLOCK + j) * 2 + i % 2] = src[(b * BLOCK + j) * k + i];
  });
  return packed;
}

// ---- one tile: `rows` rows x `nb` blocks --------------------------------------------------------

#if defined(__AVX512BF16__)
template <int ROWS>
void tile_bf16(const at::BFloat16* x, int64_t ldx, const at::BFloat16* w, const Tile& t, at::BFloat16* y, int64_t ldy) {
  __m512 acc[ROWS][TILE_BLOCKS];
  for (int64_t b = 0; b < t.nb; ++b) {
    const __m512 init = t.bias ? radixrt_simd::load16(t.bias + t.col0 + b * BLOCK) : _mm512_setzero_ps();
    for (int r = 0; r < ROWS; ++r) acc[r][b] = init;
  }
  radixrt_linear::accumulate_bf16<ROWS>(x, ldx, w, t, acc);
  for (int r = 0; r < ROWS; ++r)
    for (int64_t b = 0; b < t.nb; ++b) {
      const int64_t col = t.col0 + b * BLOCK, width = std::min<int64_t>(BLOCK, t.n - col);
      if (width == BLOCK) {
        radixrt_simd::store16(y + r * ldy + col, acc[r][b]);
      } else {
        alignas(64) at::BFloat16 tmp[BLOCK];
        radixrt_simd::store16(tmp, acc[r][b]);
        std::memcpy(y + r * ldy + col, tmp, width * sizeof(at::BFloat16));
      }
    }
}
#endif

#if defined(__AVX512F__)
template <int ROWS>
void tile_f32(const float* x, int64_t ldx, const float* w, const Tile& t, float* y, int64_t ldy) {
  __m512 acc[ROWS][TILE_BLOCKS];
  for (int64_t b = 0; b < t.nb; ++b) {
    const __m512 init = t.bias ? _mm512_loadu_ps(t.bias + t.col0 + b * BLOCK) : _mm512_setzero_ps();
    for (int r = 0; r < ROWS; ++r) acc[r][b] = init;
  }
  for (int64_t i = 0; i < t.k; ++i)
    for (int64_t b = 0; b < t.nb; ++b) {
      const __m512 wv = _mm512_loadu_ps(w + (b * t.k + i) * BLOCK);
      for (int r = 0; r < ROWS; ++r) acc[r][b] = _mm512_fmadd_ps(_mm512_set1_ps(x[r * ldx + i]), wv, acc[r][b]);
    }
  for (int r = 0; r < ROWS; ++r)
    for (int64_t b = 0; b < t.nb; ++b) {
      const int64_t col = t.col0 + b * BLOCK, width = std::min<int64_t>(BLOCK, t.n - col);
      _mm512_mask_storeu_ps(y + r * ldy + col, (__mmask16)((1u << width) - 1), acc[r][b]);
    }
}
#endif

#if defined(__AVX2__)
// AVX2 (bf16 without AVX512-BF16, float32 without AVX-512), 8 columns a register, one FMA per weight
// and row in K's order. Two kernels:
//   - float32 weights [nb][K][16], rows as float32: 6 rows x 2 registers of accumulators a pass, so
//     that 12 FMA chains are in flight (8 barely cover the FMA latency: measured 120 -> 170-185
//     GFLOP/s at M >= 64 on an AVX2 AMD EPYC). bf16 weights come here widened, a tile at a time
//     (`widened_tile`), once a call has more rows than one chunk: the widening is exact and K's
//     order the same, so a row's bits do not depend on which kernel ran it.
//   - bf16 weights as packed, for calls of up to 16 rows (decode at small batches) and odd K: pairs
//     widened by shifting, the even element then the odd, 4 rows x 2 registers a pass (the widened
//     weights take 4 registers).
constexpr int64_t AVX2_TILE_ROWS = 6;

// the bias of 8 columns from `col` (zero past `valid` columns, or without a bias)
inline __m256 bias_half(const Tile& t, int64_t col, int64_t valid) {
  if (!t.bias) return _mm256_setzero_ps();
  alignas(32) float lanes[8] = {};
  for (int64_t j = 0; j < 8 && j < valid; ++j) lanes[j] = t.bias[col + j];
  return _mm256_load_ps(lanes);
}

template <typename Y, int ROWS>
void tile_avx2_f32(const float* x, int64_t ldx, const float* w, const Tile& t, int64_t b, Y* y, int64_t ldy) {
  const int64_t col = t.col0 + b * BLOCK, width = std::min<int64_t>(BLOCK, t.n - col);
  __m256 acc[ROWS][2];
  for (int h = 0; h < 2; ++h) {
    const __m256 init = bias_half(t, col + h * 8, width - h * 8);
    for (int r = 0; r < ROWS; ++r) acc[r][h] = init;
  }
  const float* wb = w + b * t.k * BLOCK;  // [K][16]
  for (int64_t i = 0; i < t.k; ++i) {
    radixrt_linear::prefetch_ahead(wb + i * BLOCK);
    const __m256 w0 = _mm256_loadu_ps(wb + i * BLOCK), w1 = _mm256_loadu_ps(wb + i * BLOCK + 8);
    for (int r = 0; r < ROWS; ++r) {
      const __m256 xv = _mm256_set1_ps(x[r * ldx + i]);
      acc[r][0] = _mm256_fmadd_ps(xv, w0, acc[r][0]);
      acc[r][1] = _mm256_fmadd_ps(xv, w1, acc[r][1]);
    }
  }
  for (int r = 0; r < ROWS; ++r) {
    alignas(32) float out[BLOCK];
    _mm256_store_ps(out, acc[r][0]);
    _mm256_store_ps(out + 8, acc[r][1]);
    for (int64_t j = 0; j < width; ++j) y[r * ldy + col + j] = static_cast<Y>(out[j]);
  }
}

template <int ROWS>
void tile_avx2_bf16(const at::BFloat16* x, int64_t ldx, const at::BFloat16* w, const Tile& t, int64_t b, at::BFloat16* y,
                    int64_t ldy) {
  const int64_t col = t.col0 + b * BLOCK, width = std::min<int64_t>(BLOCK, t.n - col);
  __m256 acc[ROWS][2];
  for (int h = 0; h < 2; ++h) {
    const __m256 init = bias_half(t, col + h * 8, width - h * 8);
    for (int r = 0; r < ROWS; ++r) acc[r][h] = init;
  }
  const int64_t pairs = ceil_div(t.k, 2), full = t.k / 2;
  const int32_t* wb = reinterpret_cast<const int32_t*>(w) + b * pairs * BLOCK;  // [pairs][16] of bf16 pairs
  const __m256i high = _mm256_set1_epi32(static_cast<int32_t>(0xffff0000u));
  const auto step = [&](int64_t p, const int32_t(&xpair)[ROWS]) {
    __m256 even[2], odd[2];
    for (int h = 0; h < 2; ++h) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wb + p * BLOCK + h * 8));
      even[h] = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
      odd[h] = _mm256_castsi256_ps(_mm256_and_si256(v, high));
    }
    for (int r = 0; r < ROWS; ++r) {
      const __m256i xv = _mm256_set1_epi32(xpair[r]);
      const __m256 xe = _mm256_castsi256_ps(_mm256_slli_epi32(xv, 16)), xo = _mm256_castsi256_ps(_mm256_and_si256(xv, high));
      for (int h = 0; h < 2; ++h) acc[r][h] = _mm256_fmadd_ps(xo, odd[h], _mm256_fmadd_ps(xe, even[h], acc[r][h]));
    }
  };
  int32_t xpair[ROWS];
  for (int64_t p = 0; p < full; ++p) {
    radixrt_linear::prefetch_ahead(wb + p * BLOCK);
    for (int r = 0; r < ROWS; ++r) std::memcpy(&xpair[r], x + r * ldx + 2 * p, 4);
    step(p, xpair);
  }
  if (full < pairs) {  // odd K: the last pair holds one element (its partner is the packing's zero)
    for (int r = 0; r < ROWS; ++r) {
      uint16_t last;
      std::memcpy(&last, x + r * ldx + t.k - 1, 2);
      xpair[r] = last;
    }
    step(full, xpair);
  }
  for (int r = 0; r < ROWS; ++r) {
    alignas(32) float out[BLOCK];
    _mm256_store_ps(out, acc[r][0]);
    _mm256_store_ps(out + 8, acc[r][1]);
    for (int64_t j = 0; j < width; ++j) y[r * ldy + col + j] = static_cast<at::BFloat16>(out[j]);
  }
}

// x's rows as float32: bf16 widened into a buffer of the calling thread, kept between calls
inline const float* widened_rows(const at::BFloat16* x, int64_t count) {
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < count) buffer.resize(count);
  int64_t i = 0;
  for (; i + 8 <= count; i += 8) _mm256_storeu_ps(buffer.data() + i, radixrt_simd::load8(x + i));
  for (; i < count; ++i) buffer[i] = static_cast<float>(x[i]);
  return buffer.data();
}

// A tile's bf16 weights (packed [nb][K/2][16][2], K even) as float32 [nb][K][16], into a buffer of
// this thread that the tile's later chunks reuse
inline const float* widened_tile(const at::BFloat16* w, const Tile& t) {
  thread_local std::vector<float> buffer;
  const int64_t pairs = t.k / 2;
  if (static_cast<int64_t>(buffer.size()) < t.nb * t.k * BLOCK) buffer.resize(t.nb * t.k * BLOCK);
  const __m256i high = _mm256_set1_epi32(static_cast<int32_t>(0xffff0000u));
  for (int64_t b = 0; b < t.nb; ++b) {
    const int32_t* src = reinterpret_cast<const int32_t*>(w) + b * pairs * BLOCK;
    float* dst = buffer.data() + b * t.k * BLOCK;
    for (int64_t p = 0; p < pairs; ++p)
      for (int h = 0; h < 2; ++h) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + p * BLOCK + h * 8));
        _mm256_storeu_ps(dst + 2 * p * BLOCK + h * 8, _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)));
        _mm256_storeu_ps(dst + (2 * p + 1) * BLOCK + h * 8, _mm256_castsi256_ps(_mm256_and_si256(v, high)));
      }
  }
  return buffer.data();
}

// bf16 weights as packed, in chunks of 8 rows, 4 rows a pass
void linear_avx2_bf16(const at::BFloat16* xp, const at::BFloat16* wp, int64_t block_elems, const float* bias, int64_t m,
                      int64_t n, int64_t k, int64_t blocks, at::BFloat16* yp) {
  radixrt_linear::for_each_tile(m, n, k, blocks, bias, [&](int64_t tile, const Tile& t, int64_t r0, int64_t rows, bool) {
    const at::BFloat16* w = wp + tile * TILE_BLOCKS * block_elems;
    radixrt_linear::with_rows(rows, [&](auto r) {
      constexpr int ROWS = decltype(r)::value, HALF = ROWS > 4 ? ROWS / 2 : ROWS;
      for (int64_t b = 0; b < t.nb; ++b) {
        tile_avx2_bf16<HALF>(xp + r0 * k, k, w, t, b, yp + r0 * n, n);
        if constexpr (HALF < ROWS) tile_avx2_bf16<ROWS - HALF>(xp + (r0 + HALF) * k, k, w, t, b, yp + (r0 + HALF) * n, n);
      }
    });
  });
}

template <typename T>
void linear_avx2(const T* xp, const T* wp, int64_t block_elems, const float* bias, int64_t m, int64_t n, int64_t k,
                 int64_t blocks, T* yp) {
  constexpr bool bf16 = std::is_same_v<T, at::BFloat16>;
  if constexpr (bf16) {  // widening a tile pays from ~3 chunks of rows on (measured: slower at 16 rows)
    if (m <= 2 * radixrt_linear::MAX_ROWS || k % 2) return linear_avx2_bf16(xp, wp, block_elems, bias, m, n, k, blocks, yp);
  }
  const float* xf = nullptr;
  if constexpr (bf16) {
    xf = widened_rows(xp, m * k);
  } else {
    xf = xp;
  }
  radixrt_linear::for_each_tile(m, n, k, blocks, bias, [&](int64_t tile, const Tile& t, int64_t r0, int64_t rows, bool first) {
    const T* w = wp + tile * TILE_BLOCKS * block_elems;
    thread_local const float* wf = nullptr;
    if constexpr (bf16) {
      if (first) wf = widened_tile(w, t);
    } else {
      wf = w;
    }
    radixrt_linear::with_rows(rows, [&](auto r) {
      if constexpr (decltype(r)::value <= AVX2_TILE_ROWS)
        for (int64_t b = 0; b < t.nb; ++b) tile_avx2_f32<T, decltype(r)::value>(xf + r0 * k, k, wf, t, b, yp + r0 * n, n);
    });
  }, AVX2_TILE_ROWS);
}
#endif

// Portable path (no AVX-512): the same order of operations in plain C++, which compilers
// vectorize over the 16 columns of a block.
template <typename T, int ROWS>
void tile_generic(const T* x, int64_t ldx, const T* w, const Tile& t, T* y, int64_t ldy) {
  const bool bf16 = std::is_same_v<T, at::BFloat16>;
  const int64_t steps = bf16 ? ceil_div(t.k, 2) : t.k, per = bf16 ? 2 : 1;
  for (int64_t b = 0; b < t.nb; ++b) {
    float acc[ROWS][BLOCK];
    for (int r = 0; r < ROWS; ++r)
      for (int64_t j = 0; j < BLOCK; ++j) acc[r][j] = t.bias && t.col0 + b * BLOCK + j < t.n ? t.bias[t.col0 + b * BLOCK + j] : 0.f;
    const T* wb = w + b * steps * BLOCK * per;
    for (int64_t s = 0; s < steps; ++s)
      for (int r = 0; r < ROWS; ++r)
        for (int64_t e = 0; e < per; ++e) {
          const int64_t i = s * per + e;
          const float xv = i < t.k ? static_cast<float>(x[r * ldx + i]) : 0.f;
          for (int64_t j = 0; j < BLOCK; ++j) acc[r][j] = std::fma(xv, static_cast<float>(wb[(s * BLOCK + j) * per + e]), acc[r][j]);
        }
    for (int r = 0; r < ROWS; ++r)
      for (int64_t j = 0; j < BLOCK && t.col0 + b * BLOCK + j < t.n; ++j) y[r * ldy + t.col0 + b * BLOCK + j] = static_cast<T>(acc[r][j]);
  }
}

template <typename T, int ROWS>
void run_tile(const T* x, int64_t ldx, const T* w, const Tile& t, T* y, int64_t ldy) {
#if defined(__AVX512BF16__)
  if constexpr (std::is_same_v<T, at::BFloat16>) return tile_bf16<ROWS>(x, ldx, w, t, y, ldy);
#endif
#if defined(__AVX512F__)
  if constexpr (std::is_same_v<T, float>) return tile_f32<ROWS>(x, ldx, w, t, y, ldy);
#endif
  tile_generic<T, ROWS>(x, ldx, w, t, y, ldy);
}

template <typename T>
void linear_impl(const at::Tensor& x, const at::Tensor& packed, const float* bias, int64_t n, at::Tensor& y) {
  const int64_t m = x.size(0), k = x.size(1), blocks = packed.size(0), block_elems = packed.numel() / blocks;
  const T* xp = x.data_ptr<T>();
  const T* wp = packed.data_ptr<T>();
  T* yp = y.data_ptr<T>();
#if defined(__AVX2__)
  constexpr bool avx512 =
#if defined(__AVX512BF16__)
      true;
#elif defined(__AVX512F__)
      std::is_same_v<T, float>;
#else
      false;
#endif
  if constexpr (!avx512) return linear_avx2<T>(xp, wp, block_elems, bias, m, n, k, blocks, yp);
#endif
  radixrt_linear::for_each_tile(m, n, k, blocks, bias, [&](int64_t tile, const Tile& t, int64_t r0, int64_t rows, bool) {
    const T* w = wp + tile * TILE_BLOCKS * block_elems;
    radixrt_linear::with_rows(rows, [&](auto r) { run_tile<T, decltype(r)::value>(xp + r0 * k, k, w, t, yp + r0 * n, n); });
  });
}

}  // namespace

at::Tensor packed_linear(const at::Tensor& x, const at::Tensor& packed, int64_t n, int64_t k, const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.device().is_cpu(), "x must be a 2-d CPU tensor");
  TORCH_CHECK(x.scalar_type() == packed.scalar_type(), "x is ", x.scalar_type(), " but the weights are ", packed.scalar_type());
  const bool bf16 = x.scalar_type() == at::kBFloat16;
  TORCH_CHECK(bf16 || x.scalar_type() == at::kFloat, "x must be bfloat16 or float32");
  TORCH_CHECK(packed.dim() == (bf16 ? 4 : 3) && packed.size(0) == ceil_div(n, BLOCK), "packed weights do not hold ", n, " columns");
  TORCH_CHECK(x.size(1) == k, "x has ", x.size(1), " columns; the weights expect K = ", k);
  TORCH_CHECK(bf16 ? packed.size(1) == ceil_div(k, 2) : packed.size(1) == k, "packed weights do not hold K = ", k);
  at::Tensor xc = x.contiguous();
  at::Tensor y = at::empty({x.size(0), n}, x.options());
  const at::Tensor b32 = radixrt_linear::float_bias(bias, n);
  const float* bp = b32.defined() ? b32.data_ptr<float>() : nullptr;
  if (x.size(0) == 0) return y;
  if (bf16) {
    linear_impl<at::BFloat16>(xc, packed, bp, n, y);
  } else {
    linear_impl<float>(xc, packed, bp, n, y);
  }
  return y;
}

TORCH_LIBRARY_FRAGMENT(radixrt, m) {
  m.def("pack_linear_weight(Tensor weight) -> Tensor");
  m.def("packed_linear(Tensor x, Tensor packed, int n, int k, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(radixrt, CPU, m) {
  m.impl("pack_linear_weight", &pack_linear_weight);
  m.impl("packed_linear", &packed_linear);
}
