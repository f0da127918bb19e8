// y = x @ W^T (+ bias) with int8 weights Q and either one scale per output channel,
// W[n, k] ~ Q[n, k] * scale[n] (`--quantization int8`), or one per output channel and group of 32
// along K, W[n, k] ~ Q[n, k] * group_scale[n, k / 32] (GGUF's Q8_0, served as stored).
//
// Each row of x is quantized on the fly in groups of GROUP values along K, each group with its own
// scale (x ~ X * sx[g], quantized_rows.h), and a group's products are summed exactly in int32 with
// VNNI's VPDPBUSD (4 products per lane and instruction, no widening). Group sums are then scaled
// and added in float32:
//     y[n] = scale[n] * sum_g sx[g] * (sum_{k in g} X[k] Q[n, k])                 per channel
//     y[n] = sum_g (sx[g] * group_scale[n, g]) * (sum_{k in g} X[k] Q[n, k])      per group
// VPDPBUSD multiplies unsigned by signed bytes: Q is stored as Q + 128, and the surplus
// 128 * sum_{k in g} X[k] (one number per row and group, found while quantizing) is taken off.
// A row's result depends only on that row, in a fixed order: not on the batch or the threads.
//
// Packed weights, K in quads (zero padded, stored + 128), the two 16-column blocks of a tile interleaved
// quad by quad so that a tile is one sequential stream: [N/32][K/4][2][16][4] uint8 (an odd last
// block: [K/4][16][4]). As two streams of half the length (a tile's blocks one after the other), a
// batch-1 step started every tile cold: measured on an AMD EPYC, the 49,152 x 576 lm_head at M = 1
// went from 19.4 to 28.4 GB/s on one thread.
// Group scales, float16: [N/16][K/32][16] (a 16-column block's scales for one group side by side).

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "linear_tiles.h"
#include "quantized_rows.h"
#include "ops.h"
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


// where quad p of block b starts, in 64-byte units
inline int64_t tile_quad(int64_t b, int64_t p, int64_t quads, int64_t blocks) {
  const int64_t first = b / TILE_BLOCKS * TILE_BLOCKS, nb = std::min(TILE_BLOCKS, blocks - first);
  return first * quads + p * nb + b - first;
}

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
          dst[(tile_quad(b, i / QUAD, quads, blocks) * BLOCK + j) * QUAD + i % QUAD] = static_cast<uint8_t>(src[(b * BLOCK + j) * k + i] + 128);
  });
  return packed;
}

struct Epilogue {
  const float* scale;          // [n] per output column, or null
  const at::Half* group_scale; // [N/16][groups][16], or null
  const QuantizedRows* rows;
};

#if defined(__AVX512VNNI__)
// acc += the int32 sums of QUADS quads from quad p0 on, for ROWS rows and the tile's NB blocks; wb
// is quad p0's NB 64-byte block vectors
template <int ROWS, int NB, int QUADS>
inline void group_sums(const __m512i* wb, const int32_t* const (&xp)[ROWS], int64_t p0, __m512i (&acc)[ROWS][NB]) {
  // NOTE: at one or two rows a single chain of VPDPBUSDs per column waits on its latency; int32 sums
  // are exact, so giving odd quads their own chain changes no result
  constexpr int CHAINS = ROWS <= 2 && QUADS > 1 ? 2 : 1;
  __m512i part[CHAINS][ROWS][NB];
  for (int c = 0; c < CHAINS; ++c)
    for (int r = 0; r < ROWS; ++r)
      for (int b = 0; b < NB; ++b) part[c][r][b] = c == 0 ? acc[r][b] : _mm512_setzero_si512();
#pragma GCC unroll 8
  for (int i = 0; i < QUADS; ++i) {
    __m512i wv[NB];
    for (int b = 0; b < NB; ++b) {
      radixrt_linear::prefetch_ahead(wb + NB * i + b);
      wv[b] = _mm512_loadu_si512(wb + NB * i + b);
    }
    for (int r = 0; r < ROWS; ++r) {
      const __m512i xv = _mm512_set1_epi32(xp[r][p0 + i]);
      for (int b = 0; b < NB; ++b) part[i % CHAINS][r][b] = _mm512_dpbusd_epi32(part[i % CHAINS][r][b], wv[b], xv);
    }
  }
  for (int r = 0; r < ROWS; ++r)
    for (int b = 0; b < NB; ++b) acc[r][b] = CHAINS == 2 ? _mm512_add_epi32(part[0][r][b], part[CHAINS - 1][r][b]) : part[0][r][b];
}

