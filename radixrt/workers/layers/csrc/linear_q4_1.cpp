// y = x @ W^T (+ bias) with GGUF's Q4_1 weights, served as stored: per output channel and group of
// 32 along K a float16 scale d and minimum m, and 4-bit q in 0..15, W[n, k] = d * q + m.
//
// Each row of x is quantized on the fly as for the int8 linear (quantized_rows.h: x ~ X * sx per
// group of 32, with the group's sum of X), so a group's contribution is exact integer work plus
// two float32 steps:
//     sum_{k in g} W[n, k] x[k] ~ (sx d[n]) * (sum_k q[n, k] X[k]) + m[n] * (sx * sum_k X[k])
// The integer sum runs in int32 with VNNI's VPDPBUSD (q unsigned nibbles times X signed bytes, 4
// products per lane and instruction; at most 32 * 15 * 127, exact). A row's result depends only on
// that row, in a fixed order: not on the batch or the threads.
//
// Packed weights, 320 bytes (0.625 per weight, GGUF's own size) per 16-column block and group:
//     [N/16][K/32] of { 4 x 64 bytes: byte j*4+e of vector i holds the quads i (low nibble) and
//                       i + 4 (high nibble) of column j, element e; d[16] float16; m[16] float16 }
// so a group's four loads give its eight quads in VPDPBUSD's [16][4] order with one AND (and a
// shift), and its scales follow in the same stream.

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "linear_tiles.h"
#include "ops.h"
#include "quantized_rows.h"
#include "simd.h"

namespace {

using radixrt_linear::BLOCK;
using radixrt_linear::ceil_div;
using radixrt_linear::Tile;
using radixrt_linear::TILE_BLOCKS;
using radixrt_quant::GROUP;
using radixrt_quant::HALF_ROWS;
using radixrt_quant::GROUP_QUADS;
using radixrt_quant::QUAD;
using radixrt_quant::QuantizedRows;

constexpr int64_t NIBBLE_BYTES = BLOCK * GROUP / 2;                     // 256
constexpr int64_t GROUP_BYTES = NIBBLE_BYTES + 2 * BLOCK * 2;           // + d and m: 320
constexpr int64_t GGUF_BLOCK_BYTES = 4 + GROUP / 2;                     // ggml's block_q4_1: d, m, qs[16]

// GGUF rows [n][K/32] of block_q4_1 {d, m, qs[j] = q[j] | q[j + 16] << 4} -> the packed layout
at::Tensor pack_q4_1_weight(const at::Tensor& raw, int64_t k) {
  TORCH_CHECK(raw.dim() == 2 && raw.device().is_cpu() && raw.scalar_type() == at::kByte,
              "Q4_1 rows must be a 2-d CPU uint8 tensor");
  TORCH_CHECK(k > 0 && k % GROUP == 0, "Q4_1 needs K to be a multiple of ", GROUP, ", got ", k);
  TORCH_CHECK(raw.size(1) == k / GROUP * GGUF_BLOCK_BYTES, "Q4_1 rows of K = ", k, " take ",
              k / GROUP * GGUF_BLOCK_BYTES, " bytes, got ", raw.size(1));
  const int64_t n = raw.size(0), groups = k / GROUP, blocks = ceil_div(n, BLOCK);
  const at::Tensor src_t = raw.contiguous();
  at::Tensor packed = at::zeros({blocks, groups, GROUP_BYTES}, raw.options());
  const uint8_t* src = src_t.data_ptr<uint8_t>();
  uint8_t* dst = packed.data_ptr<uint8_t>();
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b)
      for (int64_t j = 0; j < BLOCK && b * BLOCK + j < n; ++j)
        for (int64_t g = 0; g < groups; ++g) {
          const uint8_t* in = src + (b * BLOCK + j) * raw.size(1) + g * GGUF_BLOCK_BYTES;
          uint8_t* out = dst + (b * groups + g) * GROUP_BYTES;
          uint8_t q[GROUP];
          for (int64_t i = 0; i < GROUP / 2; ++i) q[i] = in[4 + i] & 15, q[i + GROUP / 2] = in[4 + i] >> 4;
          for (int64_t i = 0; i < 4; ++i)
            for (int64_t e = 0; e < QUAD; ++e) out[i * 64 + j * QUAD + e] = q[i * QUAD + e] | q[(i + 4) * QUAD + e] << 4;
          std::memcpy(out + NIBBLE_BYTES + j * 2, in, 2);              // d
          std::memcpy(out + NIBBLE_BYTES + 2 * BLOCK + j * 2, in + 2, 2);  // m
        }
  });
  return packed;
}

