// Decode attention for requests that share a cached prefix (wide forks, the n samples of one
// prompt, conversations after one system prompt), bf16 on AVX512-BF16 CPUs.
//
// decode_attention.cpp attends each request alone: every request reads its whole sequence, and
// each key meets only the request's G query heads, in float32 FMAs. Here the requests' 64-key
// tiles are deduplicated (bf16_tiles.h) and arranged as a trie: a node is a run of tiles that the
// same set of at least `min_requests` requests lists at the same place. The query vectors of all
// of a node's requests walk its tiles together, kBlock at a time, with the bf16 dot-product
// instruction: a prefix shared by 36 forks is read once per block of 4 vectors instead of once per
// request and head. The rest of each sequence (what fewer requests share) is read in place by
// decode_attention's loop. Each part leaves a partial softmax per vector (max, sum, weighted V); a
// request's partials are merged root to leaf.
// Packing tiles costs about as much as a few requests' passes over them, so sharing pays from
// about 8 requests on (attention of the embedded model, 6 forks of a 400-token prefix with 60
// tokens each of their own: 15% slower shared; 18 forks: 31% faster).
// A row's result depends on which requests of the batch share its tiles (the trie), not only on
// its own sequence: the same attention in another order of float32 sums.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <map>
#include <vector>

#include "bf16_tiles.h"
#include "decode_rows.h"
#include "ops.h"

#if defined(__AVX512BF16__)

namespace {

using namespace radixrt_tiles;

// A run of tiles [first_tile, first_tile + tiles) that every member lists at that place.
struct Node {
  int64_t first_tile, tiles, keys;
  std::vector<int64_t> members;  // requests, in batch order
  int64_t first_record = 0;      // partial of (member m, head h): first_record + m * heads + h
};

// Each request's path of (node, place among its members) from the root; a request's tiles are
// the concatenation of its path's runs.
struct Trie {
  std::vector<Node> nodes;
  std::vector<std::vector<std::pair<int64_t, int64_t>>> paths;