// rows r0 .. r0 + ROWS of the tile's NB blocks, ROWS <= HALF_ROWS. NB and ROWS are compile-time so
// that every sum lives in a register (with a run-time block count gcc kept them all on the stack).
template <typename T, int ROWS, int NB>
void tile_vnni(const uint8_t* w, const Epilogue& e, int64_t r0, const Tile& t, T* y, int64_t ldy) {
  const QuantizedRows& q = *e.rows;
  const int64_t quads = ceil_div(t.k, QUAD);
  const __m512i* wb = reinterpret_cast<const __m512i*>(w);  // [quads][NB] of 64 bytes
  const at::Half* gs = e.group_scale ? e.group_scale + t.col0 * q.groups : nullptr;  // [NB][groups][16]
  __m512 accf[ROWS][NB];
  for (int r = 0; r < ROWS; ++r)
    for (int b = 0; b < NB; ++b) accf[r][b] = _mm512_setzero_ps();
  const int32_t* xp[ROWS];
  for (int r = 0; r < ROWS; ++r) xp[r] = reinterpret_cast<const int32_t*>(q.x.data() + (r0 + r) * q.padded);
  for (int64_t g = 0; g < q.groups; ++g) {
    __m512i acc[ROWS][NB];
    for (int r = 0; r < ROWS; ++r)
      for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_setzero_si512();
    const int64_t p0 = g * GROUP_QUADS, p1 = std::min(quads, p0 + GROUP_QUADS);
    if (p1 - p0 == GROUP_QUADS) {
      group_sums<ROWS, NB, GROUP_QUADS>(wb + NB * p0, xp, p0, acc);
    } else {
      for (int64_t p = p0; p < p1; ++p) group_sums<ROWS, NB, 1>(wb + NB * p, xp, p, acc);
    }
    __m512 sw[NB];
    for (int b = 0; b < NB; ++b)
      sw[b] = gs ? _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(gs + (b * q.groups + g) * BLOCK)))
                 : _mm512_set1_ps(1.f);
    for (int r = 0; r < ROWS; ++r) {
      const int64_t at = (r0 + r) * q.groups + g;
      const __m512i surplus = _mm512_set1_epi32(128 * q.sum[at]);
      const __m512 sx = _mm512_set1_ps(q.scale[at]);
      for (int b = 0; b < NB; ++b)
        accf[r][b] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(acc[r][b], surplus)),
                                     gs ? _mm512_mul_ps(sx, sw[b]) : sx, accf[r][b]);
    }
  }
  for (int b = 0; b < NB; ++b) {
    const int64_t col = t.col0 + b * BLOCK, width = std::min<int64_t>(BLOCK, t.n - col);
    const __mmask16 mask = static_cast<__mmask16>((1u << width) - 1);
    const __m512 scale = e.scale ? _mm512_maskz_loadu_ps(mask, e.scale + col) : _mm512_set1_ps(1.f);
    for (int r = 0; r < ROWS; ++r) radixrt_quant::store_block(y + r * ldy, col, width, t.bias, _mm512_mul_ps(accf[r][b], scale));
  }
}
#endif

#if defined(__AVX2__) && !defined(__AVX512VNNI__)
constexpr int64_t AVX2_PASS_ROWS = 2;  // rows per register pass: 4 int32 sums each for a 2-block tile

