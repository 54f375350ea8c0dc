// An inference stack call (forward.h, bf16_forward.h, q8_forward.h) whose batch carries lengths in no particular
// order, run longest first: with the rows sorted so, the rows still valid at a step are a prefix (args.h,
// StepRows), and each step's products skip the rows already padded. x, h0, c0 and lengths are gathered in that
// order, the stack runs on them, and out, h_n, c_n are scattered back to the caller's rows. Rows never interact and
// a row's values do not depend on which rows share its products, so only the order of the work changes.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>
#include <vector>

#include "scratch.h"

namespace birnn {

// S: any of the stack Args (fields steps, batch, hidden, layers, x, lengths, h0, c0 (null without a cell state),
// out, h_n, c_n, input_sizes, merges, with merge codes 0 concat and 4 None keeping both directions); run(S') runs
// the stack on S' (S with the pointers of the sorted copies).
template <typename A, typename Run>
void run_longest_first(const A& S, Run run) {
  const int B = S.batch, H = S.hidden, steps = S.steps;
  const int64_t* lengths = S.lengths;
  if (lengths == nullptr || B < 2 || std::is_sorted(lengths, lengths + B, std::greater<int64_t>())) {
    run(S);
    return;
  }
  using T = typename std::remove_const<typename std::remove_pointer<decltype(S.x)>::type>::type;
  std::vector<int> order(B);
  for (int b = 0; b < B; ++b) order[b] = b;
  std::stable_sort(order.begin(), order.end(), [lengths](int i, int j) { return lengths[i] > lengths[j]; });
  std::vector<int64_t> sorted_lengths(B);
  for (int b = 0; b < B; ++b) sorted_lengths[b] = lengths[order[b]];
  const bool cell_state = S.c0 != nullptr;
  const int F = S.input_sizes[0], last = S.merges[S.layers - 1];
  const int width = last == 0 || last == 4 ? 2 * H : H;  // a row of out
  const int64_t states = int64_t(2) * S.layers;  // (2L, B, H) blocks
  const int64_t state_size = states * B * H, x_size = int64_t(steps) * B * F, out_size = int64_t(steps) * B * width;
  const Scratch<T> buffer(Use::kPackedRows, x_size + out_size + (cell_state ? 4 : 2) * state_size);
  T* const x = buffer.get();
  T* const out = x + x_size;
  T* const h0 = out + out_size;
  T* const h_n = h0 + state_size;
  T* const c0 = cell_state ? h_n + state_size : nullptr;
  T* const c_n = cell_state ? c0 + state_size : nullptr;
  // rows of n elements, block by block (`blocks` of B rows), from the caller's order into the run's or back
  auto gather = [&](const T* src, T* dst, int64_t blocks, int n) {
    for (int64_t k = 0; k < blocks; ++k)
      for (int b = 0; b < B; ++b)
        std::memcpy(dst + (k * B + b) * n, src + (k * B + order[b]) * n, sizeof(T) * n);
  };
  auto scatter = [&](const T* src, T* dst, int64_t blocks, int n) {
    for (int64_t k = 0; k < blocks; ++k)
      for (int b = 0; b < B; ++b)
        std::memcpy(dst + (k * B + order[b]) * n, src + (k * B + b) * n, sizeof(T) * n);
  };
  gather(S.x, x, steps, F);
  gather(S.h0, h0, states, H);
  if (cell_state) gather(S.c0, c0, states, H);
  A R = S;
  R.x = x;
  R.h0 = h0;
  R.c0 = c0;
  R.lengths = sorted_lengths.data();
  R.out = out;
  R.h_n = h_n;
  R.c_n = c_n;
  run(R);
  scatter(out, S.out, steps, width);
  scatter(h_n, S.h_n, states, H);
  if (cell_state) scatter(c_n, S.c_n, states, H);
}

}  // namespace birnn
