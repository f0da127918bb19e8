// One core's peak rate of the instructions the CPU kernels are built on: how many 512-bit
// FMA (float32), VDPBF16PS (bf16 pairs) and VPDPBUSD (int8 quads) it retires per second, with
// enough independent accumulators to hide their latency. Multiply by the multiply-adds per
// instruction (16, 32, 64) for the core's MAC rate: the physical limit of a compute-bound step.
//
//   g++ -O2 -march=native benchmarks/probes/isa_peaks.cpp -o /tmp/isa_peaks && /tmp/isa_peaks
//
// Needs AVX512F, AVX512-BF16 and AVX512-VNNI. Run it on an idle machine.
#include <immintrin.h>

#include <chrono>
#include <cstdio>

constexpr int ACC = 24;         // independent chains: latency x ports of every CPU seen so far
constexpr long INSTR = 200000000;

template <typename V, typename Step>
static double rate(V (&acc)[ACC], Step step) {
  const auto t0 = std::chrono::steady_clock::now();
  for (long i = 0; i < INSTR / ACC; ++i)
    for (int j = 0; j < ACC; ++j) acc[j] = step(acc[j]);
  return INSTR / std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

int main() {
  __m512 f[ACC], b[ACC];
  __m512i q[ACC];
  for (int j = 0; j < ACC; ++j) f[j] = b[j] = _mm512_setzero_ps(), q[j] = _mm512_setzero_si512();
  const __m512 x = _mm512_set1_ps(1e-9f);
  const __m512bh xb = (__m512bh)_mm512_set1_epi16(0x3f80);
  const __m512i xq = _mm512_set1_epi8(1);
  const double fma = rate(f, [&](__m512 a) { return _mm512_fmadd_ps(x, x, a); });
  const double bf16 = rate(b, [&](__m512 a) { return _mm512_dpbf16_ps(a, xb, xb); });
  const double int8 = rate(q, [&](__m512i a) { return _mm512_dpbusd_epi32(a, xq, xq); });
  float sink = 0;
  for (int j = 0; j < ACC; ++j) sink += f[j][0] + b[j][0] + float(q[j][0]);
  std::printf("per core: FMA f32 %.2f G/s = %.0f GMAC/s; VDPBF16PS %.2f G/s = %.0f GMAC/s; VPDPBUSD %.2f G/s = %.0f GMAC/s (%g)\n",
              fma / 1e9, 16 * fma / 1e9, bf16 / 1e9, 32 * bf16 / 1e9, int8 / 1e9, 64 * int8 / 1e9, sink);
}
