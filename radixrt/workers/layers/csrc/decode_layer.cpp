// The decoder layers of a decode step as one op: per layer norm, q/k/v, rotary, K/V store,
// attention, output projection, norm, gate/up, SiLU-and-multiply, down.
//
// At batch 1 a layer's eleven kernels take ~40 us of a 30-layer model's step each time, and going
// to each of them from Python (the module calls, the dispatcher, the views) cost as much again:
// ~2 ms of a 6-8 ms int8 step on an AMD EPYC. A call per layer from Python still cost ~20 us a
// layer (the loop, the dispatcher boxing a layer's 16 weight tensors, the GIL). So the weights
// are gathered once into a DecodeStack and a step is one call: the same kernels run one after the
// other from C++, on the same inputs, so every layer's output is bit for bit what the modules
// compute; the model runs this op only where every part of every layer has a kernel here.
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
#include <torch/custom_class.h>
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
  const std::vector<Optional>& tensors;  // kTensorsPerLinear per linear
  const std::vector<int64_t>& info;      // kIntsPerLinear per linear

  at::Tensor run(int64_t i, const at::Tensor& x) const {
    const Optional &a = tensors[i * kTensorsPerLinear], &b = tensors[i * kTensorsPerLinear + 1],
                   &bias = tensors[i * kTensorsPerLinear + 2], &c = tensors[i * kTensorsPerLinear + 3];
    const int64_t kind = info[i * kIntsPerLinear], n = info[i * kIntsPerLinear + 1], k = info[i * kIntsPerLinear + 2];
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
      default:
        return at::linear(x, *a, bias);  // TORCH (DecodeStack checked the kinds)
    }
  }
};

// One layer's weights: its two norms and its four linears (qkv, o, gate_up, down).
struct LayerWeights {
  at::Tensor input_norm, post_norm;
  double eps;
  std::vector<Optional> tensors;
  std::vector<int64_t> info;
};

// The step's K and V rows (qkv [T, heads + 2 * kv_heads, D], contiguous) into their pool slots,
// copied as they are: at batch 1 index_copy_'s general machinery took ~7 us of a layer. The pools
// and slots were checked once for the step (check_step).
void store_kv(at::Tensor& k_pool, at::Tensor& v_pool, const at::Tensor& slots, const at::Tensor& qkv, int64_t heads,
              int64_t kv_heads) {
  const int64_t* slot = slots.data_ptr<int64_t>();
  const int64_t size = qkv.element_size(), row = kv_heads * qkv.size(2) * size, qkv_row = qkv.size(1) * qkv.size(2) * size;
  const char* src = static_cast<const char*>(qkv.data_ptr()) + heads * qkv.size(2) * size;
  char* k = static_cast<char*>(k_pool.data_ptr());
  char* v = static_cast<char*>(v_pool.data_ptr());
  for (int64_t t = 0; t < qkv.size(0); ++t) {
    std::memcpy(k + slot[t] * row, src + t * qkv_row, row);
    std::memcpy(v + slot[t] * row, src + t * qkv_row + row, row);
  }
}

// Everything store_kv relies on, for every layer, before the first layer writes: the pools alike
// (contiguous [slots, kv_heads, head_dim] of hidden's dtype) and one slot inside them per token.
void check_step(const std::vector<at::Tensor>& k_pools, const std::vector<at::Tensor>& v_pools, const at::Tensor& hidden,
                const at::Tensor& slots, int64_t kv_heads) {
  const at::Tensor& first = k_pools[0];
  for (size_t l = 0; l < k_pools.size(); ++l)
    TORCH_CHECK(first.dim() == 3 && first.size(1) == kv_heads && k_pools[l].sizes() == first.sizes() &&
                    v_pools[l].sizes() == first.sizes() && k_pools[l].is_contiguous() && v_pools[l].is_contiguous() &&
                    k_pools[l].scalar_type() == hidden.scalar_type() && v_pools[l].scalar_type() == hidden.scalar_type(),
                "layer ", l, ": k_pool and v_pool must be contiguous [slots, kv_heads, head_dim] of hidden's dtype");
  TORCH_CHECK(slots.scalar_type() == at::kLong && slots.dim() == 1 && slots.is_contiguous() &&
                  slots.numel() == hidden.size(0), "out_slots must be one contiguous int64 slot per token");
  const int64_t* slot = slots.data_ptr<int64_t>();
  for (int64_t t = 0; t < slots.numel(); ++t)
    TORCH_CHECK(slot[t] >= 0 && slot[t] < first.size(0), "KV slot ", slot[t], " is outside the pool's ", first.size(0));
}

