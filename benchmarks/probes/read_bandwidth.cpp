// How fast this machine's cores read memory: 512 MiB streamed once per pass with the widest
// vector loads the CPU has (512-bit with AVX512F, else 256-bit with AVX2), on 1 and 2 threads,
// the best of 8 passes. A batch-1 decode step reads every weight once, so weight bytes / this
// rate is its physical limit (bf16 SmolLM2-135M: 269 MB; int8: 134 MB).
//
//   g++ -O2 -march=native -fopenmp benchmarks/probes/read_bandwidth.cpp -o /tmp/read_bw && /tmp/read_bw
//
// Needs AVX2 at least. Run it on an idle machine.
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#if defined(__AVX512F__)
using Lanes = __m512i;
constexpr size_t kWidth = 64;
static Lanes zero() { return _mm512_setzero_si512(); }
static Lanes add(Lanes a, Lanes b) { return _mm512_add_epi64(a, b); }
static Lanes load(const char* p) { return _mm512_load_si512(p); }
static long long reduce(Lanes a) { return _mm512_reduce_add_epi64(a); }
#elif defined(__AVX2__)
using Lanes = __m256i;
constexpr size_t kWidth = 32;
static Lanes zero() { return _mm256_setzero_si256(); }
static Lanes add(Lanes a, Lanes b) { return _mm256_add_epi64(a, b); }
static Lanes load(const char* p) { return _mm256_load_si256(reinterpret_cast<const __m256i*>(p)); }
static long long reduce(Lanes a) {
  alignas(32) long long v[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(v), a);
  return v[0] + v[1] + v[2] + v[3];
}
#else
#error "read_bandwidth needs AVX2 or AVX512F"
#endif

int main() {
  const size_t bytes = size_t{512} << 20, lines = bytes / 128;
  char* buf = static_cast<char*>(std::aligned_alloc(64, bytes));
  std::memset(buf, 1, bytes);  // touch every page before timing
  std::printf("%zu-bit loads\n", kWidth * 8);
  for (int threads = 1; threads <= 2; ++threads) {
    double best = 0;
    long long check = 0;
    for (int pass = 0; pass < 8; ++pass) {
      const auto t0 = std::chrono::steady_clock::now();
      Lanes total = zero();
#pragma omp parallel num_threads(threads)
      {
        Lanes a = zero(), b = zero();
#pragma omp for
        for (size_t i = 0; i < lines; ++i) {
          const char* line = buf + i * 128;
          for (size_t offset = 0; offset < 128; offset += 2 * kWidth) {
            a = add(a, load(line + offset));
            b = add(b, load(line + offset + kWidth));
          }
        }
#pragma omp critical
        total = add(total, add(a, b));
      }
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      best = std::max(best, bytes / seconds / 1e9);
      check += reduce(total);  // keeps the loads
    }
    std::printf("%d thread%s: %.1f GB/s read (checksum %lld)\n", threads, threads > 1 ? "s" : "", best, check);
  }
  std::free(buf);
}