  Trie(const TilePlan& plan, int64_t requests, int64_t min_requests) : paths(requests) {
    auto tiles_of = [&](int64_t i) { return plan.first[i + 1] - plan.first[i]; };
    auto id = [&](int64_t i, int64_t t) { return plan.ids[plan.first[i] + t]; };
    struct Pending {
      std::vector<int64_t> members;
      int64_t place;  // the members list the same tiles before this place, and all have more
    };
    std::vector<Pending> stack(1);
    for (int64_t i = 0; i < requests; ++i) stack[0].members.push_back(i);
    while (!stack.empty()) {
      Pending pending = std::move(stack.back());
      stack.pop_back();
      const std::vector<int64_t>& members = pending.members;
      const int64_t count = static_cast<int64_t>(members.size());
      if (count == 0) continue;  // an empty batch
      if (count > 1 && count < min_requests) {  // too few to pay for packing: one node each
        for (const int64_t i : members) stack.push_back({{i}, pending.place});
        continue;
      }
      int64_t end = pending.place;
      while (std::all_of(members.begin(), members.end(), [&](int64_t i) {
        return tiles_of(i) > end && id(i, end) == id(members[0], end);
      })) {
        ++end;
      }
      if (end > pending.place) {
        Node node{pending.place, end - pending.place, 0, members};
        for (int64_t t = pending.place; t < end; ++t) node.keys += plan.tile_keys[id(members[0], t)];
        for (int64_t m = 0; m < static_cast<int64_t>(members.size()); ++m) {
          paths[members[m]].emplace_back(static_cast<int64_t>(nodes.size()), m);
        }
        nodes.push_back(std::move(node));
      }
      std::map<int64_t, std::vector<int64_t>> by_next_tile;  // ordered: the same trie for the same batch
      for (const int64_t i : members) {
        if (tiles_of(i) > end) by_next_tile[id(i, end)].push_back(i);
      }
      for (auto& entry : by_next_tile) stack.push_back({std::move(entry.second), end});
    }
  }
};

template <int DIM>
void decode_shared(const uint16_t* q, int64_t q_row, int64_t q_head, const uint16_t* k_pool, const uint16_t* v_pool,
                   int64_t slot_stride, const int64_t* slots, const Requests& reqs, int64_t heads, int64_t kv_heads,
                   float scale, int64_t min_requests, at::BFloat16* out) {
  constexpr int R = kBlock<DIM>;
  const int64_t group = heads / kv_heads;
  const TilePlan plan(slots, reqs);
  Trie trie(plan, reqs.count, min_requests);

  // Work items, each costing the tiles it walks: (node, kv head, block of R of its members' query
  // vectors) for a node of several requests, over its packed tiles; (node, kv head) for a node of
  // one request, the rest of its sequence, which decode_attention's loop reads in place.
  struct Item {
    int64_t node, h, block;
  };
  std::vector<Item> items;
  std::vector<int64_t> cost_before{0};
  std::vector<int64_t> to_pack, packed_at(plan.tile_slots.size(), -1);
  int64_t records = 0;
  for (int64_t n = 0; n < static_cast<int64_t>(trie.nodes.size()); ++n) {
    Node& node = trie.nodes[n];
    const int64_t members = static_cast<int64_t>(node.members.size());
    node.first_record = records;
    records += members * heads;
    const int64_t blocks = members == 1 ? 1 : (members * group + R - 1) / R;
    for (int64_t h = 0; h < kv_heads; ++h) {
      for (int64_t block = 0; block < blocks; ++block) {
        items.push_back({n, h, block});
        cost_before.push_back(cost_before.back() + 1 + node.tiles);
      }
    }
    if (members == 1) continue;
    const int64_t* ids = plan.ids.data() + plan.first[node.members[0]] + node.first_tile;
    for (int64_t t = 0; t < node.tiles; ++t) {
      if (packed_at[ids[t]] < 0) {
        packed_at[ids[t]] = static_cast<int64_t>(to_pack.size());
        to_pack.push_back(ids[t]);
      }
    }
  }
  const uint32_t* packed = pack_tiles<DIM>(plan, to_pack, k_pool, v_pool, slot_stride, kv_heads);
  const int64_t packed_count = static_cast<int64_t>(to_pack.size());
  const auto attend_rows = radixrt_decode::attend_for<at::BFloat16>(DIM, group);
  const auto* k_rows = reinterpret_cast<const at::BFloat16*>(k_pool);
  const auto* v_rows = reinterpret_cast<const at::BFloat16*>(v_pool);

  // The partial results of every (node, member, head): weighted V, then max, then sum. Kept
  // between calls on the calling thread (grown, never shrunk): a forward's layers reuse warm pages.
  thread_local std::vector<float> buffer;
  if (static_cast<int64_t>(buffer.size()) < records * (DIM + 2)) buffer.resize(records * (DIM + 2));
  float* const partial = buffer.data();  // (the workers below have thread_locals of their own)
  float* const partial_max = partial + records * DIM;
  float* const partial_sum = partial_max + records;
  struct Scratch : BlockScratch<DIM> {
    std::vector<float> scores;  // decode_attention's loop
  };
  for_each_by_cost<Scratch>(cost_before, [&](int64_t index, Scratch& block) {
    const Item& item = items[index];
    const Node& node = trie.nodes[item.node];
    if (node.members.size() == 1) {  // heads h * group .. + group of one request: consecutive records
      const int64_t i = node.members[0], skipped = node.first_tile * kTile;
      const int64_t record = node.first_record + item.h * group;
      attend_rows(reinterpret_cast<const at::BFloat16*>(q + reqs.q_starts[i] * q_row + item.h * group * q_head), q_head,
                  k_rows, v_rows, slot_stride, slots + reqs.kv_starts[i] + skipped, reqs.seq_lens[i] - skipped, item.h,
                  group, scale, partial + record * DIM, partial_max + record, partial_sum + record, block.scores);
      return;
    }
    const int64_t vectors = static_cast<int64_t>(node.members.size()) * group;
    const int64_t* ids = plan.ids.data() + plan.first[node.members[0]] + node.first_tile;
    block.tiles.clear();
    for (int64_t t = 0; t < node.tiles; ++t) {
      block.tiles.push_back(packed + (item.h * packed_count + packed_at[ids[t]]) * tile_words<DIM>);
    }
    for (int r = 0; r < R; ++r) {
      const int64_t v = std::min(item.block * R + r, vectors - 1);  // padding repeats the last vector
      const int64_t request = node.members[v / group], head = item.h * group + v % group;
      pack_query<DIM>(q + reqs.q_starts[request] * q_row + head * q_head, scale, block.qv + r * DIM / 2);
      block.limit[r] = node.keys;
    }
    block.attend();
    for (int r = 0; r < R && item.block * R + r < vectors; ++r) {
      const int64_t v = item.block * R + r, head = item.h * group + v % group;
      const int64_t record = node.first_record + (v / group) * heads + head;
      std::copy(block.result + r * DIM, block.result + (r + 1) * DIM, partial + record * DIM);
      partial_max[record] = block.max[r];
      partial_sum[record] = block.sum[r];
    }
  });

  // each (request, head): its path's partials, rescaled to their common max, summed root to leaf
  at::parallel_for(0, reqs.count * heads, 16, [&](int64_t begin, int64_t end) {
    float merged[DIM];
    for (int64_t item = begin; item < end; ++item) {
      const int64_t i = item / heads, head = item % heads;
      auto record_of = [&](const std::pair<int64_t, int64_t>& step) {
        return trie.nodes[step.first].first_record + step.second * heads + head;
      };
      float top = -INFINITY;
      for (const auto& step : trie.paths[i]) top = std::max(top, partial_max[record_of(step)]);
      float total = 0.f;
      std::fill(merged, merged + DIM, 0.f);
      for (const auto& step : trie.paths[i]) {
        const int64_t record = record_of(step);
        const float weight = std::exp(partial_max[record] - top);
        total += partial_sum[record] * weight;
        const float* acc = partial + record * DIM;
        for (int d = 0; d < DIM; ++d) merged[d] += acc[d] * weight;
      }
      radixrt_decode::normalize_rows(merged, &total, 1, DIM, out + (reqs.q_starts[i] * heads + head) * DIM);
    }
  });
}

}  // namespace
#endif

