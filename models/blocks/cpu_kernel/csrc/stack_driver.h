// The layer loop shared by the inference stacks of bf16_forward.h and q8_forward.h: every layer's two directions
// (one OpenMP thread each when Args.threads > 1) into the raw (T, B, 2, H) layout, then the layer's merge, the next
// layer reading the merged (or whole) output. Each path supplies its Args (steps, batch, hidden, layers, threads, x,
// out, input_sizes, merges) and its direction(S, l, d, in, F, raw).
#pragma once

#include <cstdint>
#include <vector>

namespace birnn {
namespace stack {

// Room for at least n values in v (grown, never shrunk: kept across calls by its owner), starting on a cache line:
// the tile and vector rows laid out from it (strides a whole number of lines) then never span two lines, as they
// would from a large vector's own data (mmap'd, 16 bytes past a page).
template <typename V>
inline typename V::value_type* sized(V& v, int64_t n) {
  using T = typename V::value_type;
  constexpr int64_t line = 64 / sizeof(T);
  if (int64_t(v.size()) < n + line) v.resize(size_t(n + line));
  T* p = v.data();
  return p + (line - int64_t(reinterpret_cast<std::uintptr_t>(p) / sizeof(T) % line)) % line;
}

// Every layer and merge (merge codes: 0 concat, 1 sum, 2 mul, 3 ave, 4 None, as forward.h's Merge). The layer
// buffers are the calling thread's, one pair per Args type, kept across calls.
template <typename Args, typename Direction>
inline void forward_stack(const Args& S, Direction direction) {
  const int T = S.steps, B = S.batch, H = S.hidden;
  const int64_t rows = int64_t(T) * B, raw_size = rows * 2 * H;
  thread_local std::vector<float> spare_a, spare_b;
  float* const spare[2] = {sized(spare_a, raw_size), S.layers > 1 ? sized(spare_b, raw_size) : nullptr};
  const float* in = S.x;
  for (int l = 0; l < S.layers; ++l) {
    const bool last = l == S.layers - 1, whole = S.merges[l] == 0 || S.merges[l] == 4;
    float* raw = last && whole ? S.out : (in == spare[0] ? spare[1] : spare[0]);
    if (raw == nullptr) raw = spare[0];  // one layer, merged: spare[0] is free
    const int F = S.input_sizes[l];
#pragma omp parallel for num_threads(2) schedule(static, 1) if (S.threads > 1)
    for (int d = 0; d < 2; ++d) direction(S, l, d, in, F, raw);
    if (whole) {
      in = raw;
      continue;
    }
    float* merged = last ? S.out : (raw == spare[0] ? spare[1] : spare[0]);
    const int merge = S.merges[l];
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
    in = merged;
  }
}

}  // namespace stack
}  // namespace birnn
