// The backward pass of the kernel (birnn_cpu.cpp): one direction's reverse loop, then the weight, bias and input
// gradients on the layer's thread team. The gate math is the cell's (cells.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <omp.h>
#include <vector>

#include "aligned.h"
#include "args.h"
#include "cells.h"
#include "forward.h"
#include "products.h"
#include "scratch.h"

namespace birnn {

// The gradients of the gate pre-activations, d_gi (T, B, 2, G), and for a kApartHh cell d_gh, that of
// W_hh h + b_hh: scratch of one backward call (kept across calls: scratch.h), each (t, b) row `row` elements from the
// next. The row is 2G and one cache line: at 2G * sizeof(T) a multiple of 4 KB (H = 128, float32) every row of a
// GEMM operand fell in the same L1 sets, and MKL's weight-gradient GEMMs took 1.37x the time of the padded layout.
template <typename T>
struct GateGrads {
  T* d_gi;
  T* d_gh;  // or null
  int64_t row;
  int batch, G;

  static int64_t row_of(int G) { return 2 * int64_t(G) + int64_t(kLine / sizeof(T)); }
  // where direction d's G values of step t, row b start
  int64_t at(int t, int b, int d) const { return (int64_t(t) * batch + b) * row + int64_t(d) * G; }
};

// Gradients through the loop of direction d, rows [b0, b1). In: L.d_out (T, B, 2, H), L.dh / L.dc hold d h_n /
// d c_n (2, B, H) and come back as d h0 / d c0. Out: grads.d_gi the gradient of the gate pre-activations (= of gi),
// and for a kApartHh cell grads.d_gh, the gradient of W_hh h + b_hh (GRU: its n part differs from d_gi's by the
// factor r). rh_all: a kSecondProduct cell's r * h_prev of every step (T, B, H).
template <typename T>
void backward_direction(const Args<T>& L, const GateGrads<T>& grads, int d, int b0, int b1, T* rh_all) {
  const CellTraits cell = traits_of(L.cell);
  const int B = L.batch, H = L.hidden, G = cell.gates * H, nb = b1 - b0;  // this thread's rows: [b0, b1) of B
  const bool second = cell.second_product;
  const int G1 = second ? G - H : G;  // pre-activation columns of the first product
  const T* w = L.w_hh + int64_t(d) * G * H;
  T* dh = L.dh + (int64_t(d) * B + b0) * H;
  T* dc = cell.cell_state ? L.dc + (int64_t(d) * B + b0) * H : nullptr;
  T* d_gi = grads.d_gi;
  T* dhh = cell.apart_hh ? grads.d_gh : d_gi;  // what multiplies W_hh (with a second product: its first G1 columns)
  const int64_t ld = grads.row;
  LineVector<T> prev_grad(int64_t(nb) * H), direct(int64_t(nb) * H, T(0)), tc(H);
  const StepGemm<T> gemm(w, false, H, G1);
  // A second product: d(r * h) = dn @ W_hn, one more product per step.
  const StepGemm<T> gemm_n(w + (second ? int64_t(G1) * H : 0), false, H, second || !kPackedBuild ? H : 0);
  LineVector<T> d_rh(second ? int64_t(nb) * H : 0);
  const StepRows active(L.lengths, L.steps, b0, b1);
  for (int s = L.steps - 1; s >= 0; --s) {
    const int t = L.time(d, s);
    const int valid_rows = active.at(t);  // the step products' rows: [b0, b0 + valid_rows)
    const int tp = d == 0 ? t - 1 : t + 1;  // where the previous state is stored
    const bool from_start = tp < 0 || tp >= L.steps;
    auto row_at = [&](int b) {
      const int64_t gates = L.at(t, b, d, G), row = grads.at(t, b, d), i = int64_t(b - b0) * H;
      const T* hp = from_start ? L.h0 + (int64_t(d) * B + b) * H : L.h_all + L.at(tp, b, d, H);
      const T* cp = !cell.cell_state ? nullptr
                    : from_start     ? L.c0 + (int64_t(d) * B + b) * H
                                     : L.c_all + L.at(tp, b, d, H);
      return BackwardRow<T>{H,
                            L.gi + gates,
                            hp,
                            L.d_out + L.at(t, b, d, H),
                            dh + i,
                            d_gi + row,
                            grads.d_gh ? grads.d_gh + row : nullptr,
                            direct.data() + i,
                            rh_all ? rh_all + (int64_t(t) * B + b) * H : nullptr,
                            second ? d_rh.data() + i : nullptr,
                            L.ghn ? L.ghn + L.at(t, b, d, H) : nullptr,
                            cell.cell_state ? L.c_all + L.at(t, b, d, H) : nullptr,
                            cp,
                            dc ? dc + i : nullptr,
                            tc.data()};
    };
    for (int b = b0; b < b1; ++b) {
      const BackwardRow<T> row = row_at(b);
      if (!L.valid(t, b)) {
        std::memset(row.dgi, 0, sizeof(T) * G);
        if (row.dgh) std::memset(row.dgh, 0, sizeof(T) * G);
        if (row.rh) std::memset(row.rh, 0, sizeof(T) * H);
        continue;
      }
      with_cell(L.cell, [&](auto k) { decltype(k)::backward(row); });
    }
    if (second) {
      gemm_n(valid_rows, d_gi + grads.at(t, b0, d) + G1, ld, d_rh.data(), H);  // d(r * h) = dn @ W_hn
      for (int b = b0; b < b1; ++b) {
        if (!L.valid(t, b)) continue;
        const BackwardRow<T> row = row_at(b);
        with_cell(L.cell, [&](auto k) { decltype(k)::backward_after(row); });
      }
    }
    // d h_prev = d(W_hh h) @ W_hh over the rows valid at this step; rows padded here keep their carried gradient.
    gemm(valid_rows, dhh + grads.at(t, b0, d), ld, prev_grad.data(), H);
    for (int b = b0; b < b1; ++b) {
      if (!L.valid(t, b)) continue;
      T* dhb = dh + int64_t(b - b0) * H;
      const T* pg = prev_grad.data() + int64_t(b - b0) * H;
      const T* db = direct.data() + int64_t(b - b0) * H;
      if (cell.direct) {
        for (int j = 0; j < H; ++j) dhb[j] = pg[j] + db[j];
      } else {
        for (int j = 0; j < H; ++j) dhb[j] = pg[j];
      }
    }
  }
}

// d_w (N x K, += when acc) = sum over rows of d_g[row]^T @ v[row]: d_g rows of stride ldg, v rows of stride ldv.
template <typename T>
void weight_grad(int rows, int N, int K, const T* d_g, int ldg, const T* v, int ldv, bool acc, T* d_w) {
  if (rows > 0) blas_gemm(true, false, N, K, rows, d_g, ldg, v, ldv, acc, d_w, K);
}

// Column sums of (rows x G) with row stride ld, columns [n0, n1) only (+= when acc).
template <typename T>
void bias_grad(int64_t rows, int64_t ld, int n0, int n1, const T* d_g, bool acc, T* d_b) {
  if (!acc) std::memset(d_b + n0, 0, sizeof(T) * (n1 - n0));
  for (int64_t r = 0; r < rows; ++r)
    for (int j = n0; j < n1; ++j) d_b[j] += d_g[r * ld + j];
}

// One (direction d, gate slice p of P) item of the weight and bias gradients, summed over n rows: x (n, F); dg the
// gate pre-activations' gradient and dh what multiplied W_hh (rows ld apart, direction d at + d * G); rh a second
// product's input (n, H), or null without one; state(s0, s1, dw) the W_hh rows [s0, s1) against the state each row
// met (into dw, those rows of d W_hh: the layouts differ in where that state is). acc: add onto the gradients.
template <typename T, typename StateProducts>
void item_gradients(const Args<T>& L, int d, int p, int P, int64_t n, const T* x, const T* dg, const T* dh,
                    int64_t ld, const T* rh, bool acc, StateProducts state) {
  const CellTraits cell = traits_of(L.cell);
  const int H = L.hidden, G = cell.gates * H, F = L.input_size;
  const int G_h = cell.second_product ? G - H : G;  // rows of W_hh that meet the previous state itself
  const int n0 = group_start(G, p, P), n1 = group_start(G, p + 1, P);  // gate rows of W_ih, biases
  const int s0 = group_start(G_h, p, P), s1 = group_start(G_h, p + 1, P);  // of W_hh against the state
  T* dw = L.d_w_hh + int64_t(d) * G * H;
  if (n1 > n0)
    weight_grad(int(n), n1 - n0, F, dg + d * G + n0, ld, x, F, acc, L.d_w_ih + (int64_t(d) * G + n0) * F);
  if (s1 > s0) state(s0, s1, dw + int64_t(s0) * H);
  if (cell.second_product) {  // W_hn met r * h_prev
    const int r0 = group_start(H, p, P), r1 = group_start(H, p + 1, P);
    if (r1 > r0)
      weight_grad(int(n), r1 - r0, H, dg + d * G + G_h + r0, ld, rh, H, acc, dw + (int64_t(G_h) + r0) * H);
  }
  if (L.d_b_ih) bias_grad(n, ld, n0, n1, dg + d * G, acc, L.d_b_ih + int64_t(d) * G);
  if (L.d_b_hh) bias_grad(n, ld, n0, n1, dh + d * G, acc, L.d_b_hh + int64_t(d) * G);
}

// Phases two and three of backward (below) with rows skipped (lengths sorted longest first: StepRows): the weight,
// bias and input gradients summed over the valid (t, b) only. Run by every thread of the team, chunk by chunk of
// steps (at most kPackedBytes of copies, so memory stays bounded at any T and B): the team packs what the chunk's
// sums read (x, d_gi, d_gh, the state each direction's W_hh met, a second product's input) into PackedSequence's
// layout, then each (direction, gate slice) item adds the chunk's products onto its gradients, and the chunk's input
// gradient is computed packed and scattered back, zeros at padded steps. Every gradient element is summed by one
// thread in one order, so the bits do not depend on timing. rh_all as in backward.
template <typename T>
struct PackedSums {
  const Args<T>& L;
  const GateGrads<T>& grads;
  const StepRows& all;
  const T* rh_all;  // (2, T, B, H) or null
  int64_t max_rows;
  T* xs;  // (rows, F)
  T* dgs;  // (rows, 2G), rows grads.row apart
  T* dhs;  // (rows, 2G) as dgs, or dgs
  T* hps;  // (rows, 2H)
  T* rhs;  // (2, rows, H)
  T* dxs;  // (rows, F)

