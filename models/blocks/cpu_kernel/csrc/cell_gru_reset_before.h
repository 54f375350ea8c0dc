// GRU with the reset gate before the recurrent product (Keras reset_after=False): gates r, z, n;
// n = tanh(W_in x + b_n + W_hn (r * h)), h' = n + z * (h - n). Both biases fold into b_ih. The step product covers
// the r, z columns; a second product (r * h) @ W_hn^T fills the n columns (kSecondProduct).
#pragma once

#include "activations.h"
#include "cell_base.h"
#include "cell_gru.h"

namespace birnn {

struct GruResetBefore : CellBase {
  static constexpr int kGates = 3;
  static constexpr bool kSecondProduct = true;
  static constexpr bool kDirect = true;

  // r, z and r * h, before the second product.
  template <typename T>
  static void forward_before(const ForwardRow<T>& r) {
    const int H = r.H;
    T* g = r.g;
    for (int j = 0; j < 2 * H; ++j) g[j] += r.xg[j] + (r.bi ? r.bi[j] : T(0));
    sigmoid_(g, 2 * H);
    for (int j = 0; j < H; ++j) r.rh[j] = g[j] * r.h[j];
  }

  // n from the second product's columns, then h'.
  template <typename T>
  static void forward(const ForwardRow<T>& r) {
    const int H = r.H, G = 3 * H;
    T* g = r.g;
    for (int j = 2 * H; j < G; ++j) g[j] += r.xg[j] + (r.bi ? r.bi[j] : T(0));
    tanh_(g + 2 * H, H);
    Gru::new_state(r);
  }

  // dz, dn and r * h; dr needs d(r * h) of every row first (backward_after).
  template <typename T>
  static void backward(const BackwardRow<T>& row) {
    const int H = row.H;
    const T* g = row.g;
    T* dgi = row.dgi;
    BIRNN_DISTINCT_ARRAYS
    for (int j = 0; j < H; ++j) {
      const T r = g[j], z = g[H + j], n = g[2 * H + j];
      const T dhv = row.dh[j] + row.dout[j];
      dgi[j] = T(0);
      dgi[H + j] = dhv * (row.hp[j] - n) * z * (T(1) - z);
      dgi[2 * H + j] = dhv * (T(1) - z) * (T(1) - n * n);
      row.direct[j] = dhv * z;
      row.rh[j] = r * row.hp[j];
    }
  }

  template <typename T>
  static void backward_after(const BackwardRow<T>& row) {
    const int H = row.H;
    BIRNN_DISTINCT_ARRAYS
    for (int j = 0; j < H; ++j) {
      const T r = row.g[j];
      row.dgi[j] = row.drh[j] * row.hp[j] * r * (T(1) - r);
      row.direct[j] += row.drh[j] * r;
    }
  }
};

}  // namespace birnn
