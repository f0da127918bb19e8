// The MLP's SiLU-and-multiply and the rotary embedding, one pass each over their rows.
//
// PyTorch runs `silu(gate) * up` as two ops over a strided half of the gate/up output, and the
// rotary embedding as five (clone, mul_, addcmul_ on each half): together ~8% of a prefill.
// Both ops here read each input once, compute in float32 and round once to the tensor's dtype
// (PyTorch's bf16 path rounds after every op, so results can differ by one bf16 step).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "ops.h"
#include "simd.h"

namespace {

inline float silu(float x) { return x / (1.f + std::exp(-x)); }

#if defined(__AVX512F__)
using radixrt_simd::exp16;
using radixrt_simd::load16;
using radixrt_simd::store16;

inline __m512 silu16(__m512 x) {
  const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), x));
  return _mm512_div_ps(x, _mm512_add_ps(_mm512_set1_ps(1.f), e));
}
#elif defined(__AVX2__)
inline __m256 silu8(__m256 x) {
  const __m256 e = radixrt_simd::exp8(_mm256_sub_ps(_mm256_setzero_ps(), x));
  return _mm256_div_ps(x, _mm256_add_ps(_mm256_set1_ps(1.f), e));
}
#endif

template <typename T>
void silu_and_mul_row(const T* gate, const T* up, T* out, int64_t n) {
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= n; i += 16) store16(out + i, _mm512_mul_ps(silu16(load16(gate + i)), load16(up + i)));
#elif defined(__AVX2__)
  using radixrt_simd::load8;
  for (; i + 8 <= n; i += 8) radixrt_simd::store8(out + i, _mm256_mul_ps(silu8(load8(gate + i)), load8(up + i)));
#endif
  for (; i < n; ++i) out[i] = static_cast<T>(silu(static_cast<float>(gate[i])) * static_cast<float>(up[i]));
}

// x1' = x1 cos - x2 sin, x2' = x2 cos + x1 sin over the two halves of one head
template <typename T>
void rotate_head(T* x, const T* cos, const T* sin, int64_t half) {
  T* x1 = x;
  T* x2 = x + half;
  int64_t i = 0;
#if defined(__AVX512F__)
  for (; i + 16 <= half; i += 16) {
    const __m512 a = load16(x1 + i), b = load16(x2 + i), c = load16(cos + i), s = load16(sin + i);
    store16(x1 + i, _mm512_fmsub_ps(a, c, _mm512_mul_ps(b, s)));
    store16(x2 + i, _mm512_fmadd_ps(b, c, _mm512_mul_ps(a, s)));
  }
#endif
  for (; i < half; ++i) {
    const float a = static_cast<float>(x1[i]), b = static_cast<float>(x2[i]);
    const float c = static_cast<float>(cos[i]), s = static_cast<float>(sin[i]);
    x1[i] = static_cast<T>(a * c - b * s);
    x2[i] = static_cast<T>(b * c + a * s);
  }
}

// f.template operator()<T>() with T the C++ type of a bfloat16 or float32 tensor
template <typename F>
void dispatch(at::ScalarType dtype, F&& f) {
  if (dtype == at::kBFloat16) {
    f.template operator()<at::BFloat16>();
  } else {
    f.template operator()<float>();
  }
}

void check_dtype(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.scalar_type() == at::kBFloat16 || t.scalar_type() == at::kFloat, name,
              " must be bfloat16 or float32, got ", t.scalar_type());
}

}  // namespace

// gate_up [T, 2I] (gate, then up) -> silu(gate) * up, [T, I]
at::Tensor silu_and_mul(const at::Tensor& gate_up) {
  check_dtype(gate_up, "gate_up");
  TORCH_CHECK(gate_up.dim() == 2 && gate_up.is_contiguous() && gate_up.size(1) % 2 == 0,
              "gate_up must be a contiguous [rows, 2 * intermediate] tensor");
  const int64_t rows = gate_up.size(0), n = gate_up.size(1) / 2;
  auto out = at::empty({rows, n}, gate_up.options());
  dispatch(gate_up.scalar_type(), [&]<typename T>() {
    const T* in = gate_up.data_ptr<T>();
    T* o = out.data_ptr<T>();
    at::parallel_for(0, rows, std::max<int64_t>(1, 16384 / n), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) silu_and_mul_row(in + r * 2 * n, in + r * 2 * n + n, o + r * n, n);
    });
  });
  return out;
}

// x [T, H, D] (rows and heads may be strided, dims contiguous) rotated in place by cos, sin
// [T, D / 2] ("rotate half": dim i pairs with dim i + D / 2)
at::Tensor rotary_(at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  check_dtype(x, "x");
  TORCH_CHECK(x.dim() == 3 && x.stride(2) == 1 && x.size(2) % 2 == 0, "x must be [T, H, D] with contiguous dims");
  const int64_t tokens = x.size(0), heads = x.size(1), half = x.size(2) / 2;
  for (const auto* t : {&cos, &sin}) {
    TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->is_contiguous() && t->dim() == 2 && t->size(0) == tokens &&
                    t->size(1) == half, "cos and sin must be contiguous [T, D / 2] of x's dtype");
  }
  dispatch(x.scalar_type(), [&]<typename T>() {
    T* base = x.data_ptr<T>();
    const T *c = cos.data_ptr<T>(), *s = sin.data_ptr<T>();
    const int64_t row_stride = x.stride(0), head_stride = x.stride(1);
    at::parallel_for(0, tokens, std::max<int64_t>(1, 8192 / (heads * half)), [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        for (int64_t h = 0; h < heads; ++h) rotate_head(base + t * row_stride + h * head_stride, c + t * half, s + t * half, half);
      }
    });
  });
  return x;
}

TORCH_LIBRARY_FRAGMENT(radixrt, m) {
  m.def("silu_and_mul(Tensor gate_up) -> Tensor");
  m.def("rotary_(Tensor(a!) x, Tensor cos, Tensor sin) -> Tensor(a!)");
}

TORCH_LIBRARY_IMPL(radixrt, CPU, m) {
  m.impl("silu_and_mul", &silu_and_mul);
  m.impl("rotary_", &rotary_);
}