// decode_attention's arguments and result: q [B, H, D] bf16 (rows and heads may be strided, dims
// contiguous); k_pool, v_pool [slots, Hkv, D]; request b attends over
// kv_indices[kv_starts[b] : kv_starts[b] + kv_lens[b]]. Returns [B, H * D] bf16. Tiles are shared
// where at least min_requests (>= 2) requests list them.
at::Tensor shared_prefix_decode(const at::Tensor& q, const at::Tensor& k_pool, const at::Tensor& v_pool,
                                const at::Tensor& kv_indices, const at::Tensor& kv_starts, const at::Tensor& kv_lens,
                                double scale, int64_t min_requests) {
#if defined(__AVX512BF16__)
  radixrt_tiles::check_tile_inputs(q, k_pool, v_pool, "shared_prefix_decode");
  radixrt_tiles::check_decode_rows(q, kv_indices, kv_starts, kv_lens);
  const int64_t batch = q.size(0), dim = q.size(2), heads = q.size(1), kv_heads = k_pool.size(1);
  TORCH_CHECK(heads / kv_heads <= radixrt_decode::kMaxGroup, "at most ", radixrt_decode::kMaxGroup,
              " query heads per kv head");
  TORCH_CHECK(min_requests >= 2, "min_requests must be at least 2, got ", min_requests);
  const int64_t *starts = kv_starts.data_ptr<int64_t>(), *lens = kv_lens.data_ptr<int64_t>();
  auto out = at::empty({batch, heads * dim}, q.options());
  const auto rows = at::arange(batch, kv_starts.options());
  const auto ones = at::ones({batch}, kv_starts.options());
  const Requests reqs{rows.data_ptr<int64_t>(), ones.data_ptr<int64_t>(), starts, lens, batch};
  auto run = dim == 64 ? decode_shared<64> : decode_shared<128>;
  run(reinterpret_cast<const uint16_t*>(q.data_ptr<at::BFloat16>()), q.stride(0), q.stride(1),
      reinterpret_cast<const uint16_t*>(k_pool.data_ptr<at::BFloat16>()),
      reinterpret_cast<const uint16_t*>(v_pool.data_ptr<at::BFloat16>()), k_pool.stride(0),
      kv_indices.data_ptr<int64_t>(), reqs, heads, kv_heads, static_cast<float>(scale), min_requests,
      out.data_ptr<at::BFloat16>());
  return out;
#else
  TORCH_CHECK(false, "shared_prefix_decode needs a CPU with AVX512-BF16");
#endif
}

TORCH_LIBRARY_FRAGMENT(radixrt, m) {
  m.def(
      "shared_prefix_decode(Tensor q, Tensor k_pool, Tensor v_pool, Tensor kv_indices, Tensor kv_starts, "
      "Tensor kv_lens, float scale, int min_requests) -> Tensor");
}

TORCH_LIBRARY_IMPL(radixrt, CPU, m) { m.impl("shared_prefix_decode", &shared_prefix_decode); }
