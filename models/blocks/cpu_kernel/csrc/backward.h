// The backward pass of the kernel (birnn_cpu.cpp): one direction's reverse loop, then the weight, bias and input
// gradients on the layer's thread team.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <omp.h>
#include <vector>

#include "activations.h"
#include "forward.h"
#include "products.h"

namespace {

using birnn::sigmoid_;
using birnn::tanh_;

// Gradients through the loop of direction d. In: d_out (T, B, 2, H), dh/dc hold d h_n / d c_n (2, B, H) and
// come back as d h0 / d c0. Out: d_gi (T, B, 2, G*H) the gradient of the gate pre-activations (= of gi), and for
// GRU d_gh (T, B, 2, G*H), the gradient of W_hh h + b_hh (its n part differs from d_gi's by the factor r).
template <typename T>
void backward_direction(const Layer<T>& L, int d, int b0, int b1, const T* d_out, const T* w_hh, const T* h0, const T* c0,
                        const int64_t* lengths, const T* h_all, const T* c_all, const T* gates, const T* ghn,
                        T* dh_io, T* dc_io, T* d_gi, T* d_gh, T* rh_all) {
  const int B = L.batch, H = L.hidden, G = L.gh(), nb = b1 - b0;  // this thread's rows: [b0, b1) of B
  const bool lstm = L.cell == 0, reset_before = L.cell == 2;
  const T* w = w_hh + int64_t(d) * G * H;
  T* dh = dh_io + (int64_t(d) * B + b0) * H;
  T* dc = dc_io + (int64_t(d) * B + b0) * H;
  T* dhh = lstm || reset_before ? d_gi : d_gh;  // what multiplies W_hh (reset-before: its r, z columns)
  std::vector<T> prev_grad(int64_t(nb) * H), direct(int64_t(nb) * H, T(0)), tc(H);
  const StepGemm<T> gemm(w, false, H, reset_before ? 2 * H : G);
  // Reset-before: d(r * h) = dn @ W_hn, one more product per step.
  const StepGemm<T> gemm_n(w + (reset_before ? int64_t(2) * H * H : 0), false, H, reset_before || !kPackedBuild ? H : 0);
  std::vector<T> d_rh(reset_before ? int64_t(nb) * H : 0);
  for (int s = L.steps - 1; s >= 0; --s) {
    const int t = L.time(d, s);
    const int tp = d == 0 ? t - 1 : t + 1;  // where the previous state is stored
    const bool from_start = tp < 0 || tp >= L.steps;
    for (int b = b0; b < b1; ++b) {
      const int64_t row = L.at(t, b, d, G);
      if (!L.valid(lengths, t, b)) {
        std::memset(d_gi + row, 0, sizeof(T) * G);
        if (d_gh) std::memset(d_gh + row, 0, sizeof(T) * G);
        if (rh_all) std::memset(rh_all + (int64_t(t) * B + b) * H, 0, sizeof(T) * H);
        continue;
      }
      const T* g = gates + row;
      const T* hp = from_start ? h0 + (int64_t(d) * B + b) * H : h_all + L.at(tp, b, d, H);
      const T* dob = d_out + L.at(t, b, d, H);
      T* dhb = dh + int64_t(b - b0) * H;
      T* dgi = d_gi + row;
      if (lstm) {
        const T* ct = c_all + L.at(t, b, d, H);
        const T* cp = from_start ? c0 + (int64_t(d) * B + b) * H : c_all + L.at(tp, b, d, H);
        T* dcb = dc + int64_t(b - b0) * H;
        std::memcpy(tc.data(), ct, sizeof(T) * H);
        tanh_(tc.data(), H);
        for (int j = 0; j < H; ++j) {
          const T i = g[j], f = g[H + j], gg = g[2 * H + j], o = g[3 * H + j];
          const T dhv = dhb[j] + dob[j];
          const T dct = dcb[j] + dhv * o * (T(1) - tc[j] * tc[j]);
          dgi[j] = dct * gg * i * (T(1) - i);
          dgi[H + j] = dct * cp[j] * f * (T(1) - f);
          dgi[2 * H + j] = dct * i * (T(1) - gg * gg);
          dgi[3 * H + j] = dhv * tc[j] * o * (T(1) - o);
          dcb[j] = dct * f;
        }
      } else if (reset_before) {  // dr needs d(r * h) of every row first: the second pass below
        T* db = direct.data() + int64_t(b - b0) * H;
        T* rh = rh_all + (int64_t(t) * B + b) * H;
        for (int j = 0; j < H; ++j) {
          const T r = g[j], z = g[H + j], n = g[2 * H + j];
          const T dhv = dhb[j] + dob[j];
          dgi[j] = T(0);
          dgi[H + j] = dhv * (hp[j] - n) * z * (T(1) - z);
          dgi[2 * H + j] = dhv * (T(1) - z) * (T(1) - n * n);
          db[j] = dhv * z;
          rh[j] = r * hp[j];
        }
      } else {
        const T* hn = ghn + L.at(t, b, d, H);
        T* dgh = d_gh + row;
        T* db = direct.data() + int64_t(b - b0) * H;
        for (int j = 0; j < H; ++j) {
          const T r = g[j], z = g[H + j], n = g[2 * H + j];
          const T dhv = dhb[j] + dob[j];
          const T dn = dhv * (T(1) - z) * (T(1) - n * n);
          const T dz = dhv * (hp[j] - n) * z * (T(1) - z);
          const T dr = dn * hn[j] * r * (T(1) - r);
          db[j] = dhv * z;
          dgi[j] = dgh[j] = dr;
          dgi[H + j] = dgh[H + j] = dz;
          dgi[2 * H + j] = dn;
          dgh[2 * H + j] = dn * r;
        }
      }
    }
    if (reset_before) {
      gemm_n(nb, d_gi + L.at(t, b0, d, G) + 2 * H, 2 * G, d_rh.data(), H);  // d(r * h) = dn @ W_hn
      for (int b = b0; b < b1; ++b) {
        if (!L.valid(lengths, t, b)) continue;
        const T* g = gates + L.at(t, b, d, G);
        const T* hp = from_start ? h0 + (int64_t(d) * B + b) * H : h_all + L.at(tp, b, d, H);
        const T* drh = d_rh.data() + int64_t(b - b0) * H;
        T* dgi = d_gi + L.at(t, b, d, G);
        T* db = direct.data() + int64_t(b - b0) * H;
        for (int j = 0; j < H; ++j) {
          const T r = g[j];
          dgi[j] = drh[j] * hp[j] * r * (T(1) - r);
          db[j] += drh[j] * r;
        }
      }
    }
    // d h_prev = d(W_hh h) @ W_hh over all rows, then keep the carried gradient of rows padded at this step.
    gemm(nb, dhh + L.at(t, b0, d, G), 2 * G, prev_grad.data(), H);
    for (int b = b0; b < b1; ++b) {
      if (!L.valid(lengths, t, b)) continue;
      T* dhb = dh + int64_t(b - b0) * H;
      const T* pg = prev_grad.data() + int64_t(b - b0) * H;
      const T* db = direct.data() + int64_t(b - b0) * H;
      if (lstm) {
        for (int j = 0; j < H; ++j) dhb[j] = pg[j];
      } else {
        for (int j = 0; j < H; ++j) dhb[j] = pg[j] + db[j];
      }
    }
  }
}

// d_w (N x K, += when acc) = sum over rows of d_g[row]^T @ v[row]: d_g rows of stride ldg, v rows of stride ldv.
template <typename T>
void weight_grad(int rows, int N, int K, const T* d_g, int ldg, const T* v, int ldv, bool acc, T* d_w) {
  if (rows > 0) blas_gemm(true, false, N, K, rows, d_g, ldg, v, ldv, acc, d_w, K);
}

// Column sums of (rows x G) with row stride 2G, columns [n0, n1) only.
template <typename T>
void bias_grad(int64_t rows, int G, int n0, int n1, const T* d_g, T* d_b) {
  std::memset(d_b + n0, 0, sizeof(T) * (n1 - n0));
  for (int64_t r = 0; r < rows; ++r)
    for (int j = n0; j < n1; ++j) d_b[j] += d_g[r * 2 * G + j];
}

// Three phases on one thread team: the reverse loops (a direction and a row group per thread), then the weight
// and bias gradients (a direction and a slice of the gate rows per thread: GEMMs over all steps and rows, so each
// gradient element is summed by one thread in one order), then the input gradient, its rows split over the team.
// d_x/d_b_* may be null.
template <typename T>
void backward(int cell, int steps, int batch, int hidden, int input_size, const T* d_out, const T* x, const T* w_ih,
              const T* w_hh, const T* h0, const T* c0, const int64_t* lengths, const T* h_all, const T* c_all,
              const T* gates, const T* ghn, T* dh, T* dc, T* d_gi, T* d_gh, T* d_x, T* d_w_ih, T* d_b_ih, T* d_w_hh,
              T* d_b_hh, int threads) {
  const Layer<T> L{cell, steps, batch, hidden};
  const int G = L.gh(), H = hidden, F = input_size, B = batch;
  const int64_t rows = int64_t(steps) * batch;
  const bool reset_before = cell == 2;
  const T* dhh = cell == 1 ? d_gh : d_gi;
  const int G_h = reset_before ? 2 * H : G;  // rows of W_hh that meet the previous state itself
  const int P = row_groups(threads, batch);
  std::vector<T> rh_all(reset_before ? 2 * rows * H : 0);  // reset-before: r * h_prev of every step, (2, T, B, H)
#pragma omp parallel num_threads(std::min(threads, 2 * P))
  {
    const int one = 1, before = mkl_set_num_threads_local_(&one);
#pragma omp for schedule(static, 1)
    for (int item = 0; item < 2 * P; ++item) {
      const int d = item % 2, p = item / 2;
      backward_direction(L, d, group_start(B, p, P), group_start(B, p + 1, P), d_out, w_hh, h0, c0, lengths, h_all,
                         c_all, gates, ghn, dh, dc, d_gi, d_gh, reset_before ? rh_all.data() + d * rows * H : nullptr);
    }
#pragma omp for schedule(static, 1)
    for (int item = 0; item < 2 * P; ++item) {
      const int d = item % 2, p = item / 2;
      const int n0 = group_start(G, p, P), n1 = group_start(G, p + 1, P);  // gate rows of W_ih, biases
      const int s0 = group_start(G_h, p, P), s1 = group_start(G_h, p + 1, P);  // of W_hh against the state
      if (n1 > n0)
        weight_grad(int(rows), n1 - n0, F, d_gi + d * G + n0, 2 * G, x, F, false,
                    d_w_ih + (int64_t(d) * G + n0) * F);
      // W_hh met the previous state: h0 at the direction's first step, else h_all one step back in its order.
      T* dw = d_w_hh + int64_t(d) * G * H;
      const int first = d == 0 ? 0 : steps - 1;
      const int later = d == 0 ? 1 : 0;  // d_g rows of the steps after the first, against h_all shifted by one
      if (s1 > s0) {
        weight_grad(B, s1 - s0, H, dhh + L.at(first, 0, d, G) + s0, 2 * G, h0 + int64_t(d) * B * H, H, false,
                    dw + int64_t(s0) * H);
        weight_grad((steps - 1) * B, s1 - s0, H, dhh + L.at(later, 0, d, G) + s0, 2 * G,
                    h_all + L.at(1 - later, 0, d, H), 2 * H, true, dw + int64_t(s0) * H);
      }
      if (reset_before) {  // W_hn met r * h_prev
        const int r0 = group_start(H, p, P), r1 = group_start(H, p + 1, P);
        if (r1 > r0)
          weight_grad(int(rows), r1 - r0, H, d_gi + d * G + 2 * H + r0, 2 * G, rh_all.data() + d * rows * H, H,
                      false, dw + (int64_t(2) * H + r0) * H);
      }
      if (d_b_ih) bias_grad(rows, G, n0, n1, d_gi + d * G, d_b_ih + int64_t(d) * G);
      if (d_b_hh) bias_grad(rows, G, n0, n1, dhh + d * G, d_b_hh + int64_t(d) * G);
    }
    if (d_x) {
      const int parts = omp_get_num_threads();
#pragma omp for schedule(static, 1)
      for (int part = 0; part < parts; ++part) {
        const int64_t r0 = rows * part / parts, r1 = rows * (part + 1) / parts;
        if (r1 > r0) blas_gemm(false, false, int(r1 - r0), F, 2 * G, d_gi + r0 * 2 * G, 2 * G, w_ih, F, false,
                               d_x + r0 * F, F);
      }
    }
    mkl_set_num_threads_local_(&before);
  }
}

}  // namespace
