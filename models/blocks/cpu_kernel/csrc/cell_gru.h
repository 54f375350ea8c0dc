// GRU (torch.nn.GRU, Keras reset_after=True): gates r, z, n; n = tanh(W_in x + b_in + r * (W_hn h + b_hn)),
// h' = n + z * (h - n) as ATen computes it. W_hh h + b_hh is kept apart from the projection (kApartHh).
#pragma once

#include "activations.h"
#include "cell_base.h"

namespace birnn {

struct Gru : CellBase {
  static constexpr int kGates = 3;
  static constexpr bool kApartHh = true;
  static constexpr bool kDirect = true;

  // h' = n + z * (h - n) from the activated gates (z, n in g's second and third blocks); both GRUs end with it.
  template <typename T>
  static void new_state(const ForwardRow<T>& r) {
    const int H = r.H;
    const T* g = r.g;
    for (int j = 0; j < H; ++j) {
      const T n = g[2 * H + j];
      r.out[j] = r.h[j] = n + g[H + j] * (r.h[j] - n);
    }
  }

  template <typename T>
  static void forward(const ForwardRow<T>& r) {
    const int H = r.H;
    T* g = r.g;
    const T* xg = r.xg;
    const T* bi = r.bi;
    const T* bh = r.bh;
    for (int j = 0; j < 2 * H; ++j) g[j] = (g[j] + (bh ? bh[j] : T(0))) + (xg[j] + (bi ? bi[j] : T(0)));
    sigmoid_(g, 2 * H);
    for (int j = 0; j < H; ++j) {
      const T hn = g[2 * H + j] + (bh ? bh[2 * H + j] : T(0));
      if (r.ghn) r.ghn[j] = hn;
      g[2 * H + j] = (xg[2 * H + j] + (bi ? bi[2 * H + j] : T(0))) + hn * g[j];
    }
    tanh_(g + 2 * H, H);
    new_state(r);
  }

  template <typename T>
  static void backward(const BackwardRow<T>& row) {
    const int H = row.H;
    const T* g = row.g;
    T* dgi = row.dgi;
    T* dgh = row.dgh;
    BIRNN_DISTINCT_ARRAYS
    for (int j = 0; j < H; ++j) {
      const T r = g[j], z = g[H + j], n = g[2 * H + j];
      const T dhv = row.dh[j] + row.dout[j];
      const T dn = dhv * (T(1) - z) * (T(1) - n * n);
      const T dz = dhv * (row.hp[j] - n) * z * (T(1) - z);
      const T dr = dn * row.hn[j] * r * (T(1) - r);
      row.direct[j] = dhv * z;
      dgi[j] = dgh[j] = dr;
      dgi[H + j] = dgh[H + j] = dz;
      dgi[2 * H + j] = dn;
      dgh[2 * H + j] = dn * r;
    }
  }
};

}  // namespace birnn
