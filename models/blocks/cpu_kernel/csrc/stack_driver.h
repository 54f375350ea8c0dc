// The layer loop shared by the inference stacks of bf16_forward.h and q8_forward.h: every layer's two directions
// (one OpenMP thread each when Args.threads > 1) into the raw (T, B, 2, H) layout, then the layer's merge, the next
// layer reading the merged (or whole) output. Each path supplies its Args (steps, batch, hidden, layers, threads, x,
// out, input_sizes, merges) and its direction(S, l, d, in, F, raw).
#pragma once

#include <omp.h>

#include <cstdint>
#include <vector>

#include "aligned.h"
#include "spin_barrier.h"

namespace birnn {
namespace stack {

// v's data with room for at least n values (grown, never shrunk: kept across calls by its owner).
template <typename V>
inline typename V::value_type* sized(V& v, int64_t n) {
  if (int64_t(v.size()) < n) v.resize(size_t(n));
  return v.data();
}

// Every layer and merge (merge codes: 0 concat, 1 sum, 2 mul, 3 ave, 4 None, as forward.h's Merge). The layer
// buffers are the calling thread's, one pair per Args type, kept across calls. With two threads, all layers run in
// one parallel region with spin barriers between them, as forward.h's run_stack: a team woken per layer cost each
// layer a wake of the sleeping second thread (spin_barrier.h says what that costs on a virtual machine).
template <typename Args, typename Direction>
inline void forward_stack(const Args& S, Direction direction) {
  const int T = S.steps, B = S.batch, H = S.hidden;
  const int64_t rows = int64_t(T) * B, raw_size = rows * 2 * H;
  thread_local LineVector<float> spare_a, spare_b;
  float* const spare[2] = {sized(spare_a, raw_size), S.layers > 1 ? sized(spare_b, raw_size) : nullptr};
  const int team = S.threads > 1 ? 2 : 1;
  SpinBarrier barrier(team);
#pragma omp parallel num_threads(team)
  {
    SpinBarrier* sync = omp_get_num_threads() == team ? &barrier : nullptr;
    const float* in = S.x;
    for (int l = 0; l < S.layers; ++l) {
      const bool last = l == S.layers - 1, whole = S.merges[l] == 0 || S.merges[l] == 4;
      float* raw = last && whole ? S.out : (in == spare[0] ? spare[1] : spare[0]);
      if (raw == nullptr) raw = spare[0];  // one layer, merged: spare[0] is free
      const int F = S.input_sizes[l];
#pragma omp for schedule(static, 1) nowait
      for (int d = 0; d < 2; ++d) direction(S, l, d, in, F, raw);
      team_barrier(sync);  // the merge, or the next layer, reads both directions
      if (whole) {
        in = raw;
        continue;
      }
      float* merged = last ? S.out : (raw == spare[0] ? spare[1] : spare[0]);
      const int merge = S.merges[l];
#pragma omp for schedule(static) nowait
      for (int64_t r = 0; r < rows; ++r) {
        const float* f = raw + r * 2 * H;
        const float* b = f + H;
        float* m = merged + r * H;
        if (merge == 1)
          for (int j = 0; j < H; ++j) m[j] = f[j] + b[j];
        else if (merge == 2)
          for (int j = 0; j < H; ++j) m[j] = f[j] * b[j];
        else
          for (int j = 0; j < H; ++j) m[j] = (f[j] + b[j]) / 2.0f;
      }
      team_barrier(sync);  // the next layer reads every merged row
      in = merged;
    }
  }
}

}  // namespace stack
}  // namespace birnn
