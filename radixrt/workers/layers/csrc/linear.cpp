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
// Threads take tiles of 2 blocks (32 columns); a tile walks the rows in chunks of up to 8, reading
// its weights from cache for every chunk after the first. For one row (decode at batch 1) this is
// a stream of the weights at memory bandwidth.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "simd.h"

namespace {

constexpr int64_t BLOCK = 16;  // output columns per block
constexpr int64_t TILE_BLOCKS = 2;  // blocks a thread computes together
constexpr int64_t MAX_ROWS = 8;  // rows sharing each weight load

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

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

struct Tile {
  int64_t k;       // reduction length
  int64_t n;       // output columns (unpadded)
  int64_t col0;    // first output column of the tile
  int64_t nb;      // blocks in this tile (1 or 2)
  const float* bias;  // [n] float32 or null
};

#if defined(__AVX512BF16__)
// bf16 x bf16 -> float32 with VDPBF16PS; `w` points at the tile's first block.
template <int ROWS>
void tile_bf16(const at::BFloat16* x, int64_t ldx, const at::BFloat16* w, const Tile& t, at::BFloat16* y, int64_t ldy) {
  const int64_t pairs = ceil_div(t.k, 2), full = t.k / 2;
  const __m512i* wb = reinterpret_cast<const __m512i*>(w);  // [nb][pairs] of 64 bytes
  __m512 acc[ROWS][TILE_BLOCKS];
  for (int64_t b = 0; b < t.nb; ++b) {
    const __m512 init = t.bias ? radixrt_simd::load16(t.bias + t.col0 + b * BLOCK) : _mm512_setzero_ps();
    for (int r = 0; r < ROWS; ++r) acc[r][b] = init;
  }
  const int32_t* xp[ROWS];
  for (int r = 0; r < ROWS; ++r) xp[r] = reinterpret_cast<const int32_t*>(x + r * ldx);
  if (t.nb == TILE_BLOCKS) {
    for (int64_t p = 0; p < full; ++p) {
      const __m512bh w0 = (__m512bh)_mm512_loadu_si512(wb + p);
      const __m512bh w1 = (__m512bh)_mm512_loadu_si512(wb + pairs + p);
      for (int r = 0; r < ROWS; ++r) {
        const __m512bh xv = (__m512bh)_mm512_set1_epi32(xp[r][p]);
        acc[r][0] = _mm512_dpbf16_ps(acc[r][0], xv, w0);
        acc[r][1] = _mm512_dpbf16_ps(acc[r][1], xv, w1);
      }
    }
  } else {
    for (int64_t p = 0; p < full; ++p) {
      const __m512bh w0 = (__m512bh)_mm512_loadu_si512(wb + p);
      for (int r = 0; r < ROWS; ++r) acc[r][0] = _mm512_dpbf16_ps(acc[r][0], (__m512bh)_mm512_set1_epi32(xp[r][p]), w0);
    }
  }
  if (full < pairs) {  // odd K: the last pair holds one element (its partner is the packing's zero)
    for (int r = 0; r < ROWS; ++r) {
      uint16_t last;
      std::memcpy(&last, x + r * ldx + t.k - 1, 2);
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(last);
      for (int64_t b = 0; b < t.nb; ++b)
        acc[r][b] = _mm512_dpbf16_ps(acc[r][b], xv, (__m512bh)_mm512_loadu_si512(wb + b * pairs + full));
    }
  }
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
void run_rows(int64_t rows, const T* x, int64_t ldx, const T* w, const Tile& t, T* y, int64_t ldy) {
  switch (rows) {
    case 8: return run_tile<T, 8>(x, ldx, w, t, y, ldy);
    case 7: return run_tile<T, 7>(x, ldx, w, t, y, ldy);
    case 6: return run_tile<T, 6>(x, ldx, w, t, y, ldy);
    case 5: return run_tile<T, 5>(x, ldx, w, t, y, ldy);
    case 4: return run_tile<T, 4>(x, ldx, w, t, y, ldy);
    case 3: return run_tile<T, 3>(x, ldx, w, t, y, ldy);
    case 2: return run_tile<T, 2>(x, ldx, w, t, y, ldy);
    default: return run_tile<T, 1>(x, ldx, w, t, y, ldy);
  }
}

template <typename T>
void linear_impl(const at::Tensor& x, const at::Tensor& packed, const float* bias, int64_t n, at::Tensor& y) {
  const int64_t m = x.size(0), k = x.size(1), blocks = packed.size(0);
  const int64_t block_elems = packed.numel() / blocks, tiles = ceil_div(blocks, TILE_BLOCKS);
  const T* xp = x.data_ptr<T>();
  const T* wp = packed.data_ptr<T>();
  T* yp = y.data_ptr<T>();
  const int64_t chunks = ceil_div(m, MAX_ROWS);
  // NOTE: a work item is (tile, group of row chunks); how items are dealt to threads never
  // changes what any output element is computed from, only who computes it.
  const int64_t groups = std::max<int64_t>(1, std::min<int64_t>(chunks, at::get_num_threads() * 4 / std::max<int64_t>(tiles, 1)));
  const int64_t per_group = ceil_div(chunks, groups);
  at::parallel_for(0, tiles * groups, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t tile = item / groups, group = item % groups;
      const Tile t{k, n, tile * TILE_BLOCKS * BLOCK, std::min(TILE_BLOCKS, blocks - tile * TILE_BLOCKS), bias};
      const T* w = wp + tile * TILE_BLOCKS * block_elems;
      for (int64_t c = group * per_group; c < std::min(chunks, (group + 1) * per_group); ++c) {
        const int64_t r0 = c * MAX_ROWS, rows = std::min(MAX_ROWS, m - r0);
        run_rows<T>(rows, xp + r0 * k, k, w, t, yp + r0 * n, n);
      }
    }
  });
}

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
  at::Tensor b32;
  if (bias.has_value()) {
    TORCH_CHECK(bias->numel() == n, "bias has ", bias->numel(), " elements, expected ", n);
    b32 = bias->to(at::kFloat).contiguous();
  }
  const float* bp = bias.has_value() ? b32.data_ptr<float>() : nullptr;
  if (x.size(0) == 0) return y;
  if (bf16) {
    linear_impl<at::BFloat16>(xc, packed, bp, n, y);
  } else {
    linear_impl<float>(xc, packed, bp, n, y);
  }
  return y;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(radixrt, m) {
  m.def("pack_linear_weight(Tensor weight) -> Tensor");
  m.def("packed_linear(Tensor x, Tensor packed, int n, int k, Tensor? bias) -> Tensor");
}

TORCH_LIBRARY_IMPL(radixrt, CPU, m) {
  m.impl("pack_linear_weight", &pack_linear_weight);
  m.impl("packed_linear", &packed_linear);
}
