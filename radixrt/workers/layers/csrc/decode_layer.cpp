// One decoder layer of a decode step as one op: norm, q/k/v, rotary, K/V store, attention,
// output projection, norm, gate/up, SiLU-and-multiply, down.
//
// At batch 1 the layer's eleven kernels take ~40 us of a 30-layer model's step each time, and
// going to each of them from Python (the module calls, the dispatcher, the views) cost as much
// again: ~2 ms of a 6-8 ms int8 step on an AMD EPYC. Here the same kernels run one after the
// other from C++, on the same inputs, so the layer's output is bit for bit what the modules
// compute; the model runs this op only where every part of the layer has a kernel here.
//
// A linear is described by three ints (kind, n, k) and four optional tensors:
//   INT8     packed, scale or group_scale, bias      (int8_linear: --quantization int8, GGUF Q8_0)
//   Q4_1     packed, bias                            (q4_1_linear: GGUF Q4_1)
//   PACKED   packed, bias                            (packed_linear: our bf16 / float32 kernel)
//   ATEN     weight, bias                            (F.linear with oneDNN off: ATen's kernels)
//   ONEDNN   oneDNN-packed weight, bias              (mkldnn::_linear_pointwise)
//   TORCH    weight, bias                            (F.linear as torch runs it: a plain nn.Linear)

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "ops.h"

namespace {

enum LinearKind : int64_t { INT8 = 0, Q4_1 = 1, PACKED = 2, ATEN = 3, ONEDNN = 4, TORCH = 5 };
enum Attention : int64_t { DECODE = 0, TILED = 1, SHARED_PREFIX = 2 };  // which decode kernel attends
constexpr int64_t kLinears = 4;  // qkv, o, gate_up, down
constexpr int64_t kTensorsPerLinear = 4;
constexpr int64_t kIntsPerLinear = 3;

using Optional = c10::optional<at::Tensor>;

at::Tensor onednn_linear(const at::Tensor& x, const at::Tensor& packed, const Optional& bias) {
  static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
  // NOTE: oneDNN's one-row kernel splits the reduction differently from its multi-row ones; as two
  // rows a row gets what it gets in a larger batch (layers/linear_candidates.py does the same)
  const bool one_row = x.size(0) == 1;
  std::vector<c10::IValue> stack{one_row ? x.repeat({2, 1}) : x, packed, bias, c10::string_view("none"),
                                 c10::List<c10::optional<c10::Scalar>>(), c10::optional<c10::string_view>("")};
  op.callBoxed(&stack);
  at::Tensor y = stack.back().toTensor();
  return one_row ? y.narrow(0, 0, 1) : y;
}

at::Tensor aten_linear(const at::Tensor& x, const at::Tensor& weight, const Optional& bias) {
  auto& context = at::globalContext();
  const bool enabled = context.userEnabledMkldnn();
  context.setUserEnabledMkldnn(false);
  at::Tensor y;
  try {
    y = at::linear(x, weight, bias);
  } catch (...) {
    context.setUserEnabledMkldnn(enabled);
    throw;
  }
  context.setUserEnabledMkldnn(enabled);
  return y;
}

struct Linears {
  const c10::List<Optional>& tensors;
  const std::vector<int64_t>& info;

  at::Tensor run(int64_t i, const at::Tensor& x) const {
    const Optional a = tensors.get(i * kTensorsPerLinear), b = tensors.get(i * kTensorsPerLinear + 1),
                   bias = tensors.get(i * kTensorsPerLinear + 2), c = tensors.get(i * kTensorsPerLinear + 3);
    const int64_t kind = info[i * kIntsPerLinear], n = info[i * kIntsPerLinear + 1], k = info[i * kIntsPerLinear + 2];
    TORCH_CHECK(a.has_value(), "linear ", i, " has no weights");
    switch (kind) {
      case INT8:
        return int8_linear(x, *a, b, n, k, bias, c);
      case Q4_1:
        return q4_1_linear(x, *a, n, k, bias);
      case PACKED:
        return packed_linear(x, *a, n, k, bias);
      case ATEN:
        return aten_linear(x, *a, bias);
      case ONEDNN:
        return onednn_linear(x, *a, bias);
      case TORCH:
        return at::linear(x, *a, bias);
      default:
        TORCH_CHECK(false, "linear ", i, ": unknown kind ", kind);
    }
  }
};

// The step's K and V rows (qkv [T, heads + 2 * kv_heads, D], contiguous) into their pool slots,
// copied as they are: at batch 1 index_copy_'s general machinery took ~7 us of a layer.
void store_kv(at::Tensor& k_pool, at::Tensor& v_pool, const at::Tensor& slots, const at::Tensor& qkv, int64_t heads,
              int64_t kv_heads) {
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.dim() == 1 && slots.is_contiguous() &&
                  slots.numel() == qkv.size(0), "out_slots must be one contiguous int64 slot per token");
  TORCH_CHECK(qkv.is_contiguous() && k_pool.is_contiguous() && v_pool.is_contiguous() &&
                  k_pool.sizes() == v_pool.sizes() && k_pool.scalar_type() == qkv.scalar_type() &&
                  v_pool.scalar_type() == qkv.scalar_type() && k_pool.size(2) == qkv.size(2),
              "k_pool and v_pool must be contiguous [slots, kv_heads, head_dim] of qkv's dtype");
  const int64_t* slot = slots.data_ptr<int64_t>();
  const int64_t tokens = qkv.size(0), capacity = k_pool.size(0);
  for (int64_t t = 0; t < tokens; ++t)
    TORCH_CHECK(slot[t] >= 0 && slot[t] < capacity, "KV slot ", slot[t], " is outside the pool's ", capacity);
  const int64_t size = qkv.element_size(), row = kv_heads * qkv.size(2) * size, qkv_row = qkv.size(1) * qkv.size(2) * size;
  const char* src = static_cast<const char*>(qkv.data_ptr()) + heads * qkv.size(2) * size;
  char* k = static_cast<char*>(k_pool.data_ptr());
  char* v = static_cast<char*>(v_pool.data_ptr());
  for (int64_t t = 0; t < tokens; ++t) {
    std::memcpy(k + slot[t] * row, src + t * qkv_row, row);
    std::memcpy(v + slot[t] * row, src + t * qkv_row + row, row);
  }
}