  // Floats a packed row takes, and the rows a chunk may take (at least a step's).
  static int64_t row_floats(const Args<T>& L) {
    const CellTraits cell = traits_of(L.cell);
    const int H = L.hidden, G = cell.gates * H, F = L.input_size;
    const int64_t gate_row = GateGrads<T>::row_of(G);
    return F + gate_row * (cell.apart_hh ? 2 : 1) + 2 * H + (cell.second_product ? 2 * H : 0) + (L.d_x ? F : 0);
  }
  static int64_t chunk_rows(const Args<T>& L) {
    return std::max<int64_t>(L.batch, kPackedBytes / int64_t(sizeof(T)) / row_floats(L));
  }
  // buffer: chunk_rows(args) * row_floats(args) floats
  PackedSums(const Args<T>& args, const GateGrads<T>& gate_grads, const StepRows& rows, const T* rh, T* buffer)
      : L(args), grads(gate_grads), all(rows), rh_all(rh), max_rows(chunk_rows(args)) {
    const CellTraits cell = traits_of(L.cell);
    const int H = L.hidden, F = L.input_size;
    xs = buffer;
    dgs = xs + max_rows * F;
    dhs = cell.apart_hh ? dgs + max_rows * grads.row : dgs;
    hps = dgs + max_rows * grads.row * (cell.apart_hh ? 2 : 1);
    rhs = hps + max_rows * 2 * H;
    dxs = rhs + (cell.second_product ? max_rows * 2 * H : 0);
  }