// AVX2 (no VNNI): rows r0 .. r0 + ROWS and the NB blocks of the tile, 8 columns a register, in one
// pass over the tile's interleaved stream. The stored Q + 128 is turned back into Q with one XOR,
// so a group's int32 sums are the VNNI path's without the surplus to take off
// (radixrt_quant::dot_s8), and the float32 steps are the same: the same bits.
template <typename T, int ROWS, int NB>
void tile_avx2(const uint8_t* w, const Epilogue& e, int64_t r0, const Tile& t, T* y, int64_t ldy) {
  constexpr int H = 2 * NB;  // registers of 8 columns
  const QuantizedRows& q = *e.rows;
  const int64_t quads = ceil_div(t.k, QUAD);
  const at::Half* gs = e.group_scale ? e.group_scale + t.col0 * q.groups : nullptr;  // [NB][groups][16]
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  alignas(32) float accf[ROWS][NB * BLOCK] = {};
  const int32_t* xp[ROWS];
  for (int r = 0; r < ROWS; ++r) xp[r] = reinterpret_cast<const int32_t*>(q.x.data() + (r0 + r) * q.padded);
  for (int64_t g = 0; g < q.groups; ++g) {
    __m256i acc[ROWS][H];
    for (int r = 0; r < ROWS; ++r)
      for (int h = 0; h < H; ++h) acc[r][h] = _mm256_setzero_si256();
    for (int64_t p = g * GROUP_QUADS; p < std::min(quads, (g + 1) * GROUP_QUADS); ++p) {
      const uint8_t* line = w + p * NB * BLOCK * QUAD;  // the quad's NB blocks side by side
      radixrt_linear::prefetch_ahead(line);
      if constexpr (NB == 2) radixrt_linear::prefetch_ahead(line + 64);
      __m256i wv[H];
      for (int h = 0; h < H; ++h)
        wv[h] = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(line + 32 * h)), flip);
      for (int r = 0; r < ROWS; ++r) {
        const __m256i xv = _mm256_set1_epi32(xp[r][p]);
        for (int h = 0; h < H; ++h) acc[r][h] = radixrt_quant::dot_s8(acc[r][h], wv[h], xv);
      }
    }
    for (int h = 0; h < H; ++h) {
      const __m256 sw = gs ? _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(
                                 gs + ((h / 2) * q.groups + g) * BLOCK + (h % 2) * 8)))
                           : _mm256_setzero_ps();
      for (int r = 0; r < ROWS; ++r) {
        const __m256 sx = _mm256_set1_ps(q.scale[(r0 + r) * q.groups + g]);
        _mm256_store_ps(accf[r] + h * 8, _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][h]), gs ? _mm256_mul_ps(sx, sw) : sx,
                                                         _mm256_load_ps(accf[r] + h * 8)));
      }
    }
  }
  for (int b = 0; b < NB; ++b) {
    const int64_t col = t.col0 + b * BLOCK, width = std::min<int64_t>(BLOCK, t.n - col);
    for (int r = 0; r < ROWS; ++r) {
      float* out = accf[r] + b * BLOCK;
      for (int64_t j = 0; j < width && e.scale; ++j) out[j] *= e.scale[col + j];
      radixrt_quant::store_block(y + r * ldy, col, width, t.bias, out);
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
    const int64_t col = t.col0 + b * BLOCK;
    const at::Half* gs = e.group_scale ? e.group_scale + col * q.groups : nullptr;  // [groups][16]
    float accf[BLOCK] = {};
    for (int64_t g = 0; g < q.groups; ++g) {
      int32_t acc[BLOCK] = {};
      for (int64_t p = g * GROUP_QUADS; p < std::min(quads, (g + 1) * GROUP_QUADS); ++p)
        for (int64_t j = 0; j < BLOCK; ++j)
          for (int64_t e4 = 0; e4 < QUAD; ++e4) acc[j] += int32_t{w[((p * t.nb + b) * BLOCK + j) * QUAD + e4]} * int32_t{xr[p * QUAD + e4]};
      const float sx = q.scale[r * q.groups + g];
      for (int64_t j = 0; j < BLOCK; ++j) {
        const float s = gs ? sx * static_cast<float>(gs[g * BLOCK + j]) : sx;
        accf[j] = std::fma(static_cast<float>(acc[j] - 128 * q.sum[r * q.groups + g]), s, accf[j]);
      }
    }
    const int64_t width = std::min<int64_t>(BLOCK, t.n - col);
    for (int64_t j = 0; j < width && e.scale; ++j) accf[j] *= e.scale[col + j];
    radixrt_quant::store_block(y, col, width, t.bias, accf);
  }
}

