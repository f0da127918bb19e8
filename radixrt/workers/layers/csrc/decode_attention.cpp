// Decode attention on the CPU, reading K/V in place from the paged pool.
//
// Every decoding request has one query token; it attends over the slots of its whole sequence,
// which are scattered over the pool. Gathering them into a padded batch first (what the pure
// PyTorch path does) copies every K/V row once per layer and then reads it again; here each row
// is read once, straight from the pool, and the padding never exists.
//
// One work item = (request, kv head): its G = num_heads / num_kv_heads query heads share every K
// and V row that is read. Two passes over the sequence: scores (q . k, float32), then the softmax
// weights times V (summed in 256-key spans, decode_rows.h). Every sum runs in a fixed order, so a
// row's result depends only on its own q and sequence, never on the batch or the thread that
// computed it. A batch too small to keep the threads busy has its long sequences cut into those
// spans, which the threads share (attend_by_spans).

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "decode_rows.h"
#include "ops.h"
#include "prompt_rows.h"
#include "work_split.h"

namespace {

using namespace radixrt_decode;

// Batches of single decode rows with fewer (row, kv head) items than twice the threads (batch 1:
// 3 kv heads dealt 2:1 to 2 threads) and a sequence over one span: each item's passes in pieces
// that the threads share, scores and P.V by spans of keys, the softmax by query head, then each
// item's spans added in order. The same arithmetic as attend_one: the same bits.
template <typename T>
void attend_by_spans(const T* q_ptr, int64_t q_row, int64_t q_head, const T* k_ptr, const T* v_ptr,
                     int64_t slot_stride, const int64_t* slots, const int64_t* starts, const int64_t* lens,
                     int64_t batch, int64_t heads, int64_t kv_heads, int64_t dim, float scale, T* out_ptr) {
  const int64_t group = heads / kv_heads, items = batch * kv_heads, width = group * dim;
  const SpanPieces<T> pieces = span_pieces_for<T>(dim, group);
  std::vector<int64_t> offset(items + 1, 0), first_span(items + 1, 0);  // running totals per item
  for (int64_t item = 0; item < items; ++item) {
    const int64_t len = lens[item / kv_heads];
    offset[item + 1] = offset[item] + group * len;
    first_span[item + 1] = first_span[item] + (len + kSpan - 1) / kSpan;
  }
  const int64_t spans = first_span[items];
  std::vector<float> scores(offset[items]), max(items * group), sum(items * group), partial(spans * width);
  const auto for_each_span = [&](auto&& f) {
    at::parallel_for(0, spans, 1, [&](int64_t begin, int64_t end) {
      for (int64_t piece = begin; piece < end; ++piece) {
        const int64_t item = std::upper_bound(first_span.begin(), first_span.end(), piece) - first_span.begin() - 1;
        const int64_t b = item / kv_heads, l0 = (piece - first_span[item]) * kSpan;
        f(piece, item, b, item % kv_heads, l0, std::min(lens[b], l0 + kSpan));
      }
    });
  };
  for_each_span([&](int64_t, int64_t item, int64_t b, int64_t h, int64_t l0, int64_t l1) {
    pieces.score(q_ptr + b * q_row + h * group * q_head, q_head, group, scale, k_ptr, slot_stride, slots + starts[b],
                 lens[b], h, l0, l1, scores.data() + offset[item]);
  });
  at::parallel_for(0, items * group, 1, [&](int64_t begin, int64_t end) {
    for (int64_t v = begin; v < end; ++v) {
      const int64_t item = v / group, len = lens[item / kv_heads];
      exponentiate(scores.data() + offset[item] + (v % group) * len, len, &max[v], &sum[v]);
    }
  });
  for_each_span([&](int64_t piece, int64_t item, int64_t b, int64_t h, int64_t l0, int64_t l1) {
    pieces.values(scores.data() + offset[item], lens[b], group, v_ptr, slot_stride, slots + starts[b], lens[b], h * dim,
                  h * dim, dim * static_cast<int64_t>(sizeof(T)), l0, l1, partial.data() + piece * width);
  });
  std::vector<float> acc(width);
  for (int64_t item = 0; item < items; ++item) {
    const int64_t b = item / kv_heads, h = item % kv_heads;
    std::fill(acc.begin(), acc.end(), 0.f);
    for (int64_t piece = first_span[item]; piece < first_span[item + 1]; ++piece) {
      for (int64_t i = 0; i < width; ++i) acc[i] += partial[piece * width + i];
    }
    normalize_rows(acc.data(), sum.data() + item * group, group, dim, out_ptr + (b * heads + h * group) * dim);
  }
}

// the running cost of the items (run, kv head): query vectors times keys
std::vector<int64_t> run_costs(const std::vector<int64_t>& run_starts, const int64_t* lens, int64_t kv_heads) {
  std::vector<int64_t> cost_before{0};
  for (size_t run = 0; run + 1 < run_starts.size(); ++run) {
    const int64_t b = run_starts[run], rows = run_starts[run + 1] - b;
    for (int64_t h = 0; h < kv_heads; ++h) cost_before.push_back(cost_before.back() + rows * (lens[b] + rows));
  }
  return cost_before;
}

#if defined(RADIXRT_PROMPT_ROWS)
constexpr int64_t kMaxPackedFloats = int64_t{64} << 20;  // 256 MB of packed K/V, else attend_rows
constexpr int64_t kKeptPackedFloats = int64_t{16} << 20;  // packing buffers kept between calls, at most
constexpr int64_t kMinPackedRows = 32;  // a sequence's rows that pay for packing it (see decode_attention_impl)
constexpr int64_t kMinSharingRows = 8;  // ... where most of its keys are packed already (a shared prefix)
constexpr int64_t kRunVectors = kPromptVectors;
#else
constexpr int64_t kRunVectors = kMaxGroup;
#endif

#if defined(RADIXRT_PROMPT_ROWS)
// How many leading keys (a multiple of 16) the sequence (slots b, len_b) may take from the packing
// of (slots a, len_a): their common prefix, when it holds at least half of b's keys, else 0
inline int64_t shared_prefix_keys(const int64_t* a, int64_t len_a, const int64_t* b, int64_t len_b) {
  const int64_t n = std::min(len_a, len_b);
  const int64_t common = std::mismatch(a, a + n, b).first - a;
  const int64_t keys = common / (2 * kKeyLanes) * (2 * kKeyLanes);
  return 2 * keys >= len_b ? keys : 0;
}

// The sequences that the runs of long chains read, packed once per kv head for attend_prompt_rows
// (a run reads its prompt's slots up to its last row's: one sequence per start); seq_of[run] is
// the run's sequence, -1 for runs read in place. False (nothing packed) when the packing would
// pass kMaxPackedFloats. `packed` only grows: its first sequences x kv_heads entries are used.
template <typename T>
bool pack_prompts(const T* k_ptr, const T* v_ptr, int64_t slot_stride, const int64_t* slots, const int64_t* starts,
                  const int64_t* lens, const std::vector<int64_t>& run_starts, const std::vector<bool>& long_chain,
                  int64_t kv_heads, int64_t dim,
                  std::vector<PackedSequence<T>>& packed, std::vector<int64_t>& seq_of) {
  const int64_t runs = static_cast<int64_t>(run_starts.size()) - 1;
  std::vector<int64_t> seq_start, seq_len;
  seq_of.assign(runs, -1);
  for (int64_t run = 0; run < runs; ++run) {
    const int64_t b = run_starts[run], last = run_starts[run + 1] - 1;
    if (!long_chain[b]) continue;
    if (seq_start.empty() || seq_start.back() != starts[b]) {
      seq_start.push_back(starts[b]);
      seq_len.push_back(0);
    }
    seq_of[run] = static_cast<int64_t>(seq_start.size()) - 1;
    seq_len.back() = std::max(seq_len.back(), lens[last]);
  }
  int64_t packed_floats = 0;
  for (const int64_t len : seq_len) packed_floats += kv_heads * (len + kKeyLanes) * dim * (std::is_same_v<T, float> ? 1 : 2);
  if (packed_floats > kMaxPackedFloats) return false;
  const int64_t sequences = static_cast<int64_t>(seq_start.size());
  if (static_cast<int64_t>(packed.size()) < sequences * kv_heads) packed.resize(sequences * kv_heads);
  // a sequence that begins with the slots of the last one packed whole (prompts after a shared
  // prefix: few-shot questions, the choices of a select) takes that prefix from it
  std::vector<int64_t> root(sequences, -1), prefix_keys(sequences, 0);
  for (int64_t sq = 1, whole = 0; sq < sequences; ++sq) {
    const int64_t keys =
        shared_prefix_keys(slots + seq_start[whole], seq_len[whole], slots + seq_start[sq], seq_len[sq]);
    if (keys > 0) {
      root[sq] = whole;
      prefix_keys[sq] = keys;
    } else {
      whole = sq;
    }
  }
  for (const bool sharing : {false, true}) {  // the whole ones first: the others read them
    at::parallel_for(0, sequences * kv_heads, 1, [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t sq = i / kv_heads, h = i % kv_heads;
        if ((root[sq] >= 0) != sharing) continue;
        const PackedSequence<T>* prefix = sharing ? &packed[root[sq] * kv_heads + h] : nullptr;
        packed[i].pack(k_ptr, v_ptr, slot_stride, slots + seq_start[sq], seq_len[sq], h * dim, dim, prefix,
                       prefix_keys[sq]);
      }
    });
  }
  return true;
}
#endif

