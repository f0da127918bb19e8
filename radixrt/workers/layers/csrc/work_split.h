// Sharing work items of unequal cost (a causal prompt's later rows attend over more keys) out to
// torch's threads. Who runs an item never changes its result.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace radixrt_work {

// body(index, scratch) for every work item, on torch's threads, each thread taking a contiguous
// run of items of about equal cost (cost_before: the running sum of the items' costs, from 0) and
// a Scratch of its own.
template <typename Scratch, typename Body>
void for_each_by_cost(const std::vector<int64_t>& cost_before, const Body& body) {
  const int64_t items = static_cast<int64_t>(cost_before.size()) - 1;
  const int64_t shares = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), items));
  const int64_t total = cost_before.back();
  auto first_item = [&](int64_t share) {  // the first item whose cost starts at or past share's part
    return std::lower_bound(cost_before.begin(), cost_before.end() - 1, total * share / shares) - cost_before.begin();
  };
  at::parallel_for(0, shares, 1, [&](int64_t share_begin, int64_t share_end) {
    Scratch scratch;
    for (int64_t index = first_item(share_begin), stop = first_item(share_end); index < stop; ++index) body(index, scratch);
  });
}

}  // namespace radixrt_work
