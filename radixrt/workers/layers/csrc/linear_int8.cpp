// y = x @ W^T (+ bias) with int8 weights: W ~ Q * scale[n] (symmetric, per output channel).
//
// Each row of x is quantized on the fly in groups of GROUP values along K, each group with its own
// scale (x ~ X * sx[g]), and a group's products are summed exactly in int32 with VNNI's VPDPBUSD
// (4 products per lane and instruction, no widening). Group sums are then scaled and added in
// float32, and the column's scale applied once:
//     y[n] = scale[n] * sum_g sx[g] * (sum_{k in g} X[k] Q[n, k])
// VPDPBUSD multiplies unsigned by signed bytes: Q is stored as Q + 128, and the surplus
// 128 * sum_{k in g} X[k] (one number per row and group, found while quantizing) is taken off.
// A row's result depends only on that row, in a fixed order: not on the batch or the threads.
//
// Packed weights, K in quads (zero padded, stored + 128): [N/16][K/4][16][4] uint8.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
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

constexpr int64_t QUAD = 4;
constexpr int64_t GROUP = 32;  // activation values sharing a scale (8 quads)
constexpr int64_t GROUP_QUADS = GROUP / QUAD;
constexpr int64_t HALF_ROWS = 4;  // rows per register pass: int32 and float32 sums for 2 blocks each
constexpr float XMAX = 127.f;

at::Tensor pack_int8_weight(const at::Tensor& q) {
  TORCH_CHECK(q.dim() == 2 && q.device().is_cpu() && q.scalar_type() == at::kChar, "q must be a 2-d CPU int8 tensor");
  const int64_t n = q.size(0), k = q.size(1), blocks = ceil_div(n, BLOCK), quads = ceil_div(k, QUAD);
  const at::Tensor src_t = q.contiguous();
  at::Tensor packed = at::full({blocks, quads, BLOCK, QUAD}, 128, q.options().dtype(at::kByte));
  const int8_t* src = src_t.data_ptr<int8_t>();
  uint8_t* dst = packed.data_ptr<uint8_t>();
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t j = 0; j < BLOCK && b * BLOCK + j < n; ++j)
        for (int64_t i = 0; i < k; ++i)
          dst[((b * quads + i / QUAD) * BLOCK + j) * QUAD + i % QUAD] = static_cast<uint8_t>(src[(b * BLOCK + j) * k + i] + 128);
  });
  return packed;
}

struct QuantizedRows {
  int64_t padded, groups;
  std::vector<int8_t> x;         // [rows][padded], zero padded
  std::vector<float> scale;      // [rows][groups]
  std::vector<int32_t> surplus;  // [rows][groups]: 128 * sum of the group's X
};

// one group of `len` values of a row: its scale, its values as int8 and its sum
template <typename T>
float quantize_group(const T* src, int64_t len, int8_t* dst, int32_t* sum) {
  float amax = 0.f;
  int64_t i = 0;
#if defined(__AVX512F__)
  __m512 vmax = _mm512_setzero_ps();
  for (; i + 16 <= len; i += 16) vmax = _mm512_max_ps(vmax, _mm512_abs_ps(radixrt_simd::load16(src + i)));
  amax = _mm512_reduce_max_ps(vmax);
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
  QuantizedRows q{ceil_div(k, QUAD) * QUAD, ceil_div(k, GROUP), {}, {}, {}};
  q.x.assign(rows * q.padded, 0);
  q.scale.resize(rows * q.groups);
  q.surplus.resize(rows * q.groups);
  at::parallel_for(0, rows, 16, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r)
      for (int64_t g = 0; g < q.groups; ++g) {
        const int64_t i = g * GROUP, len = std::min(GROUP, k - i);
        int32_t sum;
        q.scale[r * q.groups + g] = quantize_group(x + r * k + i, len, q.x.data() + r * q.padded + i, &sum);
        q.surplus[r * q.groups + g] = 128 * sum;
      }
  });
  return q;
}

struct Epilogue {
  const float* scale;  // [n] per output column
  const QuantizedRows* rows;
};