template <typename T>
void decode_attention_impl(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool,
                           const at::Tensor& kv_indices, const at::Tensor& kv_starts, const at::Tensor& kv_lens,
                           double scale, at::Tensor& out) {
  const int64_t batch = q.size(0), heads = q.size(1), dim = q.size(2);
  const int64_t kv_heads = k_pool.size(1), group = heads / kv_heads;
  const T* q_ptr = q.data_ptr<T>();
  const T* k_ptr = k_pool.data_ptr<T>();
  const T* v_ptr = v_pool.data_ptr<T>();
  const int64_t* slots = kv_indices.data_ptr<int64_t>();
  const int64_t* starts = kv_starts.data_ptr<int64_t>();
  const int64_t* lens = kv_lens.data_ptr<int64_t>();
  T* out_ptr = out.data_ptr<T>();
  const int64_t q_row = q.stride(0), q_head = q.stride(1), slot_stride = k_pool.stride(0);
  const auto attend = attend_for<T>(dim, group);
  const auto attend_several = attend_rows_for<T>(dim);
  // A chain: consecutive rows of one sequence, row b + 1 reading the slots of row b and one more (a
  // prompt's rows, or a decoding request's token and its drafts). Runs of a chain's rows are
  // attended together, up to max_vectors query vectors (long chains) or kMaxGroup (others): their
  // K/V rows are read once.
  const auto chained = [&](int64_t b) { return b > 0 && starts[b] == starts[b - 1] && lens[b] == lens[b - 1] + 1; };
  const auto runs_of = [&](int64_t max_vectors, const std::vector<bool>& long_chain) {
    std::vector<int64_t> run_starts;
    for (int64_t b = 0; b < batch; ++b) {
      const int64_t max_run = std::max<int64_t>(1, (long_chain[b] ? max_vectors : kMaxGroup) / group);
      if (!(chained(b) && b - run_starts.back() < max_run)) run_starts.push_back(b);
    }
    return run_starts;
  };
  std::vector<bool> long_chain(batch, false);
  std::vector<int64_t> run_starts = runs_of(kMaxGroup, long_chain);
  const int64_t runs = static_cast<int64_t>(run_starts.size());
  if (runs == batch && runs * kv_heads < 2 * at::get_num_threads() && *std::max_element(lens, lens + batch) > kSpan) {
    attend_by_spans<T>(q_ptr, q_row, q_head, k_ptr, v_ptr, slot_stride, slots, starts, lens, batch, q.size(1), kv_heads,
                       dim, static_cast<float>(scale), out_ptr);
    return;
  }
  // On AVX2 builds runs grow to kPromptVectors and read their sequence packed (prompt_rows.h)
#if defined(RADIXRT_PROMPT_ROWS)
  // kept from call to call on the calling thread: packing then writes memory that is already
  // mapped (fresh buffers cost as much as the packing itself). The lambdas below run on other
  // threads, so they reach it through this reference, never by its thread_local name.
  thread_local std::vector<PackedSequence<T>> kept_packed;
  std::vector<PackedSequence<T>>& packed = kept_packed;
  bool any_packed = false;
  std::vector<int64_t> seq_of;
  const auto attend_packed = attend_prompt_rows_for<T>(dim);
  // Packing reads and writes a sequence's keys, which a decoding request's few drafts or a short
  // extend never pay back: their runs read K/V in place. So only chains of kMinPackedRows rows or
  // more are packed, and chains of kMinSharingRows or more whose keys come mostly from a prefix
  // they share with the chain that began their family (packed once for all of them, with it).
  // Measured on an AVX2 AMD EPYC (bf16, 9 heads / 3 kv heads, dim 64, 2 threads), ms per call packed
  // / in place: 10 chains over 2,000 slots of their own, 8 rows 7.1 / 5.7, 16 rows 13.3 / 14.0, 24
  // rows 20.9 / 22.1; 32 chains over one shared 1,300-slot prefix, 8 rows 7.5 / 15.1, 16 rows 19.0 /
  // 23.0, 20 rows 19.1 / 31.0; before packing was vectorized and shared, 2 rows (a token and one
  // draft) over 3,000 slots 14.9 / 2.4. Lower thresholds chosen at start from such timings (16, and
  // 4 after a shared prefix, where packing measured 5-20% faster on repeated calls) made the bench's
  // react 10% slower (5 alternating pairs): in a forward each layer's K/V is cold, so packing's extra
  // pass costs more than on repeated calls over the same keys.
  bool any_long = false;
  const auto mark = [&](int64_t first, int64_t end) {
    std::fill(long_chain.begin() + first, long_chain.begin() + end, true);
    any_long = true;
  };
  int64_t family = -1, family_end = -1;  // the rows of the chain that began the current family
  for (int64_t b = 0, first = 0; b <= batch; ++b) {
    if (b < batch && chained(b)) continue;
    const int64_t rows = b - first;
    if (rows >= kMinSharingRows) {
      const bool shares = family >= 0 &&
                          shared_prefix_keys(slots + starts[family], lens[family_end - 1], slots + starts[first],
                                             lens[b - 1]) > 0;
      if (shares) {
        mark(family, family_end);
        mark(first, b);
      } else {
        family = first;
        family_end = b;
      }
    }
    if (rows >= kMinPackedRows) mark(first, b);
    first = b;
  }
  if (any_long) {
    std::vector<int64_t> longer = runs_of(kPromptVectors, long_chain);
    longer.push_back(batch);
    if (pack_prompts<T>(k_ptr, v_ptr, slot_stride, slots, starts, lens, longer, long_chain, kv_heads, dim, packed,
                        seq_of)) {
      any_packed = true;
      longer.pop_back();
      run_starts = std::move(longer);
    }
  }
#endif
  run_starts.push_back(batch);
  // items (run, kv head) cost their query vectors times their keys: a prompt's later rows cost
  // more, so the threads take runs of equal cost rather than equal count
  struct Scratch {
    std::vector<float> scores;
    float acc[kRunVectors * 256], max[kRunVectors], sum[kRunVectors];
  };
  radixrt_work::for_each_by_cost<Scratch>(run_costs(run_starts, lens, kv_heads), [&](int64_t item, Scratch& s) {
    const int64_t run = item / kv_heads, h = item % kv_heads, b = run_starts[run], rows = run_starts[run + 1] - b;
    const T* qb = q_ptr + b * q_row + h * group * q_head;
    const float sc = static_cast<float>(scale);
    if (rows == 1) {
      attend(qb, q_head, k_ptr, v_ptr, slot_stride, slots + starts[b], lens[b], h, group, sc, s.acc, s.max, s.sum,
             s.scores);
#if defined(RADIXRT_PROMPT_ROWS)
    } else if (any_packed && seq_of[run] >= 0) {
      attend_packed(qb, q_head, q_row, group, rows, packed[seq_of[run] * kv_heads + h], lens[b], sc, s.acc, s.max, s.sum,
                    s.scores);
#endif
    } else {
      attend_several(qb, q_head, q_row, group, rows, k_ptr, v_ptr, slot_stride, slots + starts[b], lens[b], h, sc, s.acc,
                     s.max, s.sum, s.scores);
    }
    for (int64_t r = 0; r < rows; ++r)
      normalize_rows(s.acc + r * group * dim, s.sum + r * group, group, dim, out_ptr + ((b + r) * heads + h * group) * dim);
  });
#if defined(RADIXRT_PROMPT_ROWS)
  int64_t kept = 0;
  for (const auto& seq : packed) kept += seq.floats();
  if (kept > kKeptPackedFloats) std::vector<PackedSequence<T>>().swap(packed);
#endif
}

}  // namespace

