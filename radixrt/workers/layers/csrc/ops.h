// The ops' C++ entry points, for kernels that run other kernels without going through the
// dispatcher (decode_layer.cpp). Each is also registered as a torch op by its own file.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

at::Tensor rms_norm(const at::Tensor& x, const at::Tensor& weight, double eps);
at::Tensor add_rms_norm_(at::Tensor& residual, const at::Tensor& x, const at::Tensor& weight, double eps);
at::Tensor silu_and_mul(const at::Tensor& gate_up);
at::Tensor rotary_(at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool,
                            const at::Tensor& kv_indices, const at::Tensor& kv_starts, const at::Tensor& kv_lens,
                            double scale);
at::Tensor tiled_decode_attention(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool,
                                  const at::Tensor& kv_indices, const at::Tensor& kv_starts, const at::Tensor& kv_lens,
                                  double scale);
at::Tensor shared_prefix_decode(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool,
                                const at::Tensor& kv_indices, const at::Tensor& kv_starts, const at::Tensor& kv_lens,
                                double scale, int64_t min_requests);
at::Tensor packed_linear(const at::Tensor& x, const at::Tensor& packed, int64_t n, int64_t k,
                         const c10::optional<at::Tensor>& bias);
at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& scale, int64_t n,
                       int64_t k, const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& group_scale);
at::Tensor q4_1_linear(const at::Tensor& x, const at::Tensor& packed, int64_t n, int64_t k,
                       const c10::optional<at::Tensor>& bias);
