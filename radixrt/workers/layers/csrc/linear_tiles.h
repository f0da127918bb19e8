// How the packed linears (linear.cpp, linear_int8.cpp) split y[M, N] = x[M, K] @ W^T into work.
//
// W is packed in blocks of 16 output columns. A thread computes a tile of up to 2 blocks (32
// columns) for a chunk of up to 8 rows at a time, reading the tile's weights once per chunk. Each
// output element is reduced over K in one fixed order inside one tile call, so how rows are grouped
// into chunks and how tiles are dealt to threads never changes a result.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "simd.h"

namespace radixrt_linear {

constexpr int64_t BLOCK = 16;       // output columns per block
constexpr int64_t TILE_BLOCKS = 2;  // blocks a thread computes together
constexpr int64_t MAX_ROWS = 8;     // rows sharing each weight load

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// A tile streams its blocks' weights as two sequences of 64-byte lines. At a few rows a step reads
// each line once, and the hardware prefetcher alone kept too few lines in flight. Measured on an AMD
// EPYC at M = 1, 120 linears of the embedded model's shapes read from DRAM, with each stream fetched
// this far ahead into L2: int8 12.5-12.7 -> 13.7-15.5 GB/s on one thread and 19-23 -> 23-24 GB/s on
// two; bf16 18.1 -> 18.2-19.0 GB/s on one (16 lines ahead: no gain; 96: less than 48). The distance
// is this CPU's: elsewhere the bf16 kernel still runs only where it measured faster than ATen and
// oneDNN (cpu_linear.py); a prefetch is a hint and never changes a result.
constexpr int64_t PREFETCH_LINES = 48;

inline void prefetch_ahead(const void* line) {
  __builtin_prefetch(static_cast<const char*>(line) + PREFETCH_LINES * 64, 0, 2);  // read, into L2
}

// the bias as n contiguous float32 values (an undefined tensor when there is none)
inline at::Tensor float_bias(const c10::optional<at::Tensor>& bias, int64_t n) {
  if (!bias.has_value()) return at::Tensor();
  TORCH_CHECK(bias->numel() == n, "bias has ", bias->numel(), " elements, expected ", n);
  return bias->to(at::kFloat).contiguous();
}

struct Tile {
  int64_t k;          // reduction length
  int64_t n;          // output columns (unpadded)
  int64_t col0;       // first output column of the tile
  int64_t nb;         // blocks in this tile (1 or 2)
  const float* bias;  // [n] float32 or null
};

// f(std::integral_constant<int, R>{}) with R = rows (1..MAX_ROWS), a compile-time row count
template <typename F>
void with_rows(int64_t rows, F&& f) {
  switch (rows) {
    case 8: return f(std::integral_constant<int, 8>{});
    case 7: return f(std::integral_constant<int, 7>{});
    case 6: return f(std::integral_constant<int, 6>{});
    case 5: return f(std::integral_constant<int, 5>{});
    case 4: return f(std::integral_constant<int, 4>{});
    case 3: return f(std::integral_constant<int, 3>{});
    case 2: return f(std::integral_constant<int, 2>{});
    default: return f(std::integral_constant<int, 1>{});
  }
}

// f(first_row, block, std::integral_constant<int, R>{}) over rows r0 .. r0 + count in passes of
// up to PER rows, each pass over the tile's blocks one at a time (the AVX2 quantized kernels)
template <int PER, typename F>
void row_passes_by_block(int64_t r0, int64_t count, int64_t nb, F&& f) {
  for (int64_t h = r0; h < r0 + count; h += PER)
    for (int64_t b = 0; b < nb; ++b)
      with_rows(std::min<int64_t>(PER, r0 + count - h), [&](auto r) {
        if constexpr (decltype(r)::value <= PER) f(h, b, r);
      });
}

// run(tile_index, tile, first_row, rows, first) for every (tile, chunk of up to `chunk_rows` rows), on
// torch's threads; `first`: the first chunk of its tile that this thread computes in this call
template <typename Run>
void for_each_tile(int64_t m, int64_t n, int64_t k, int64_t blocks, const float* bias, Run&& run, int64_t chunk_rows = MAX_ROWS) {
  const int64_t tiles = ceil_div(blocks, TILE_BLOCKS), chunks = ceil_div(m, chunk_rows);
  // NOTE: a work item is (tile, group of row chunks): small M still spreads over the threads by
  // tiles, large M by chunks too; who computes an element never changes how it is computed
  const int64_t groups = std::max<int64_t>(1, std::min<int64_t>(chunks, at::get_num_threads() * 4 / std::max<int64_t>(tiles, 1)));
  const int64_t per_group = ceil_div(chunks, groups);
  at::parallel_for(0, tiles * groups, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t tile = item / groups, group = item % groups;
      const Tile t{k, n, tile * TILE_BLOCKS * BLOCK, std::min(TILE_BLOCKS, blocks - tile * TILE_BLOCKS), bias};
      for (int64_t c = group * per_group; c < std::min(chunks, (group + 1) * per_group); ++c) {
        const int64_t r0 = c * chunk_rows;
        run(tile, t, r0, std::min(chunk_rows, m - r0), c == group * per_group);
      }
    }
  });
}

#if defined(__AVX512BF16__)
// acc[r][b] += rows x the tile's bf16 weights, with VDPBF16PS; `w` points at the tile's first block,
// packed [nb][K/2][16][2].
template <int ROWS>
inline void accumulate_bf16(const at::BFloat16* x, int64_t ldx, const at::BFloat16* w, const Tile& t,
                            __m512 (&acc)[ROWS][TILE_BLOCKS]) {
  const int64_t pairs = ceil_div(t.k, 2), full = t.k / 2;
  const __m512i* wb = reinterpret_cast<const __m512i*>(w);  // [nb][pairs] of 64 bytes
  const int32_t* xp[ROWS];
  for (int r = 0; r < ROWS; ++r) xp[r] = reinterpret_cast<const int32_t*>(x + r * ldx);
  if (t.nb == TILE_BLOCKS) {
    for (int64_t p = 0; p < full; ++p) {
      prefetch_ahead(wb + p);
      prefetch_ahead(wb + pairs + p);
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
}
#endif

}  // namespace radixrt_linear