// hidden [T, hidden]: the previous layer's MLP output (or the embeddings, with no residual);
// residual [T, hidden], updated in place. Returns (this layer's MLP output, the residual).
std::tuple<at::Tensor, at::Tensor> decode_layer(const at::Tensor& hidden, const Optional& residual,
                                                const at::Tensor& input_norm, const at::Tensor& post_norm, double eps,
                                                const c10::List<Optional>& linear_tensors,
                                                std::vector<int64_t> linear_info, const at::Tensor& cos,
                                                const at::Tensor& sin, at::Tensor& k_pool, at::Tensor& v_pool,
                                                const at::Tensor& out_slots, const at::Tensor& kv_indices,
                                                const at::Tensor& kv_starts, const at::Tensor& kv_lens, double scale,
                                                int64_t heads, int64_t kv_heads, int64_t attention,
                                                int64_t shared_min_requests) {
  TORCH_CHECK(static_cast<int64_t>(linear_tensors.size()) == kLinears * kTensorsPerLinear &&
                  static_cast<int64_t>(linear_info.size()) == kLinears * kIntsPerLinear,
              "decode_layer takes four linears (qkv, o, gate_up, down)");
  TORCH_CHECK(k_pool.dim() == 3 && k_pool.size(1) == kv_heads, "k_pool must be [slots, kv_heads, head_dim]");
  const Linears linears{linear_tensors, linear_info};
  const int64_t tokens = hidden.size(0), dim = k_pool.size(2);

  at::Tensor res = residual.has_value() ? *residual : hidden;
  at::Tensor h = residual.has_value() ? add_rms_norm_(res, hidden, input_norm, eps) : rms_norm(hidden, input_norm, eps);

  const at::Tensor qkv = linears.run(0, h).view({tokens, heads + 2 * kv_heads, dim});
  at::Tensor rotated = qkv.narrow(1, 0, heads + kv_heads);
  rotary_(rotated, cos, sin);
  store_kv(k_pool, v_pool, out_slots, qkv, heads, kv_heads);
  const at::Tensor q = qkv.narrow(1, 0, heads);
  at::Tensor attended;
  switch (attention) {
    case DECODE:
      attended = decode_attention(q, k_pool, v_pool, kv_indices, kv_starts, kv_lens, scale);
      break;
    case TILED:
      attended = tiled_decode_attention(q, k_pool, v_pool, kv_indices, kv_starts, kv_lens, scale);
      break;
    case SHARED_PREFIX:
      attended = shared_prefix_decode(q, k_pool, v_pool, kv_indices, kv_starts, kv_lens, scale, shared_min_requests);
      break;
    default:
      TORCH_CHECK(false, "unknown attention kernel ", attention);
  }

  h = add_rms_norm_(res, linears.run(1, attended), post_norm, eps);
  const at::Tensor mlp_out = linears.run(3, silu_and_mul(linears.run(2, h)));
  return {mlp_out, res};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(radixrt, m) {
  m.def(
      "decode_layer(Tensor hidden, Tensor(a!)? residual, Tensor input_norm, Tensor post_norm, float eps, "
      "Tensor?[] linear_tensors, int[] linear_info, Tensor cos, Tensor sin, Tensor(b!) k_pool, Tensor(c!) v_pool, "
      "Tensor out_slots, Tensor kv_indices, Tensor kv_starts, Tensor kv_lens, float scale, int heads, int kv_heads, "
      "int attention, int shared_min_requests) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(radixrt, CPU, m) { m.impl("decode_layer", &decode_layer); }
// a oneDNN-reordered weight is an MkldnnCPU tensor: an argument list holding one dispatches there
TORCH_LIBRARY_IMPL(radixrt, MkldnnCPU, m) { m.impl("decode_layer", &decode_layer); }