#if defined(__AVX512VNNI__)
// rows r0 .. r0 + ROWS and the NB blocks of the tile
template <typename T, int ROWS, int NB>
void tile_vnni(const uint8_t* w, const QuantizedRows& q, int64_t r0, const Tile& t, T* y, int64_t ldy) {
  const __m512i low = _mm512_set1_epi8(15);
  __m512 accf[ROWS][NB];
  for (int r = 0; r < ROWS; ++r)
    for (int b = 0; b < NB; ++b) accf[r][b] = _mm512_setzero_ps();
  const int32_t* xp[ROWS];
  for (int r = 0; r < ROWS; ++r) xp[r] = reinterpret_cast<const int32_t*>(q.x.data() + (r0 + r) * q.padded);
  for (int64_t g = 0; g < q.groups; ++g) {
    const uint8_t* gb[NB];
    for (int b = 0; b < NB; ++b) gb[b] = w + (b * q.groups + g) * GROUP_BYTES;
    __m512i acc[ROWS][NB];
    for (int r = 0; r < ROWS; ++r)
      for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_setzero_si512();
    for (int i = 0; i < 4; ++i) {
      __m512i lo[NB], hi[NB];
      for (int b = 0; b < NB; ++b) {
        radixrt_linear::prefetch_ahead(gb[b] + i * 64);
        const __m512i v = _mm512_loadu_si512(gb[b] + i * 64);
        lo[b] = _mm512_and_si512(v, low);
        hi[b] = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
      }
      for (int r = 0; r < ROWS; ++r) {
        const __m512i xl = _mm512_set1_epi32(xp[r][g * GROUP_QUADS + i]);
        const __m512i xh = _mm512_set1_epi32(xp[r][g * GROUP_QUADS + i + 4]);
        for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(acc[r][b], lo[b], xl), hi[b], xh);
      }
    }
    __m512 d[NB], m[NB];
    for (int b = 0; b < NB; ++b) {
      radixrt_linear::prefetch_ahead(gb[b] + NIBBLE_BYTES);
      d[b] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(gb[b] + NIBBLE_BYTES)));
      m[b] = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(gb[b] + NIBBLE_BYTES + 2 * BLOCK)));
    }
    for (int r = 0; r < ROWS; ++r) {
      const int64_t at = (r0 + r) * q.groups + g;
      const float sx = q.scale[at];
      const __m512 vsx = _mm512_set1_ps(sx), vsum = _mm512_set1_ps(sx * static_cast<float>(q.sum[at]));
      for (int b = 0; b < NB; ++b) {
        accf[r][b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][b]), _mm512_mul_ps(d[b], vsx), accf[r][b]);
        accf[r][b] = _mm512_fmadd_ps(m[b], vsum, accf[r][b]);
      }
    }
  }
  for (int b = 0; b < NB; ++b) {
    const int64_t col = t.col0 + b * BLOCK, width = std::min<int64_t>(BLOCK, t.n - col);
    for (int r = 0; r < ROWS; ++r) radixrt_quant::store_block(y + r * ldy, col, width, t.bias, accf[r][b]);
  }
}
#endif

