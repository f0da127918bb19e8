// How fast this machine's cores read memory: 512 MiB streamed once per pass with 512-bit loads,
// on 1 and 2 threads, the best of 8 passes. A batch-1 decode step reads every weight once, so
// weight bytes / this rate is its physical limit (bf16 SmolLM2-135M: 269 MB; int8: 134 MB).
//
//   g++ -O2 -march=native -fopenmp benchmarks/probes/read_bandwidth.cpp -o /tmp/read_bw && /tmp/read_bw
//
// Needs AVX512F. Run it on an idle machine.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

int main() {
  const size_t bytes = size_t{512} << 20, lines = bytes / 128;
  char* buf = static_cast<char*>(std::aligned_alloc(64, bytes));
  std::memset(buf, 1, bytes);  // touch every page before timing
  for (int threads = 1; threads <= 2; ++threads) {
    double best = 0;
    long long check = 0;
    for (int pass = 0; pass < 8; ++pass) {
      const auto t0 = std::chrono::steady_clock::now();
      __m512i total = _mm512_setzero_si512();
#pragma omp parallel num_threads(threads)
      {
        __m512i a = _mm512_setzero_si512(), b = _mm512_setzero_si512();
#pragma omp for
        for (size_t i = 0; i < lines; ++i) {
          a = _mm512_add_epi64(a, _mm512_load_si512(buf + i * 128));
          b = _mm512_add_epi64(b, _mm512_load_si512(buf + i * 128 + 64));
        }
#pragma omp critical
        total = _mm512_add_epi64(total, _mm512_add_epi64(a, b));
      }
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      best = std::max(best, bytes / seconds / 1e9);
      check += _mm512_reduce_add_epi64(total);  // keeps the loads
    }
    std::printf("%d thread%s: %.1f GB/s read (checksum %lld)\n", threads, threads > 1 ? "s" : "", best, check);
  }
  std::free(buf);
}