// q [B, H, D] (rows and heads may be strided, dims contiguous); k_pool, v_pool [slots, Hkv, D]
// contiguous; request b attends over kv_indices[kv_starts[b] : kv_starts[b] + kv_lens[b]], at
// least one slot each. Returns [B, H * D] in q's dtype.
at::Tensor decode_attention(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool,
                            const at::Tensor& kv_indices, const at::Tensor& kv_starts, const at::Tensor& kv_lens,
                            double scale) {
  TORCH_CHECK(q.device().is_cpu() && k_pool.device().is_cpu() && v_pool.device().is_cpu(), "CPU tensors only");
  TORCH_CHECK(q.dim() == 3 && k_pool.dim() == 3, "q must be [B, H, D] and the pools [slots, Hkv, D]");
  TORCH_CHECK(q.stride(2) == 1, "q's head dim must be contiguous");
  TORCH_CHECK(k_pool.is_contiguous() && v_pool.is_contiguous() && k_pool.sizes() == v_pool.sizes(),
              "k and v pools must be contiguous and of one shape");
  TORCH_CHECK(q.scalar_type() == k_pool.scalar_type() && q.scalar_type() == v_pool.scalar_type(),
              "q, k and v must share a dtype");
  const int64_t dim = q.size(2), group = q.size(1) / k_pool.size(1);
  TORCH_CHECK(dim == k_pool.size(2) && q.size(1) % k_pool.size(1) == 0, "head shapes do not match");
  TORCH_CHECK(group <= kMaxGroup, "at most ", kMaxGroup, " query heads per kv head");
  TORCH_CHECK(dim % 16 == 0, "head_dim ", dim, " is not one of 16, 32, 64, 80, 96, 128, 256");
  for (const auto* t : {&kv_indices, &kv_starts, &kv_lens}) {
    TORCH_CHECK(t->scalar_type() == at::kLong && t->is_contiguous(), "indices must be contiguous int64");
  }
  TORCH_CHECK(kv_starts.numel() == q.size(0) && kv_lens.numel() == q.size(0), "one start and length per row");
  const int64_t* starts = kv_starts.data_ptr<int64_t>();
  const int64_t* lens = kv_lens.data_ptr<int64_t>();
  for (int64_t b = 0; b < q.size(0); ++b) {
    TORCH_CHECK(lens[b] > 0 && starts[b] >= 0 && starts[b] + lens[b] <= kv_indices.numel(), "row ", b,
                ": its slots must be a non-empty range of kv_indices");
  }
  auto out = at::empty({q.size(0), q.size(1) * dim}, q.options());
  switch (q.scalar_type()) {
    case at::kBFloat16:
      decode_attention_impl<at::BFloat16>(q, k_pool, v_pool, kv_indices, kv_starts, kv_lens, scale, out);
      break;
    case at::kFloat:
      decode_attention_impl<float>(q, k_pool, v_pool, kv_indices, kv_starts, kv_lens, scale, out);
      break;
    default:
      TORCH_CHECK(false, "decode_attention supports bfloat16 and float32, got ", q.scalar_type());
  }
  return out;
}

// A torch op (torch.ops.radixrt.decode_attention): it shows in profiles like any other op.
TORCH_LIBRARY_FRAGMENT(radixrt, m) {
  m.def(
      "decode_attention(Tensor q, Tensor k_pool, Tensor v_pool, Tensor kv_indices, Tensor kv_starts, "
      "Tensor kv_lens, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(radixrt, CPU, m) { m.impl("decode_attention", &decode_attention); }