#if defined(__AVX2__) && !defined(__AVX512VNNI__)
// AVX2 (no VNNI): rows r0 .. r0 + ROWS of block b, 8 columns a register. VPMADDUBSW sums two
// products of a nibble and a byte in int16; a group's 16 such pairs per column stay below
// 16 * 15 * 127 = 30,480, so they add in int16 exactly and widen once per group: the VNNI path's
// integer sums, then its float32 steps, so the same bits.
template <typename T, int ROWS>
void tile_avx2(const uint8_t* w, const QuantizedRows& q, int64_t r0, const Tile& t, int64_t b, T* y, int64_t ldy) {
  const __m256i low = _mm256_set1_epi8(15), ones = _mm256_set1_epi16(1);
  alignas(32) float accf[ROWS][BLOCK] = {};
  const int32_t* xp[ROWS];
  for (int r = 0; r < ROWS; ++r) xp[r] = reinterpret_cast<const int32_t*>(q.x.data() + (r0 + r) * q.padded);
  for (int64_t g = 0; g < q.groups; ++g) {
    const uint8_t* gb = w + (b * q.groups + g) * GROUP_BYTES;
    radixrt_linear::prefetch_ahead(gb);
    radixrt_linear::prefetch_ahead(gb + 64 * 4);
    __m256i acc[ROWS][2];
    for (int r = 0; r < ROWS; ++r) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    for (int i = 0; i < 4; ++i) {
      __m256i lo[2], hi[2];
      for (int h = 0; h < 2; ++h) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(gb + i * 64 + h * 32));
        lo[h] = _mm256_and_si256(v, low);
        hi[h] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
      }
      for (int r = 0; r < ROWS; ++r) {
        const __m256i xl = _mm256_set1_epi32(xp[r][g * GROUP_QUADS + i]);
        const __m256i xh = _mm256_set1_epi32(xp[r][g * GROUP_QUADS + i + 4]);
        for (int h = 0; h < 2; ++h)
          acc[r][h] = _mm256_add_epi16(acc[r][h], _mm256_add_epi16(_mm256_maddubs_epi16(lo[h], xl), _mm256_maddubs_epi16(hi[h], xh)));
      }
    }
    __m256 d[2], m[2];
    for (int h = 0; h < 2; ++h) {
      d[h] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(gb + NIBBLE_BYTES + h * 16)));
      m[h] = _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(gb + NIBBLE_BYTES + 2 * BLOCK + h * 16)));
    }
    for (int r = 0; r < ROWS; ++r) {
      const int64_t at = (r0 + r) * q.groups + g;
      const float sx = q.scale[at];
      const __m256 vsx = _mm256_set1_ps(sx), vsum = _mm256_set1_ps(sx * static_cast<float>(q.sum[at]));
      for (int h = 0; h < 2; ++h) {
        __m256 f = _mm256_load_ps(accf[r] + h * 8);
        f = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(acc[r][h], ones)), _mm256_mul_ps(d[h], vsx), f);
        _mm256_store_ps(accf[r] + h * 8, _mm256_fmadd_ps(m[h], vsum, f));
      }
    }
  }
  const int64_t col = t.col0 + b * BLOCK, width = std::min<int64_t>(BLOCK, t.n - col);
  for (int r = 0; r < ROWS; ++r) radixrt_quant::store_block(y + r * ldy, col, width, t.bias, accf[r]);
}
#endif

// Portable path: the same integer sums (exact) and float32 steps (fma), for CPUs without VNNI.
template <typename T>
void tile_generic(const uint8_t* w, const QuantizedRows& q, int64_t r, const Tile& t, T* y) {
  const int8_t* xr = q.x.data() + r * q.padded;
  for (int64_t b = 0; b < t.nb; ++b) {
    float accf[BLOCK] = {};
    for (int64_t g = 0; g < q.groups; ++g) {
      const uint8_t* gb = w + (b * q.groups + g) * GROUP_BYTES;
      int32_t acc[BLOCK] = {};
      for (int64_t i = 0; i < 4; ++i)
        for (int64_t j = 0; j < BLOCK; ++j)
          for (int64_t e = 0; e < QUAD; ++e) {
            const uint8_t v = gb[i * 64 + j * QUAD + e];
            acc[j] += int32_t{v & 15} * xr[g * GROUP + i * QUAD + e] + int32_t{v >> 4} * xr[g * GROUP + (i + 4) * QUAD + e];
          }
      const float sx = q.scale[r * q.groups + g], sxsum = sx * static_cast<float>(q.sum[r * q.groups + g]);
      const at::Half* dm = reinterpret_cast<const at::Half*>(gb + NIBBLE_BYTES);
      for (int64_t j = 0; j < BLOCK; ++j) {
        accf[j] = std::fma(static_cast<float>(acc[j]), static_cast<float>(dm[j]) * sx, accf[j]);
        accf[j] = std::fma(static_cast<float>(dm[BLOCK + j]), sxsum, accf[j]);
      }
    }
    const int64_t col = t.col0 + b * BLOCK;
    radixrt_quant::store_block(y, col, std::min<int64_t>(BLOCK, t.n - col), t.bias, accf);
  }
}