// What every layer of a step shares: the rows' positions and where their K/V go and come from.
struct StepRows {
  const at::Tensor &cos, &sin, &out_slots, &kv_indices, &kv_starts, &kv_lens;
  double scale;
  int64_t heads, kv_heads, attention, shared_min_requests;
};

// hidden [T, hidden]: the previous layer's MLP output (or the embeddings, with no residual);
// residual [T, hidden], updated in place. Returns (this layer's MLP output, the residual).
std::tuple<at::Tensor, at::Tensor> decode_layer(const at::Tensor& hidden, const Optional& residual,
                                                const LayerWeights& w, at::Tensor& k_pool, at::Tensor& v_pool,
                                                const StepRows& step) {
  const Linears linears{w.tensors, w.info};
  const int64_t tokens = hidden.size(0), dim = k_pool.size(2), heads = step.heads, kv_heads = step.kv_heads;

  at::Tensor res = residual.has_value() ? *residual : hidden;
  at::Tensor h = residual.has_value() ? add_rms_norm_(res, hidden, w.input_norm, w.eps)
                                      : rms_norm(hidden, w.input_norm, w.eps);

  const at::Tensor qkv = linears.run(0, h).view({tokens, heads + 2 * kv_heads, dim});
  at::Tensor rotated = qkv.narrow(1, 0, heads + kv_heads);
  rotary_(rotated, step.cos, step.sin);
  store_kv(k_pool, v_pool, step.out_slots, qkv, heads, kv_heads);
  const at::Tensor q = qkv.narrow(1, 0, heads);
  at::Tensor attended;
  switch (step.attention) {
    case DECODE:
      attended = decode_attention(q, k_pool, v_pool, step.kv_indices, step.kv_starts, step.kv_lens, step.scale);
      break;
    case TILED:
      attended = tiled_decode_attention(q, k_pool, v_pool, step.kv_indices, step.kv_starts, step.kv_lens, step.scale);
      break;
    default:  // SHARED_PREFIX (decode_layers checked the kernel)
      attended = shared_prefix_decode(q, k_pool, v_pool, step.kv_indices, step.kv_starts, step.kv_lens, step.scale,
                                      step.shared_min_requests);
  }

  h = add_rms_norm_(res, linears.run(1, attended), w.post_norm, w.eps);
  const at::Tensor mlp_out = linears.run(3, silu_and_mul(linears.run(2, h)));
  return {mlp_out, res};
}

// The decoder layers' weights, gathered once (layers/fused_decode.py) and checked here, so a step
// checks only what it brings: linear_tensors holds kTensorsPerLinear tensors for each of a layer's
// four linears, layer after layer, and linear_info kIntsPerLinear ints (kind, n, k) for each.
struct DecodeStack : torch::CustomClassHolder {
  std::vector<LayerWeights> layers;
  int64_t heads, kv_heads;