  // Step t's valid rows into the chunk's packed rows from chunk row o.
  void pack(int t, int64_t o) const {
    const CellTraits cell = traits_of(L.cell);
    const int H = L.hidden, F = L.input_size, B = L.batch, steps = L.steps;
    const int64_t rows = int64_t(steps) * B, ld = grads.row;
    all.pack(t, t + 1, L.x, int64_t(B) * F, F, F, xs + o * F, F);
    all.pack(t, t + 1, grads.d_gi, B * ld, ld, int(ld), dgs + o * ld, ld);  // whole rows: one copy a step
    if (cell.apart_hh) all.pack(t, t + 1, grads.d_gh, B * ld, ld, int(ld), dhs + o * ld, ld);
    for (int r = 0; r < all.at(t); ++r) {  // W_hh met h0 at a direction's first step, else its state one step back
      T* hp = hps + (o + r) * 2 * H;
      std::memcpy(hp, t == 0 ? L.h0 + int64_t(r) * H : L.h_all + L.at(t - 1, r, 0, H), sizeof(T) * H);
      std::memcpy(hp + H, t == steps - 1 ? L.h0 + int64_t(B + r) * H : L.h_all + L.at(t + 1, r, 1, H),
                  sizeof(T) * H);
    }
    if (cell.second_product)
      for (int d = 0; d < 2; ++d)
        all.pack(t, t + 1, rh_all + d * rows * H, int64_t(B) * H, H, H, rhs + (d * max_rows + o) * H, H);
  }

