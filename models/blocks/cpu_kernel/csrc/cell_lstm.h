// LSTM (torch.nn.LSTM): gates i, f, g, o; c' = f * c + i * g, h' = o * tanh(c').
#pragma once

#include <cstring>

#include "activations.h"
#include "cell_base.h"

namespace birnn {

struct Lstm : CellBase {
  static constexpr int kGates = 4;
  static constexpr bool kCellState = true;
  static constexpr bool kFoldable = true;

  template <typename T>
  static void forward(const ForwardRow<T>& r) {
    const int H = r.H;
    T* g = r.g;
    if (!r.folded)
      for (int j = 0; j < 4 * H; ++j) g[j] += r.xg[j] + (r.bi ? r.bi[j] : T(0));
    sigmoid_(g, 2 * H);
    tanh_(g + 2 * H, H);
    sigmoid_(g + 3 * H, H);
    for (int j = 0; j < H; ++j) r.tmp[j] = r.c[j] = g[H + j] * r.c[j] + g[j] * g[2 * H + j];
    tanh_(r.tmp, H);
    for (int j = 0; j < H; ++j) r.out[j] = r.h[j] = g[3 * H + j] * r.tmp[j];
  }

  template <typename T>
  static void backward(const BackwardRow<T>& r) {
    const int H = r.H;
    const T* g = r.g;
    T* dgi = r.dgi;
    T* tc = r.tmp;
    std::memcpy(tc, r.c, sizeof(T) * H);
    tanh_(tc, H);
    BIRNN_DISTINCT_ARRAYS
    for (int j = 0; j < H; ++j) {
      const T i = g[j], f = g[H + j], gg = g[2 * H + j], o = g[3 * H + j];
      const T dhv = r.dh[j] + r.dout[j];
      const T dct = r.dc[j] + dhv * o * (T(1) - tc[j] * tc[j]);
      dgi[j] = dct * gg * i * (T(1) - i);
      dgi[H + j] = dct * r.cp[j] * f * (T(1) - f);
      dgi[2 * H + j] = dct * i * (T(1) - gg * gg);
      dgi[3 * H + j] = dhv * tc[j] * o * (T(1) - o);
      r.dc[j] = dct * f;
    }
  }
};

}  // namespace birnn
