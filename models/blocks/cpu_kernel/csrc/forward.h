// The forward loops of the kernel (birnn_cpu.cpp): one direction's time loop, one layer on a thread team, and
// every layer of an inference call in one parallel region. The gate math is the cell's (cells.h).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <omp.h>
#include <type_traits>
#include <vector>

#include "aligned.h"
#include "args.h"
#include "cells.h"
#include "products.h"
#include "row_order.h"
#include "scratch.h"
#include "spin_barrier.h"

namespace birnn {

// Whether the step product can accumulate onto its output (PanelGemm: float32 vector builds).
template <typename T>
constexpr bool kFold = std::is_same<T, float>::value && kPackedBuild;

// Rows [b0, b1) of direction d of the layer L: its projections, then its time loop.
template <typename T>
void forward_direction(const Args<T>& L, int d, int b0, int b1) {
  const CellTraits cell = traits_of(L.cell);
  const int B = L.batch, H = L.hidden, G = cell.gates * H, nb = b1 - b0;  // this thread's rows: [b0, b1) of B
  const int input_size = L.input_size;
  const bool keep_gates = L.keep_gates != 0;
  const T* x = L.x;
  T* gi = L.gi;
  // This direction's input projections x @ W_ih[d]^T, GEMMs on this thread. Training keeps them (then the
  // activated gates) for the backward pass: all steps at once into gi. Inference projects chunks of about 256
  // rows into a small reused buffer instead: a (T, B, 2, G) scratch costs more in first-touch page faults
  // (measured ~30 ms per 50 MB) than its GEMM. With the batch split (nb < B) a step's rows are contiguous but
  // the steps are not: one GEMM a step.
  const T* wi = L.w_ih + int64_t(d) * G * input_size;
  // Inference with W_ih prepacked (birnn_pack_ih_f32, cached by the caller): the projections on the step
  // product's micro-kernel, measured 1.2-1.3x MKL's sgemm rate at 64 rows on an AVX2 EPYC.
  std::unique_ptr<StepGemm<T>> gemm_ih;
  if (L.packed_ih != nullptr && !keep_gates)
    gemm_ih.reset(new StepGemm<T>(wi, true, G, input_size, L.packed_ih + int64_t(d) * packed_floats(G, input_size),
                                  true));  // read once a call (step_gemm.h's kShortRows)
  // `rows` contiguous input rows from a into dst (row stride ld).
  auto gemm_rows = [&](int rows, const T* a, T* dst, int ld) {
    if (rows == 0) return;
    if (gemm_ih)
      (*gemm_ih)(rows, a, input_size, dst, ld);
    else
      blas_gemm(false, true, rows, G, input_size, a, input_size, wi, input_size, false, dst, ld);
  };
  // Steps [t_first, t_first + n) of this thread's rows into dst (row stride ld; step k of a split batch at
  // dst + k * dst_step).
  auto project = [&](int t_first, int n, T* dst, int ld, int64_t dst_step) {
    for (int k = 0; k < (nb == B ? 1 : n); ++k)
      gemm_rows(nb == B ? n * B : nb, x + (int64_t(t_first + k) * B + b0) * input_size, dst + k * dst_step, ld);
  };
  const StepRows active(L.lengths, L.steps, b0, b1);
  // With rows skipped (sorted lengths), the projections cover the valid rows only: those of steps
  // [t_first, t_first + n) gathered into xs, one GEMM into dst in active's packed layout (row stride G).
  const bool skip = active.padded();
  // Inference of a foldable cell (LSTM) on the packed step product: the product accumulates onto the projected
  // rows (bias added once per chunk), so no separate pass adds projection and bias to h @ W_hh^T every step.
  const bool fold = kFold<T> && cell.foldable && !keep_gates;
  const int chunk = keep_gates ? L.steps : std::max(1, std::min(L.steps, 256 / std::max(1, nb)));
  // Uninitialised (every element is written by a projection before it is read): zeroing it cost a pass over
  // up to 512 KB a direction and layer in every inference call. Inference: a chunk's projections, then xs; training
  // with rows skipped: the same for runs of steps of at most kPackedBytes (memory bounded at any T and B).
  const int64_t packed_rows = keep_gates ? std::max<int64_t>(nb, kPackedBytes / int64_t(sizeof(T)) / (G + input_size))
                                         : int64_t(chunk) * nb;
  const Scratch<T> local(Use::kProjections,
                         (keep_gates && !skip ? 0 : packed_rows * G) + (skip ? packed_rows * input_size : 0));
  T* const xs = skip ? local.get() + packed_rows * G : nullptr;
  auto project_packed = [&](int t_first, int n, T* dst) {
    active.pack(t_first, t_first + n, x + int64_t(b0) * input_size, int64_t(B) * input_size, input_size,
                input_size, xs, input_size);
    gemm_rows(int(active.offset(t_first + n) - active.offset(t_first)), xs, dst, G);
  };
  if (keep_gates && skip) {  // packed, then each valid row to its place in gi (the loop zeroes the others)
    for (int t0 = 0, t1 = 0; t0 < L.steps; t0 = t1) {
      t1 = active.chunk_end(t0, packed_rows);
      project_packed(t0, t1 - t0, local.get());
      active.unpack(t0, t1, local.get(), G, gi + L.at(0, b0, d, G), L.at(1, 0, 0, G), 2 * G, G);
    }
  } else if (keep_gates) {
    project(0, L.steps, gi + L.at(0, b0, d, G), 2 * G, L.at(1, 0, 0, G));
  }
  int chunk_start = 0;  // first time index of the chunk in local
  const T* w = L.w_hh + int64_t(d) * G * H;
  const T* bi = L.b_ih ? L.b_ih + int64_t(d) * G : nullptr;
  const T* bh = L.b_hh ? L.b_hh + int64_t(d) * G : nullptr;
  T* h = L.h_n + (int64_t(d) * B + b0) * H;  // the running state of rows b0.. lives in h_n / c_n
  T* c = cell.cell_state ? L.c_n + (int64_t(d) * B + b0) * H : nullptr;
  std::memcpy(h, L.h0 + (int64_t(d) * B + b0) * H, sizeof(T) * nb * H);
  if (c) std::memcpy(c, L.c0 + (int64_t(d) * B + b0) * H, sizeof(T) * nb * H);
  LineVector<T> pre(fold ? 0 : int64_t(nb) * G), tmp(H);  // (folded: the gates live in local)
  // A cell with a second product (reset-before GRU): the first product covers the columns but the last H, the
  // second, (r * h) @ W_hn^T, those last H.
  const bool second = cell.second_product;
  const int G1 = second ? G - H : G;
  // W_hh packed by birnn_pack_hh_f32 (inference caches it across calls), or packed here (null).
  const float* packed = L.packed_hh ? L.packed_hh + int64_t(d) * packed_hh_floats(L.cell, H) / 2 : nullptr;
  const StepGemm<T> gemm(w, true, G1, H, packed);
  // Only a cell with a second product builds one.
  const StepGemm<T> gemm_n(w + (second ? int64_t(G1) * H : 0), true, second || !kPackedBuild ? H : 0, H,
                           packed && second ? packed + packed_floats(G1, H) : nullptr);
  LineVector<T> rh(second ? int64_t(nb) * H : 0);
  // From a zero state (every serving call) the first step's product h0 @ W_hh^T is zero, if every weight is finite
  // (0 x Inf is NaN, as in nn.*: birnn_pack_hh_f32 records which after the packs): skipped, it does not read W_hh
  // from L3 once a direction (at T = 1, at all). The same bits: the sums it would add are +0.
  bool zero_start = packed != nullptr && L.packed_hh[packed_hh_floats(L.cell, H)] == 1.0f;
  for (int64_t i = 0; zero_start && i < int64_t(nb) * H; ++i) zero_start = h[i] == T(0) && (!c || c[i] == T(0));
  for (int s = 0; s < L.steps; ++s) {
    const int t = L.time(d, s);
    const int valid_rows = active.at(t);  // the step products' rows: [b0, b0 + valid_rows)
    if (!keep_gates && s % chunk == 0) {
      const int n = std::min(chunk, L.steps - s);
      chunk_start = d == 0 ? s : L.steps - s - n;
      if (skip)
        project_packed(chunk_start, n, local.get());
      else
        project(chunk_start, n, local.get(), G, int64_t(nb) * G);
      const int64_t projected = active.offset(chunk_start + n) - active.offset(chunk_start);  // the chunk's rows
      if (fold && bi)  // the bias once per projected row; the step product then adds h @ W_hh^T onto these
        for (int64_t r = 0; r < projected; ++r)
          for (int j = 0; j < G; ++j) local.get()[r * G + j] += bi[j];
    }
    // The projection of row b (valid at t), read once; in training overwritten by the activated gates. Inference
    // keeps the chunk in active's packed layout (without skipped rows: step k of the chunk at rows k * nb).
    const int64_t chunk_row = active.offset(t) - active.offset(chunk_start);
    auto projection = [&](int b) {
      return keep_gates ? gi + L.at(t, b, d, G) : local.get() + (chunk_row + b - b0) * G;
    };
    auto row_at = [&](int b, T* xg) {
      const int64_t i = int64_t(b - b0) * H;
      return ForwardRow<T>{H, fold ? xg : pre.data() + int64_t(b - b0) * G, xg, bi, bh, h + i, c ? c + i : nullptr,
                           L.out + L.at(t, b, d, H), L.ghn ? L.ghn + L.at(t, b, d, H) : nullptr,
                           second ? rh.data() + i : nullptr, tmp.data(), fold};
    };
    T* const first_g = fold ? local.get() + chunk_row * G : pre.data();
    const bool zero_product = s == 0 && zero_start;
    if constexpr (kFold<T>) {
      if (fold && !zero_product)  // the gates' pre-activations in place, projection + bias + h @ W_hh^T
        gemm(valid_rows, h, H, first_g, G, true);
    }
    if (!fold && zero_product)
      std::memset(pre.data(), 0, sizeof(T) * pre.size());
    else if (!fold)
      gemm(valid_rows, h, H, pre.data(), G);  // pre = h @ W_hh^T (with a second product: its first G1 columns)
    if (second) {
      // The gates before the second product and its input for every valid row; then the last H columns.
      for (int b = b0; b < b1; ++b) {
        const ForwardRow<T> row = row_at(b, projection(b));
        if (!L.valid(t, b)) {
          std::memset(row.rh, 0, sizeof(T) * H);
          continue;
        }
        with_cell(L.cell, [&](auto k) { decltype(k)::forward_before(row); });
      }
      if (!zero_product) gemm_n(valid_rows, rh.data(), H, first_g + G1, G);  // r * h0 is zero too
    }
    for (int b = b0; b < b1; ++b) {
      T* xg = projection(b);
      const ForwardRow<T> row = row_at(b, xg);
      if (L.valid(t, b)) {
        with_cell(L.cell, [&](auto k) { decltype(k)::forward(row); });
        if (keep_gates) std::memcpy(xg, row.g, sizeof(T) * G);
      } else {
        std::memset(row.out, 0, sizeof(T) * H);
        if (keep_gates) std::memset(xg, 0, sizeof(T) * G);
        if (row.ghn) std::memset(row.ghn, 0, sizeof(T) * H);
      }
      if (L.h_all) std::memcpy(L.h_all + L.at(t, b, d, H), row.h, sizeof(T) * H);
      if (L.c_all) std::memcpy(L.c_all + L.at(t, b, d, H), row.c, sizeof(T) * H);
    }
  }
}

// How many row groups the batch is split into: with more than two threads, each direction's rows are split so
// that every thread runs its own rows' recurrence (rows never interact, so no thread waits for another within a
// layer). At least kMinRows rows a group, so the step product keeps whole micro-kernel blocks (a guess, not
// measured: no many-core machine was at hand). A pure function of (threads, batch), so the split, and with it
// every result, is the same after a restart with the same thread count; other thread counts change results only
// to float rounding (BLAS may block a product of fewer rows, or a slice of the weight gradient, differently).
constexpr int kMinRows = 8;
inline int row_groups(int threads, int batch) { return std::max(1, std::min(threads / 2, batch / kMinRows)); }
// Rows [b0, b1) of group p of P.
inline int group_start(int batch, int p, int groups) { return int(int64_t(batch) * p / groups); }

// One layer (birnn_forward_*): the (direction, row group) items on a team of up to L.threads threads.
template <typename T>
void forward(const Args<T>& L) {
  const int P = row_groups(L.threads, L.batch);
#pragma omp parallel for num_threads(std::min(L.threads, 2 * P)) schedule(static, 1)
  for (int item = 0; item < 2 * P; ++item) {  // direction item % 2, row group item / 2
    const int d = item % 2, p = item / 2;
    const int one = 1, before = mkl_set_num_threads_local_(&one);
    forward_direction(L, d, group_start(L.batch, p, P), group_start(L.batch, p + 1, P));
    mkl_set_num_threads_local_(&before);
  }
}

// Merge codes of forward_stack, in models/merge.py's order: concat, sum, mul, ave, and None (the last layer only:
// the two directions kept apart, (T, B, 2, H), the same bytes as concat).
enum Merge { kConcat = 0, kSum = 1, kMul = 2, kAve = 3, kNone = 4 };

// Every layer of an inference call (no gradients) in one parallel region: per layer the (direction, row group)
// items run forward_direction into the layer's (T, B, 2, H) output, then the team merges the two directions into
// the next layer's input, with the arithmetic of models/merge.py (sum a + b, mul a * b, ave (a + b) / 2: the same
// bits as those torch ops). Why: with one kernel call per layer, each layer paid a ctypes call, its output
// allocation, the merge as torch ops and a new wake of the thread team: at T = 1 (B = 1, H = 128, 2 layers) a
// call cost 285 us, 140 us now (benchmarks/archive/RESULTS-2026-12.md). S: the stack's Args (args.h: x,
// input_sizes, merges, weights, h0, c0, lengths, out, h_n, c_n, threads).
template <typename T>
void run_stack(const Args<T>& S) {
  const int steps = S.steps, batch = S.batch, hidden = S.hidden, layers = S.layers;
  const int32_t* merges = S.merges;
  const int64_t rows = int64_t(steps) * batch, raw_size = rows * 2 * hidden, state = int64_t(2) * batch * hidden;
  const bool cell_state = traits_of(S.cell).cell_state != 0;
  // Two buffers of one layer's raw output: a layer writes the one it does not read, and a sum/mul/ave merges
  // into the other (the layer's input, no longer needed). The last layer writes into out where it can.
  // Two layers whose outputs are both kept whole (concat/None, nn.LSTM's stack) need only one: the first layer's
  // output, which the second reads while writing out.
  const auto whole = [&](int l) { return merges[l] == kConcat || merges[l] == kNone; };
  const bool merged_last = !whole(layers - 1);
  const int count = layers == 1 ? (merged_last ? 1 : 0) : layers == 2 && whole(0) && !merged_last ? 1 : 2;
  const Scratch<T> buffers(Use::kLayerOutputs, count * raw_size);  // kept across calls: scratch.h
  T* const spare[2] = {buffers.get(), count == 2 ? buffers.get() + raw_size : nullptr};
  const int P = row_groups(S.threads, batch);
  const int team = std::min(S.threads, 2 * P);
  SpinBarrier barrier(team);  // in place of the implicit barriers below (nowait): spin_barrier.h says why
#pragma omp parallel num_threads(team)
  {
    const int one = 1, before = mkl_set_num_threads_local_(&one);
    // A team smaller than asked (OMP_THREAD_LIMIT, nesting) would never fill the barrier: it must know the real size.
    SpinBarrier* sync = omp_get_num_threads() == team ? &barrier : nullptr;
    const T* in = S.x;
    for (int l = 0; l < layers; ++l) {
      const bool last = l == layers - 1;
      const int merge = merges[l];
      T* raw = last && whole(l) ? S.out : (in == spare[0] ? spare[1] : spare[0]);
      const int64_t* w = S.weights + 6 * int64_t(l);
      auto at = [](int64_t address) { return reinterpret_cast<const T*>(address); };
      Args<T> L = S;  // layer l: its input, weights, states and raw output; no stash
      L.input_size = S.input_sizes[l];
      L.x = in;
      L.w_ih = at(w[0]);
      L.packed_ih = reinterpret_cast<const float*>(w[1]);
      L.b_ih = at(w[2]);
      L.w_hh = at(w[3]);
      L.packed_hh = reinterpret_cast<const float*>(w[4]);
      L.b_hh = at(w[5]);
      L.h0 = S.h0 + l * state;
      L.c0 = cell_state ? S.c0 + l * state : nullptr;
      L.gi = nullptr;
      L.keep_gates = 0;
      L.out = raw;
      L.h_n = S.h_n + l * state;
      L.c_n = cell_state ? S.c_n + l * state : nullptr;
      L.h_all = L.c_all = L.ghn = nullptr;
#pragma omp for schedule(static, 1) nowait
      for (int item = 0; item < 2 * P; ++item) {  // direction item % 2, row group item / 2
        const int d = item % 2, p = item / 2;
        forward_direction<T>(L, d, group_start(batch, p, P), group_start(batch, p + 1, P));
      }
      team_barrier(sync);  // the merge, or the next layer, reads both directions
      if (whole(l)) {
        in = raw;
        continue;
      }
      T* merged = last ? S.out : (raw == spare[0] ? spare[1] : spare[0]);
#pragma omp for schedule(static) nowait
      for (int64_t r = 0; r < rows; ++r) {
        const T* f = raw + r * 2 * hidden;
        const T* b = f + hidden;
        T* m = merged + r * hidden;
        if (merge == kSum)
          for (int j = 0; j < hidden; ++j) m[j] = f[j] + b[j];
        else if (merge == kMul)
          for (int j = 0; j < hidden; ++j) m[j] = f[j] * b[j];
        else
          for (int j = 0; j < hidden; ++j) m[j] = (f[j] + b[j]) / T(2);
      }
      team_barrier(sync);  // the next layer reads every merged row
      in = merged;
    }
    mkl_set_num_threads_local_(&before);
  }  // (the region's own barrier: every thread arrives within a spin of the others)
}

// Every layer of an inference call, a batch with lengths run longest first (row_order.h).
template <typename T>
void forward_stack(const Args<T>& S) {
  run_longest_first(S, [](const Args<T>& R) { run_stack(R); });
}

}  // namespace birnn