template <typename T>
void int8_impl(const at::Tensor& x, const at::Tensor& packed, const Epilogue& scales, const float* bias, int64_t n,
               at::Tensor& y) {
  const int64_t m = x.size(0), k = x.size(1), blocks = packed.size(0), block_bytes = packed.numel() / blocks;
  const QuantizedRows rows = radixrt_quant::quantize_rows(x.data_ptr<T>(), m, k);
  const Epilogue e{scales.scale, scales.group_scale, &rows};
  const uint8_t* wp = packed.data_ptr<uint8_t>();
  T* yp = y.data_ptr<T>();
  radixrt_linear::for_each_tile(m, n, k, blocks, bias, [&](int64_t tile, const Tile& t, int64_t r0, int64_t count, bool) {
    const uint8_t* w = wp + tile * TILE_BLOCKS * block_bytes;
#if defined(__AVX512VNNI__)
    for (int64_t h = r0; h < r0 + count; h += HALF_ROWS) {
      const int64_t rows_here = std::min(HALF_ROWS, r0 + count - h);
      radixrt_linear::with_rows(rows_here, [&](auto r) {
        constexpr int R = decltype(r)::value;
        if constexpr (R <= HALF_ROWS) {
          if (t.nb == TILE_BLOCKS) tile_vnni<T, R, TILE_BLOCKS>(w, e, h, t, yp + h * n, n);
          else tile_vnni<T, R, 1>(w, e, h, t, yp + h * n, n);
        }
      });
    }
#elif defined(__AVX2__)
    for (int64_t h = r0; h < r0 + count; h += AVX2_PASS_ROWS) {
      radixrt_linear::with_rows(std::min(AVX2_PASS_ROWS, r0 + count - h), [&](auto r) {
        constexpr int R = decltype(r)::value;
        if constexpr (R <= AVX2_PASS_ROWS) {
          if (t.nb == TILE_BLOCKS) tile_avx2<T, R, TILE_BLOCKS>(w, e, h, t, yp + h * n, n);
          else tile_avx2<T, R, 1>(w, e, h, t, yp + h * n, n);
        }
      });
    }
#else
    for (int64_t r = r0; r < r0 + count; ++r) tile_generic<T>(w, e, r, t, yp + r * n);
#endif
  });
}

}  // namespace

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& scale, int64_t n,
                       int64_t k, const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& group_scale) {
  const at::Tensor xc = radixrt_quant::checked_rows(x, k);
  TORCH_CHECK(packed.scalar_type() == at::kByte && packed.dim() == 4 && packed.size(0) == ceil_div(n, BLOCK) &&
                  packed.size(1) == ceil_div(k, QUAD),
              "packed int8 weights do not hold ", n, " x ", k);
  TORCH_CHECK(scale.has_value() != group_scale.has_value(), "give either scale or group_scale");
  if (scale.has_value())
    TORCH_CHECK(scale->scalar_type() == at::kFloat && scale->numel() == n && scale->is_contiguous(),
                "scale must be ", n, " contiguous float32 values");
  if (group_scale.has_value())
    TORCH_CHECK(group_scale->scalar_type() == at::kHalf && group_scale->is_contiguous() &&
                    group_scale->numel() == ceil_div(n, BLOCK) * ceil_div(k, GROUP) * BLOCK,
                "group_scale must be contiguous float16 [", ceil_div(n, BLOCK), ", ", ceil_div(k, GROUP), ", ", BLOCK, "]");
  at::Tensor y = at::empty({x.size(0), n}, x.options());
  const at::Tensor b32 = radixrt_linear::float_bias(bias, n);
  const float* bp = b32.defined() ? b32.data_ptr<float>() : nullptr;
  if (x.size(0) == 0) return y;
  const Epilogue scales{scale ? scale->data_ptr<float>() : nullptr,
                        group_scale ? group_scale->data_ptr<at::Half>() : nullptr, nullptr};
  if (x.scalar_type() == at::kBFloat16) {
    int8_impl<at::BFloat16>(xc, packed, scales, bp, n, y);
  } else {
    int8_impl<float>(xc, packed, scales, bp, n, y);
  }
  return y;
}

TORCH_LIBRARY_FRAGMENT(radixrt, m) {
  m.def("pack_int8_weight(Tensor q) -> Tensor");
  m.def("int8_linear(Tensor x, Tensor packed, Tensor? scale, int n, int k, Tensor? bias, Tensor? group_scale=None) -> Tensor");
}

TORCH_LIBRARY_IMPL(radixrt, CPU, m) {
  m.impl("pack_int8_weight", &pack_int8_weight);
  m.impl("int8_linear", &int8_linear);
}