  // Called by every thread of a team of P row groups' size (backward's team).
  void run(int P) const {
    const CellTraits cell = traits_of(L.cell);
    const int H = L.hidden, G = cell.gates * H, F = L.input_size, B = L.batch, steps = L.steps;
    const int64_t ld = grads.row;
    for (int t0 = 0; t0 < steps;) {
      const int t1 = all.chunk_end(t0, max_rows);
      const int64_t base = all.offset(t0), n = all.offset(t1) - base;
      const bool acc = t0 > 0;  // the first chunk sets the gradients, later ones add
#pragma omp for schedule(static)
      for (int t = t0; t < t1; ++t) pack(t, all.offset(t) - base);
#pragma omp for schedule(static, 1) nowait
      for (int item = 0; item < 2 * P; ++item) {
        const int d = item % 2;
        item_gradients(L, d, item / 2, P, n, xs, dgs, dhs, ld, rhs + d * max_rows * H, acc, [&](int s0, int s1, T* dw) {
          weight_grad(int(n), s1 - s0, H, dhs + d * G + s0, ld, hps + d * H, 2 * H, acc, dw);  // packed states
        });
      }
      if (L.d_x) {  // the chunk's steps split over the team by rows: packed into dxs, then to d_x, zeros where padded
        const int parts = omp_get_num_threads();
#pragma omp for schedule(static, 1) nowait
        for (int part = 0; part < parts; ++part) {
          // the first step of a part's rows, kept inside the chunk
          auto from = [&](int k) { return std::max(t0, std::min(t1, all.step_from(base + n * k / parts))); };
          const int a = part == 0 ? t0 : from(part);
          const int b = part == parts - 1 ? t1 : from(part + 1);
          const int64_t r0 = all.offset(a) - base, r1 = all.offset(b) - base;
          if (r1 > r0)
            blas_gemm(false, false, int(r1 - r0), F, 2 * G, dgs + r0 * ld, ld, L.w_ih, F, false, dxs + r0 * F, F);
          all.unpack(a, b, dxs + r0 * F, F, L.d_x, int64_t(B) * F, F, F);
          for (int t = a; t < b; ++t)
            std::memset(L.d_x + (int64_t(t) * B + all.at(t)) * F, 0, sizeof(T) * (B - all.at(t)) * F);
        }
      }
#pragma omp barrier
      t0 = t1;
    }
  }
};

// Three phases on one thread team: the reverse loops (a direction and a row group per thread), then the weight
// and bias gradients (a direction and a slice of the gate rows per thread: GEMMs over all steps and rows, so each
// gradient element is summed by one thread in one order), then the input gradient, its rows split over the team.
// With rows skipped (lengths sorted longest first), the sums run over the valid (t, b) only: PackedSums. L.gi holds
// the activated gates the forward pass kept; d_x and d_b_* may be null.
template <typename T>
void backward(const Args<T>& L) {
  const CellTraits cell = traits_of(L.cell);
  const int H = L.hidden, G = cell.gates * H, F = L.input_size, B = L.batch, steps = L.steps;
  const int64_t rows = int64_t(steps) * B, ld = GateGrads<T>::row_of(G);
  const bool second = cell.second_product;
  const Scratch<T> gate_grads(Use::kGateGrads, rows * ld * (cell.apart_hh ? 2 : 1));
  const GateGrads<T> grads{gate_grads.get(), cell.apart_hh ? gate_grads.get() + rows * ld : nullptr, ld, B, G};
  const T* dhh = cell.apart_hh ? grads.d_gh : grads.d_gi;
  const int P = row_groups(L.threads, B);
  LineVector<T> rh_all(second ? 2 * rows * H : 0);  // a second product's input r * h_prev of every step, (2, T, B, H)
  const StepRows all(L.lengths, steps, 0, B);
  const bool skip = all.padded();
  const Scratch<T> packed(Use::kPackedRows, skip ? PackedSums<T>::chunk_rows(L) * PackedSums<T>::row_floats(L) : 0);
  std::unique_ptr<const PackedSums<T>> sums(skip ? new PackedSums<T>(L, grads, all, rh_all.data(), packed.get())
                                                : nullptr);
#pragma omp parallel num_threads(std::min(L.threads, 2 * P))
  {
    const int one = 1, before = mkl_set_num_threads_local_(&one);
#pragma omp for schedule(static, 1)
    for (int item = 0; item < 2 * P; ++item) {
      const int d = item % 2, p = item / 2;
      backward_direction(L, grads, d, group_start(B, p, P), group_start(B, p + 1, P),
                         second ? rh_all.data() + d * rows * H : nullptr);
    }
    if (skip) {
      sums->run(P);
    } else {
#pragma omp for schedule(static, 1)
      for (int item = 0; item < 2 * P; ++item) {
        const int d = item % 2;
        item_gradients(L, d, item / 2, P, rows, L.x, grads.d_gi, dhh, ld,
                       second ? rh_all.data() + d * rows * H : nullptr, false, [&](int s0, int s1, T* dw) {
          // W_hh met the previous state: h0 at the direction's first step, else h_all one step back in its order
          const int first = d == 0 ? 0 : steps - 1;
          const int later = d == 0 ? 1 : 0;  // d_g rows of the steps after the first, against h_all shifted by one
          weight_grad(B, s1 - s0, H, dhh + grads.at(first, 0, d) + s0, ld, L.h0 + int64_t(d) * B * H, H, false, dw);
          weight_grad((steps - 1) * B, s1 - s0, H, dhh + grads.at(later, 0, d) + s0, ld,
                      L.h_all + L.at(1 - later, 0, d, H), 2 * H, true, dw);
        });
      }
      if (L.d_x) {
        const int parts = omp_get_num_threads();
#pragma omp for schedule(static, 1)
        for (int part = 0; part < parts; ++part) {
          const int64_t r0 = rows * part / parts, r1 = rows * (part + 1) / parts;
          if (r1 > r0)
            blas_gemm(false, false, int(r1 - r0), F, 2 * G, grads.d_gi + r0 * ld, ld, L.w_ih, F, false,
                      L.d_x + r0 * F, F);
        }
      }
    }
    mkl_set_num_threads_local_(&before);
  }
}

}  // namespace birnn