template <typename T>
void q4_1_impl(const at::Tensor& x, const at::Tensor& packed, const float* bias, int64_t n, at::Tensor& y) {
  const int64_t m = x.size(0), k = x.size(1), blocks = packed.size(0);
  const QuantizedRows rows = radixrt_quant::quantize_rows(x.data_ptr<T>(), m, k);
  const uint8_t* wp = packed.data_ptr<uint8_t>();
  T* yp = y.data_ptr<T>();
  radixrt_linear::for_each_tile(m, n, k, blocks, bias, [&](int64_t tile, const Tile& t, int64_t r0, int64_t count, bool) {
    const uint8_t* w = wp + tile * TILE_BLOCKS * rows.groups * GROUP_BYTES;
#if defined(__AVX512VNNI__)
    for (int64_t h = r0; h < r0 + count; h += HALF_ROWS) {
      const int64_t rows_here = std::min(HALF_ROWS, r0 + count - h);
      radixrt_linear::with_rows(rows_here, [&](auto r) {
        constexpr int R = decltype(r)::value;
        if constexpr (R <= HALF_ROWS) {
          if (t.nb == TILE_BLOCKS) tile_vnni<T, R, TILE_BLOCKS>(w, rows, h, t, yp + h * n, n);
          else tile_vnni<T, R, 1>(w, rows, h, t, yp + h * n, n);
        }
      });
    }
#elif defined(__AVX2__)
    radixrt_linear::row_passes_by_block<HALF_ROWS>(r0, count, t.nb, [&](int64_t h, int64_t b, auto r) {
      tile_avx2<T, decltype(r)::value>(w, rows, h, t, b, yp + h * n, n);
    });
#else
    for (int64_t r = r0; r < r0 + count; ++r) tile_generic<T>(w, rows, r, t, yp + r * n);
#endif
  });
}

}  // namespace

at::Tensor q4_1_linear(const at::Tensor& x, const at::Tensor& packed, int64_t n, int64_t k,
                       const c10::optional<at::Tensor>& bias) {
  const at::Tensor xc = radixrt_quant::checked_rows(x, k);
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 3 && packed.size(0) == ceil_div(n, BLOCK) &&
                  k % GROUP == 0 && packed.size(1) == k / GROUP && packed.size(2) == GROUP_BYTES,
              "packed Q4_1 weights do not hold ", n, " x ", k);
  at::Tensor y = at::empty({x.size(0), n}, x.options());
  const at::Tensor b32 = radixrt_linear::float_bias(bias, n);
  const float* bp = b32.defined() ? b32.data_ptr<float>() : nullptr;
  if (x.size(0) == 0) return y;
  if (x.scalar_type() == at::kBFloat16) {
    q4_1_impl<at::BFloat16>(xc, packed, bp, n, y);
  } else {
    q4_1_impl<float>(xc, packed, bp, n, y);
  }
  return y;
}

TORCH_LIBRARY_FRAGMENT(radixrt, m) {
  m.def("pack_q4_1_weight(Tensor raw, int k) -> Tensor");
  m.def("q4_1_linear(Tensor x, Tensor packed, int n, int k, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(radixrt, CPU, m) {
  m.impl("pack_q4_1_weight", &pack_q4_1_weight);
  m.impl("q4_1_linear", &q4_1_linear);
}