#if defined(__AVX512VNNI__)
// rows r0 .. r0 + ROWS of the tile, ROWS <= HALF_ROWS
template <typename T, int ROWS>
void tile_vnni(const uint8_t* w, const Epilogue& e, int64_t r0, const Tile& t, T* y, int64_t ldy) {
  const QuantizedRows& q = *e.rows;
  const int64_t quads = ceil_div(t.k, QUAD);
  const __m512i* wb = reinterpret_cast<const __m512i*>(w);  // [nb][quads] of 64 bytes
  __m512 accf[ROWS][TILE_BLOCKS];
  for (int r = 0; r < ROWS; ++r)
    for (int64_t b = 0; b < TILE_BLOCKS; ++b) accf[r][b] = _mm512_setzero_ps();
  const int32_t* xp[ROWS];
  for (int r = 0; r < ROWS; ++r) xp[r] = reinterpret_cast<const int32_t*>(q.x.data() + (r0 + r) * q.padded);
  for (int64_t g = 0; g < q.groups; ++g) {
    __m512i acc[ROWS][TILE_BLOCKS];
    for (int r = 0; r < ROWS; ++r)
      for (int64_t b = 0; b < TILE_BLOCKS; ++b) acc[r][b] = _mm512_setzero_si512();
    const int64_t p1 = std::min(quads, (g + 1) * GROUP_QUADS);
    if (t.nb == TILE_BLOCKS) {
      for (int64_t p = g * GROUP_QUADS; p < p1; ++p) {
        const __m512i w0 = _mm512_loadu_si512(wb + p), w1 = _mm512_loadu_si512(wb + quads + p);
        for (int r = 0; r < ROWS; ++r) {
          const __m512i xv = _mm512_set1_epi32(xp[r][p]);
          acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], w0, xv);
          acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], w1, xv);
        }
      }
    } else {
      for (int64_t p = g * GROUP_QUADS; p < p1; ++p) {
        const __m512i w0 = _mm512_loadu_si512(wb + p);
        for (int r = 0; r < ROWS; ++r) acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], w0, _mm512_set1_epi32(xp[r][p]));
      }
    }
    for (int r = 0; r < ROWS; ++r) {
      const int64_t at = (r0 + r) * q.groups + g;
      const __m512i surplus = _mm512_set1_epi32(q.surplus[at]);
      const __m512 sx = _mm512_set1_ps(q.scale[at]);
      for (int64_t b = 0; b < t.nb; ++b)
        accf[r][b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][b], surplus)), sx, accf[r][b]);
    }
  }
  for (int64_t b = 0; b < t.nb; ++b) {
    const int64_t col = t.col0 + b * BLOCK, width = std::min<int64_t>(BLOCK, t.n - col);
    const __mmask16 mask = static_cast<__mmask16>((1u << width) - 1);
    const __m512 scale = _mm512_maskz_loadu_ps(mask, e.scale + col);
    const __m512 bias = t.bias ? _mm512_maskz_loadu_ps(mask, t.bias + col) : _mm512_setzero_ps();
    for (int r = 0; r < ROWS; ++r) {
      const __m512 v = _mm512_add_ps(_mm512_mul_ps(accf[r][b], scale), bias);
      if (width == BLOCK) {
        radixrt_simd::store16(y + r * ldy + col, v);
      } else {
        alignas(64) T tmp[BLOCK];
        radixrt_simd::store16(tmp, v);
        std::memcpy(y + r * ldy + col, tmp, width * sizeof(T));
      }
    }
  }
}
#endif

// Portable path: the same group sums (exact) and float32 steps (fma), for CPUs without VNNI.
template <typename T>
void tile_generic(const uint8_t* w, const Epilogue& e, int64_t r, const Tile& t, T* y) {
  const QuantizedRows& q = *e.rows;
  const int64_t quads = ceil_div(t.k, QUAD);
  const int8_t* xr = q.x.data() + r * q.padded;
  for (int64_t b = 0; b < t.nb; ++b) {
    const uint8_t* wb = w + b * quads * BLOCK * QUAD;
    float accf[BLOCK] = {};
    for (int64_t g = 0; g < q.groups; ++g) {
      int32_t acc[BLOCK] = {};
      for (int64_t p = g * GROUP_QUADS; p < std::min(quads, (g + 1) * GROUP_QUADS); ++p)
        for (int64_t j = 0; j < BLOCK; ++j)
          for (int64_t e4 = 0; e4 < QUAD; ++e4) acc[j] += int32_t{wb[(p * BLOCK + j) * QUAD + e4]} * int32_t{xr[p * QUAD + e4]};
      const float sx = q.scale[r * q.groups + g];
      for (int64_t j = 0; j < BLOCK; ++j)
        accf[j] = std::fma(static_cast<float>(acc[j] - q.surplus[r * q.groups + g]), sx, accf[j]);
    }
    const int64_t col = t.col0 + b * BLOCK;
    for (int64_t j = 0; j < BLOCK && col + j < t.n; ++j) {
      volatile float v = accf[j] * e.scale[col + j];  // NOTE: rounded before the bias is added, as above
      y[col + j] = static_cast<T>(v + (t.bias ? t.bias[col + j] : 0.f));
    }
  }
}

template <typename T>
void int8_impl(const at::Tensor& x, const at::Tensor& packed, const float* scale, const float* bias, int64_t n,
               at::Tensor& y) {
  const int64_t m = x.size(0), k = x.size(1), blocks = packed.size(0), block_bytes = packed.numel() / blocks;
  const QuantizedRows rows = quantize_rows(x.data_ptr<T>(), m, k);
  const Epilogue e{scale, &rows};
  const uint8_t* wp = packed.data_ptr<uint8_t>();
  T* yp = y.data_ptr<T>();
  radixrt_linear::for_each_tile(m, n, k, blocks, bias, [&](int64_t tile, const Tile& t, int64_t r0, int64_t count, bool) {
    const uint8_t* w = wp + tile * TILE_BLOCKS * block_bytes;
#if defined(__AVX512VNNI__)
    for (int64_t h = r0; h < r0 + count; h += HALF_ROWS) {
      const int64_t rows_here = std::min(HALF_ROWS, r0 + count - h);
      radixrt_linear::with_rows(rows_here, [&](auto r) {
        if constexpr (decltype(r)::value <= HALF_ROWS) tile_vnni<T, decltype(r)::value>(w, e, h, t, yp + h * n, n);
      });
    }
#else
    for (int64_t r = r0; r < r0 + count; ++r) tile_generic<T>(w, e, r, t, yp + r * n);
#endif
  });
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale, int64_t n, int64_t k,
                       const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.device().is_cpu(), "x must be a 2-d CPU tensor");
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 || x.scalar_type() == at::kFloat, "x must be bfloat16 or float32");
  TORCH_CHECK(x.size(1) == k, "x has ", x.size(1), " columns; the weights expect K = ", k);
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 4 && packed.size(0) == ceil_div(n, BLOCK) &&
                  packed.size(1) == ceil_div(k, QUAD),
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