  DecodeStack(std::vector<at::Tensor> input_norms, std::vector<at::Tensor> post_norms, std::vector<double> eps,
              c10::List<Optional> linear_tensors, std::vector<int64_t> linear_info, int64_t heads, int64_t kv_heads)
      : heads(heads), kv_heads(kv_heads) {
    const int64_t count = static_cast<int64_t>(input_norms.size());
    TORCH_CHECK(count > 0 && static_cast<int64_t>(post_norms.size()) == count &&
                    static_cast<int64_t>(eps.size()) == count,
                "DecodeStack takes two norms and an eps for each of at least one layer");
    TORCH_CHECK(static_cast<int64_t>(linear_tensors.size()) == count * kLinears * kTensorsPerLinear &&
                    static_cast<int64_t>(linear_info.size()) == count * kLinears * kIntsPerLinear,
                "DecodeStack takes four linears (qkv, o, gate_up, down) for each layer");
    TORCH_CHECK(heads > 0 && kv_heads > 0 && heads % kv_heads == 0, "heads must be a multiple of kv_heads");
    for (int64_t l = 0; l < count; ++l) {
      LayerWeights w{input_norms[l], post_norms[l], eps[l], {}, {}};
      for (int64_t i = 0; i < kLinears; ++i) {
        const int64_t t = (l * kLinears + i) * kTensorsPerLinear, d = (l * kLinears + i) * kIntsPerLinear;
        for (int64_t j = 0; j < kTensorsPerLinear; ++j) w.tensors.push_back(linear_tensors.get(t + j));
        for (int64_t j = 0; j < kIntsPerLinear; ++j) w.info.push_back(linear_info[d + j]);
        TORCH_CHECK(w.tensors[i * kTensorsPerLinear].has_value(), "layer ", l, " linear ", i, " has no weights");
        const int64_t kind = w.info[i * kIntsPerLinear];
        TORCH_CHECK(kind >= INT8 && kind <= TORCH, "layer ", l, " linear ", i, ": unknown kind ", kind);
      }
      layers.push_back(std::move(w));
    }
  }
};

// Every layer of one decode step over hidden (the embeddings). Returns (the last layer's MLP
// output, the residual).
std::tuple<at::Tensor, at::Tensor> decode_layers(const c10::intrusive_ptr<DecodeStack>& stack,
                                                 const at::Tensor& hidden, const at::Tensor& cos,
                                                 const at::Tensor& sin, std::vector<at::Tensor> k_pools,
                                                 std::vector<at::Tensor> v_pools, const at::Tensor& out_slots,
                                                 const at::Tensor& kv_indices, const at::Tensor& kv_starts,
                                                 const at::Tensor& kv_lens, double scale, int64_t attention,
                                                 int64_t shared_min_requests) {
  const size_t count = stack->layers.size();
  TORCH_CHECK(k_pools.size() == count && v_pools.size() == count, "k_pools and v_pools must hold one pool for each of ",
              count, " layers");
  TORCH_CHECK(attention == DECODE || attention == TILED || attention == SHARED_PREFIX, "unknown attention kernel ",
              attention);
  check_step(k_pools, v_pools, hidden, out_slots, stack->kv_heads);
  const StepRows step{cos,   sin,          out_slots,      kv_indices, kv_starts, kv_lens,
                      scale, stack->heads, stack->kv_heads, attention,  shared_min_requests};
  at::Tensor out = hidden;
  Optional residual;
  for (size_t l = 0; l < count; ++l) {
    auto [mlp_out, res] = decode_layer(out, residual, stack->layers[l], k_pools[l], v_pools[l], step);
    out = std::move(mlp_out);
    residual = std::move(res);
  }
  return {out, *residual};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(radixrt, m) {
  m.class_<DecodeStack>("DecodeStack")
      .def(torch::init<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<double>, c10::List<Optional>,
                       std::vector<int64_t>, int64_t, int64_t>());
  m.def(
      "decode_layers(__torch__.torch.classes.radixrt.DecodeStack stack, Tensor(a!) hidden, Tensor cos, Tensor sin, "
      "Tensor(b!)[] k_pools, Tensor(c!)[] v_pools, Tensor out_slots, Tensor kv_indices, Tensor kv_starts, "
      "Tensor kv_lens, float scale, int attention, int shared_min_requests) -> (Tensor, Tensor(a!))");
}

TORCH_LIBRARY_IMPL(radixrt, CPU, m) { m.impl("decode_layers", &decode_layers); }
