// The forward loops of the kernel (birnn_cpu.cpp): one direction's time loop, one layer on a thread team, and
// every layer of an inference call in one parallel region.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <memory>
#include <omp.h>
#include <type_traits>
#include <vector>

#include "activations.h"
#include "products.h"
#include "scratch.h"
#include "spin_barrier.h"

namespace {

using birnn::sigmoid_;
using birnn::tanh_;

// Whether the step product can accumulate onto its output (PanelGemm: float32 vector builds).
template <typename T>
constexpr bool kFold = std::is_same<T, float>::value && kPackedBuild;

template <typename T>
void forward_direction(const Layer<T>& L, int d, int b0, int b1, int input_size, const T* x, const T* w_ih, const T* b_ih,
                       const float* packed_ih, const T* w_hh, const float* packed_hh, const T* b_hh, const T* h0,
                       const T* c0, const int64_t* lengths, T* gi, bool keep_gates, T* out, T* h_n, T* c_n,
                       T* h_all, T* c_all, T* ghn) {
  const int B = L.batch, H = L.hidden, G = L.gh(), nb = b1 - b0;  // this thread's rows: [b0, b1) of B
  const bool lstm = L.cell == 0;
  // This direction's input projections x @ W_ih[d]^T, GEMMs on this thread. Training keeps them (then the
  // activated gates) for the backward pass: all steps at once into gi. Inference projects chunks of about 256
  // rows into a small reused buffer instead: a (T, B, 2, G) scratch costs more in first-touch page faults
  // (measured ~30 ms per 50 MB) than its GEMM. With the batch split (nb < B) a step's rows are contiguous but
  // the steps are not: one GEMM a step.
  const T* wi = w_ih + int64_t(d) * G * input_size;
  // Inference with W_ih prepacked (birnn_pack_ih_f32, cached by the caller): the projections on the step
  // product's micro-kernel, measured 1.2-1.3x MKL's sgemm rate at 64 rows on an AVX2 EPYC.
  std::unique_ptr<StepGemm<T>> gemm_ih;
  if (packed_ih != nullptr && !keep_gates)
    gemm_ih.reset(new StepGemm<T>(wi, true, G, input_size, packed_ih + int64_t(d) * packed_floats(G, input_size)));
  // Steps [t_first, t_first + n) of this thread's rows into dst (row stride ld; step k of a split batch at
  // dst + k * dst_step).
  auto project = [&](int t_first, int n, T* dst, int ld, int64_t dst_step) {
    for (int k = 0; k < (nb == B ? 1 : n); ++k) {
      const int rows = nb == B ? n * B : nb;
      const T* xk = x + (int64_t(t_first + k) * B + b0) * input_size;
      if (gemm_ih)
        (*gemm_ih)(rows, xk, input_size, dst + k * dst_step, ld);
      else
        blas_gemm(false, true, rows, G, input_size, xk, input_size, wi, input_size, false, dst + k * dst_step, ld);
    }
  };
  // LSTM inference on the packed step product: the step product accumulates onto the projected rows (bias
  // added once per chunk), so no separate pass adds projection and bias to h @ W_hh^T every step.
  const bool fold = kFold<T> && lstm && !keep_gates;
  const int chunk = keep_gates ? L.steps : std::max(1, std::min(L.steps, 256 / std::max(1, nb)));
  // Uninitialised (every element is written by a projection before it is read): zeroing it cost a pass over
  // up to 512 KB a direction and layer in every inference call.
  const birnn::Scratch<T> local(birnn::Use::kProjections, keep_gates ? 0 : int64_t(chunk) * nb * G);
  if (keep_gates) project(0, L.steps, gi + L.at(0, b0, d, G), 2 * G, L.at(1, 0, 0, G));
  int chunk_start = 0;  // first time index of the chunk in local
  const T* w = w_hh + int64_t(d) * G * H;
  const T* bi = b_ih ? b_ih + int64_t(d) * G : nullptr;
  const T* bh = b_hh ? b_hh + int64_t(d) * G : nullptr;
  T* h = h_n + (int64_t(d) * B + b0) * H;  // the running state of rows b0.. lives in h_n / c_n
  T* c = lstm ? c_n + (int64_t(d) * B + b0) * H : nullptr;
  std::memcpy(h, h0 + (int64_t(d) * B + b0) * H, sizeof(T) * nb * H);
  if (lstm) std::memcpy(c, c0 + (int64_t(d) * B + b0) * H, sizeof(T) * nb * H);
  std::vector<T> pre(fold ? 0 : int64_t(nb) * G), tmp(H);  // (folded: the gates live in local)
  // Reset-before GRU (cell 2): the r, z columns from h, then the n columns from r * h, a second product.
  const bool reset_before = L.cell == 2;
  // W_hh packed by birnn_pack_hh_f32 (inference caches it across calls), or packed here (null).
  const float* packed = packed_hh ? packed_hh + int64_t(d) * packed_hh_floats(L.cell, H) / 2 : nullptr;
  const StepGemm<T> gemm(w, true, reset_before ? 2 * H : G, H, packed);
  // Only the reset-before GRU has a second product (W_hn on r * h); the other cells do not build one.
  const StepGemm<T> gemm_n(w + (reset_before ? int64_t(2) * H * H : 0), true, reset_before || !kPackedBuild ? H : 0, H,
                           packed && reset_before ? packed + packed_floats(2 * H, H) : nullptr);
  std::vector<T> rh(reset_before ? int64_t(nb) * H : 0);
  for (int s = 0; s < L.steps; ++s) {
    const int t = L.time(d, s);
    if (!keep_gates && s % chunk == 0) {
      const int n = std::min(chunk, L.steps - s);
      chunk_start = d == 0 ? s : L.steps - s - n;
      project(chunk_start, n, local.get(), G, int64_t(nb) * G);
      if (fold && bi)  // the bias once per projected row; the step product then adds h @ W_hh^T onto these
        for (int64_t r = 0; r < int64_t(n) * nb; ++r)
          for (int j = 0; j < G; ++j) local.get()[r * G + j] += bi[j];
    }
    if constexpr (kFold<T>) {
      if (fold)  // LSTM inference: the gates' pre-activations in place, projection + bias + h @ W_hh^T
        gemm(nb, h, H, local.get() + int64_t(t - chunk_start) * nb * G, G, true);
    }
    if (!fold) gemm(nb, h, H, pre.data(), G);  // pre = h @ W_hh^T (reset-before: its r, z columns)
    if (reset_before) {
      // r, z for every valid row and r * h; then the n columns: (r * h) @ W_hn^T. b_ih holds both biases.
      for (int b = b0; b < b1; ++b) {
        T* rhb = rh.data() + int64_t(b - b0) * H;
        if (!L.valid(lengths, t, b)) {
          std::memset(rhb, 0, sizeof(T) * H);
          continue;
        }
        const T* xg = keep_gates ? gi + L.at(t, b, d, G) : local.get() + (int64_t(t - chunk_start) * nb + b - b0) * G;
        T* g = pre.data() + int64_t(b - b0) * G;
        for (int j = 0; j < 2 * H; ++j) g[j] += xg[j] + (bi ? bi[j] : T(0));
        sigmoid_(g, 2 * H);
        const T* hb = h + int64_t(b - b0) * H;
        for (int j = 0; j < H; ++j) rhb[j] = g[j] * hb[j];
      }
      gemm_n(nb, rh.data(), H, pre.data() + 2 * H, G);
    }
    for (int b = b0; b < b1; ++b) {
      T* hb = h + int64_t(b - b0) * H;
      T* o = out + L.at(t, b, d, H);
      // The projection, read here once; in training overwritten by the activated gates.
      T* xg = keep_gates ? gi + L.at(t, b, d, G) : local.get() + (int64_t(t - chunk_start) * nb + b - b0) * G;
      if (L.valid(lengths, t, b)) {
        T* g = fold ? xg : pre.data() + int64_t(b - b0) * G;
        if (lstm) {
          T* cb = c + int64_t(b - b0) * H;
          if (!fold)
            for (int j = 0; j < G; ++j) g[j] += xg[j] + (bi ? bi[j] : T(0));
          sigmoid_(g, 2 * H);
          tanh_(g + 2 * H, H);
          sigmoid_(g + 3 * H, H);
          for (int j = 0; j < H; ++j) tmp[j] = cb[j] = g[H + j] * cb[j] + g[j] * g[2 * H + j];
          tanh_(tmp.data(), H);
          for (int j = 0; j < H; ++j) o[j] = hb[j] = g[3 * H + j] * tmp[j];
        } else if (reset_before) {
          for (int j = 2 * H; j < G; ++j) g[j] += xg[j] + (bi ? bi[j] : T(0));
          tanh_(g + 2 * H, H);
          for (int j = 0; j < H; ++j) {
            const T n = g[2 * H + j];
            o[j] = hb[j] = n + g[H + j] * (hb[j] - n);
          }
        } else {
          for (int j = 0; j < 2 * H; ++j) g[j] = (g[j] + (bh ? bh[j] : T(0))) + (xg[j] + (bi ? bi[j] : T(0)));
          sigmoid_(g, 2 * H);
          for (int j = 0; j < H; ++j) {
            const T hn = g[2 * H + j] + (bh ? bh[2 * H + j] : T(0));
            if (ghn) ghn[L.at(t, b, d, H) + j] = hn;
            g[2 * H + j] = (xg[2 * H + j] + (bi ? bi[2 * H + j] : T(0))) + hn * g[j];
          }
          tanh_(g + 2 * H, H);
          for (int j = 0; j < H; ++j) {
            const T n = g[2 * H + j];
            o[j] = hb[j] = n + g[H + j] * (hb[j] - n);
          }
        }
        if (keep_gates) std::memcpy(xg, g, sizeof(T) * G);
      } else {
        std::memset(o, 0, sizeof(T) * H);
        if (keep_gates) std::memset(xg, 0, sizeof(T) * G);
        if (ghn) std::memset(ghn + L.at(t, b, d, H), 0, sizeof(T) * H);
      }
      if (h_all) std::memcpy(h_all + L.at(t, b, d, H), hb, sizeof(T) * H);
      if (c_all) std::memcpy(c_all + L.at(t, b, d, H), c + int64_t(b - b0) * H, sizeof(T) * H);
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
int row_groups(int threads, int batch) { return std::max(1, std::min(threads / 2, batch / kMinRows)); }
// Rows [b0, b1) of group p of P.
inline int group_start(int batch, int p, int groups) { return int(int64_t(batch) * p / groups); }

template <typename T>
void forward(int cell, int steps, int batch, int hidden, int input_size, const T* x, const T* w_ih, const T* b_ih,
             const float* packed_ih, const T* w_hh, const float* packed_hh, const T* b_hh, const T* h0, const T* c0,
             const int64_t* lengths, T* gi, int keep_gates, T* out, T* h_n, T* c_n, T* h_all, T* c_all, T* ghn,
             int threads) {
  const Layer<T> L{cell, steps, batch, hidden};
  const int P = row_groups(threads, batch);
#pragma omp parallel for num_threads(std::min(threads, 2 * P)) schedule(static, 1)
  for (int item = 0; item < 2 * P; ++item) {  // direction item % 2, row group item / 2
    const int d = item % 2, p = item / 2;
    const int one = 1, before = mkl_set_num_threads_local_(&one);
    forward_direction(L, d, group_start(batch, p, P), group_start(batch, p + 1, P), input_size, x, w_ih, b_ih, packed_ih, w_hh, packed_hh, b_hh, h0, c0, lengths, gi, keep_gates != 0,
                      out, h_n, c_n, h_all, c_all, ghn);
    mkl_set_num_threads_local_(&before);
  }
}

// The spin barrier when the team has the size it was made for, else OpenMP's own barrier.
inline void team_barrier(birnn::SpinBarrier* sync) {
  if (sync != nullptr) {
    sync->wait();
  } else {
#pragma omp barrier
  }
}

// Merge codes of forward_stack, in models/merge.py's order: concat, sum, mul, ave, and None (the last layer only:
// the two directions kept apart, (T, B, 2, H), the same bytes as concat).
enum Merge { kConcat = 0, kSum = 1, kMul = 2, kAve = 3, kNone = 4 };

// Every layer of an inference call (no gradients) in one parallel region: per layer the (direction, row group)
// items run forward_direction into the layer's (T, B, 2, H) output, then the team merges the two directions into
// the next layer's input, with the arithmetic of models/merge.py (sum a + b, mul a * b, ave (a + b) / 2: the same
// bits as those torch ops). Why: with one kernel call per layer, each layer paid a ctypes call of 24 arguments,
// its output allocation, the merge as torch ops and a new wake of the thread team: at T = 1 (B = 1, H = 128, 2
// layers) a call cost 285 us, 140 us now (benchmarks/RESULTS.md).
// x (T, B, input_sizes[0]); weights: per layer the addresses w_ih, packed_ih, b_ih, w_hh, packed_hh, b_hh (0 for
// an absent one; packed only in float32 vector builds); h0, c0, h_n, c_n (2L, B, H) (c0/c_n null for GRU);
// out (T, B, H) after a last sum/mul/ave, else (T, B, 2H).
template <typename T>
void forward_stack(int cell, int steps, int batch, int hidden, int layers, const int* input_sizes, const int* merges,
                   const T* x, const int64_t* weights, const T* h0, const T* c0, const int64_t* lengths, T* out,
                   T* h_n, T* c_n, int threads) {
  const Layer<T> L{cell, steps, batch, hidden};
  const int64_t rows = int64_t(steps) * batch, raw_size = rows * 2 * hidden, state = int64_t(2) * batch * hidden;
  const bool lstm = cell == 0;
  // Two buffers of one layer's raw output: a layer writes the one it does not read, and a sum/mul/ave merges
  // into the other (the layer's input, no longer needed). The last layer writes into out where it can.
  // Two layers whose outputs are both kept whole (concat/None, nn.LSTM's stack) need only one: the first layer's
  // output, which the second reads while writing out.
  const auto whole = [&](int l) { return merges[l] == kConcat || merges[l] == kNone; };
  const bool merged_last = !whole(layers - 1);
  const int count = layers == 1 ? (merged_last ? 1 : 0) : layers == 2 && whole(0) && !merged_last ? 1 : 2;
  const birnn::Scratch<T> buffers(birnn::Use::kLayerOutputs, count * raw_size);  // kept across calls: scratch.h
  T* const spare[2] = {buffers.get(), count == 2 ? buffers.get() + raw_size : nullptr};
  const int P = row_groups(threads, batch);
  const int team = std::min(threads, 2 * P);
  birnn::SpinBarrier barrier(team);  // in place of the implicit barriers below (nowait): spin_barrier.h says why
#pragma omp parallel num_threads(team)
  {
    const int one = 1, before = mkl_set_num_threads_local_(&one);
    // A team smaller than asked (OMP_THREAD_LIMIT, nesting) would never fill the barrier: it must know the real size.
    birnn::SpinBarrier* sync = omp_get_num_threads() == team ? &barrier : nullptr;
    const T* in = x;
    for (int l = 0; l < layers; ++l) {
      const bool last = l == layers - 1;
      const int merge = merges[l];
      T* raw = last && whole(l) ? out : (in == spare[0] ? spare[1] : spare[0]);
      const int64_t* w = weights + 6 * int64_t(l);
      auto at = [](int64_t address) { return reinterpret_cast<const T*>(address); };
#pragma omp for schedule(static, 1) nowait
      for (int item = 0; item < 2 * P; ++item) {  // direction item % 2, row group item / 2
        const int d = item % 2, p = item / 2;
        forward_direction<T>(L, d, group_start(batch, p, P), group_start(batch, p + 1, P), input_sizes[l], in,
                          at(w[0]), at(w[2]), reinterpret_cast<const float*>(w[1]), at(w[3]),
                          reinterpret_cast<const float*>(w[4]), at(w[5]), h0 + l * state, lstm ? c0 + l * state : nullptr,
                          lengths, nullptr, false, raw, h_n + l * state, lstm ? c_n + l * state : nullptr, nullptr,
                          nullptr, nullptr);
      }
      team_barrier(sync);  // the merge, or the next layer, reads both directions
      if (whole(l)) {
        in = raw;
        continue;
      }
      T* merged = last ? out : (raw == spare[0] ? spare[1] : spare[0]);
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

}  // namespace
