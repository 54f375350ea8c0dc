// The per-time-step product of the recurrence, C (rows x N) = A (rows x K) @ B (K x N), with B fixed for the
// whole call (W_hh^T forward, W_hh backward): B is packed once into column panels and every step runs a
// register-blocked FMA micro-kernel over them, single-threaded (each direction's thread runs its own).
//
// Why not MKL's packed sgemm: measured on an AVX2 AMD EPYC it ran the small products of a time step at 3-20
// GFLOP/s (1x64 @ 64x256 took 10 us; a plain loop 6 us), which made the LSTM slower than oneDNN's own JIT GEMM.
// Only float32 on AVX2/AVX-512 builds takes this path; float64 and scalar builds keep BLAS.
//
// Packed layout: panel p (columns p*NR .. p*NR+NR-1, zero beyond N) stores B[k][p*NR + j] at
// packed[(p*K + k)*NR + j]: one contiguous K x NR block a panel, read front to back.

#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "activations.h"
#include "aligned.h"

namespace birnn {

#ifdef BIRNN_VECTOR
constexpr int kPanel = 2 * BIRNN_VECTOR;  // NR: two vectors of columns per panel
#if BIRNN_VECTOR == 16
// MR x NP panels: 6 rows x 64 columns, 24 accumulators of AVX-512's 32 registers (4 column loads and 6 broadcasts
// per 24 FMAs). Measured against 8 x 32 (16 accumulators) on an Intel Xeon with AVX-512, one thread, whole LSTM/GRU
// calls: 0.91-0.97x the time at B = 16-64, H = 128-256, the same bits; 12 x 32 0.94-0.97x, 7 x 64 0.96-1.00x,
// 5 x 96 and 3 x 128 1.2-1.5x (benchmarks/archive/RESULTS-2026-12.md, optimisation #19).
constexpr int kRows = 6;
constexpr int kPanelsAtOnce = 2;
// A product whose W is read once a call (the input projections: W_ih comes from L3) over 7 to 24 rows (a short
// request) takes blocks of 12 rows x 1 panel (24 accumulators) instead: each column load then feeds 12 rows, not 6,
// so the pass that brings a block of W from L3 asks about 28 GB/s of it instead of 55 and keeps the FMA units busy
// instead of waiting. 7 to 11 rows run as one block of that many. Measured (benchmarks/archive/RESULTS-2026-12.md,
// #35): B = 1, H = 128, 2 layers, one thread, the call 0.87-0.95x the time at T = 8-12, 0.95x at T = 15 and 24. Not
// for the step products: their W_hh is in L2, and there (B = 16) 12-row blocks were up to 8% slower.
constexpr int kShortRows = 12;
#else
constexpr int kRows = 6;  // MR: 12 accumulators of AVX2's 16 registers (the classic 6x16 sgemm kernel)
constexpr int kPanelsAtOnce = 1;
constexpr int kShortRows = 0;  // 16 registers: no wider block
#endif

// MR rows x NP panels of C at once; acc stays in registers (MR, NP compile-time). `cols` is how many columns
// of the last panel are real (kPanel except at the right edge, where C gets only those). ACC: C += A @ B (the
// sums start from C's values) instead of C = A @ B.
template <int MR, int NP, bool ACC>
inline void micro_kernel(int K, const float* a, int lda, const float* panel, int64_t panel_size, float* c, int ldc,
                         int cols) {
  vf acc[MR][2 * NP];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < 2 * NP; ++j) acc[i][j] = vset(0.0f);
  if (ACC) {
    for (int i = 0; i < MR; ++i) {
      const float* row = c + int64_t(i) * ldc;
      for (int p = 0; p < NP; ++p) {
        if (p < NP - 1 || cols == kPanel) {
          acc[i][2 * p] = vload(row + p * kPanel);
          acc[i][2 * p + 1] = vload(row + p * kPanel + BIRNN_VECTOR);
        } else {
          alignas(64) float edge[kPanel] = {};
          std::memcpy(edge, row + p * kPanel, sizeof(float) * cols);
          acc[i][2 * p] = vload(edge);
          acc[i][2 * p + 1] = vload(edge + BIRNN_VECTOR);
        }
      }
    }
  }
  for (int k = 0; k < K; ++k) {
    vf b[2 * NP];
    for (int p = 0; p < NP; ++p) {
      b[2 * p] = vload(panel + p * panel_size + int64_t(k) * kPanel);
      b[2 * p + 1] = vload(panel + p * panel_size + int64_t(k) * kPanel + BIRNN_VECTOR);
    }
    for (int i = 0; i < MR; ++i) {
      const vf ai = vset(a[int64_t(i) * lda + k]);
      for (int j = 0; j < 2 * NP; ++j) acc[i][j] = vfmadd(ai, b[j], acc[i][j]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    float* row = c + int64_t(i) * ldc;
    for (int p = 0; p < NP; ++p) {
      if (p < NP - 1 || cols == kPanel) {
        vstore(row + p * kPanel, acc[i][2 * p]);
        vstore(row + p * kPanel + BIRNN_VECTOR, acc[i][2 * p + 1]);
      } else {
        alignas(64) float edge[kPanel];
        vstore(edge, acc[i][2 * p]);
        vstore(edge + BIRNN_VECTOR, acc[i][2 * p + 1]);
        std::memcpy(row + p * kPanel, edge, sizeof(float) * cols);
      }
    }
  }
}

// Panels [p_begin, p_end) for MR rows: groups of NP panels (more independent accumulators when MR is small: one
// row alone would wait on its FMA latency), then the leftover panels one at a time.
template <int MR, int NP, bool ACC>
inline void row_block(int K, int N, const float* a, int lda, const float* packed, float* c, int ldc, int p_begin,
                      int p_end) {
  const int64_t size = int64_t(K) * kPanel;
  int p = p_begin;
  for (; p + NP <= p_end; p += NP) {
    const int cols = std::min(kPanel, N - (p + NP - 1) * kPanel);
    micro_kernel<MR, NP, ACC>(K, a, lda, packed + p * size, size, c + p * kPanel, ldc, cols);
  }
  for (; p < p_end; ++p)
    micro_kernel<MR, 1, ACC>(K, a, lda, packed + p * size, size, c + p * kPanel, ldc,
                             std::min(kPanel, N - p * kPanel));
}

class PanelGemm {
 public:
  // Floats that B (K x N) takes packed.
  static size_t packed_floats(int n, int k) { return size_t((n + kPanel - 1) / kPanel) * k * kPanel; }
  // Packs B = W^T for a row-major W (N x K) when `transposed`, else W itself (K x N), into `out`
  // (packed_floats(n, k) floats). Reads W row by row (sequential), writes each row's columns into its panel.
  static void pack(const float* w, bool transposed, int n, int k, float* out) {
    std::memset(out, 0, sizeof(float) * packed_floats(n, k));
    if (transposed) {
      for (int col = 0; col < n; ++col) {
        float* dst = out + size_t(col / kPanel) * k * kPanel + col % kPanel;
        const float* src = w + int64_t(col) * k;
        for (int kk = 0; kk < k; ++kk) dst[size_t(kk) * kPanel] = src[kk];
      }
    } else {
      for (int kk = 0; kk < k; ++kk)
        for (int col = 0; col < n; ++col)
          out[(size_t(col / kPanel) * k + kk) * kPanel + col % kPanel] = w[int64_t(kk) * n + col];
    }
  }
  // Packs W now (owned), or, when `prepacked` is given, uses that buffer as is (packed by `pack` with the same
  // n, k; the caller keeps it alive): inference caches the packed W_hh across calls.
  // `read_once`: W is read once a call (the input projections), which picks kShortRows blocks for short calls.
  PanelGemm(const float* w, bool transposed, int n, int k, const float* prepacked = nullptr, bool read_once = false)
      : n_(n), k_(k), read_once_(read_once) {
    if (prepacked != nullptr) {
      data_ = prepacked;
    } else {
      own_.resize(packed_floats(n, k));
      pack(w, transposed, n, k, own_.data());
      data_ = own_.data();
    }
  }
  PanelGemm(const PanelGemm&) = delete;  // data_ may point into own_
  PanelGemm& operator=(const PanelGemm&) = delete;
  // C = A @ B, or with `accumulate` C += A @ B.
  void operator()(int rows, const float* a, int lda, float* c, int ldc, bool accumulate = false) const {
    if (accumulate)
      run<true>(rows, a, lda, c, ldc);
    else
      run<false>(rows, a, lda, c, ldc);
  }

 private:
  template <bool ACC>
  void run(int rows, const float* a, int lda, float* c, int ldc) const {
    const int panels = (n_ + kPanel - 1) / kPanel;
    // A block of panels at a time (about 128 KB: stays in L2), every row over it before the next block: B is
    // read from L3/memory once per call, not once per block of rows (W_hh of H = 256 is 1 MB, more than the L2
    // of many CPUs). The same sums in the same order, so the same result.
    const int step = std::max(4, int(131072 / (int64_t(k_) * kPanel * sizeof(float))));
    const bool short_call = read_once_ && kShortRows > 0 && rows > kRows && rows <= 2 * kShortRows;
    const int block = short_call ? kShortRows : kRows;
    const int full = rows - rows % block;
    const float* a_rest = a + int64_t(full) * lda;
    float* c_rest = c + int64_t(full) * ldc;
    for (int p = 0; p < panels; p += step) {
      const int e = std::min(panels, p + step);
      for (int m = 0; m < full; m += block) {
        const float* am = a + int64_t(m) * lda;
        float* cm = c + int64_t(m) * ldc;
        if constexpr (kShortRows > 0) {
          if (short_call) {
            row_block<kShortRows, 1, ACC>(k_, n_, am, lda, data_, cm, ldc, p, e);
            continue;
          }
        }
        row_block<kRows, kPanelsAtOnce, ACC>(k_, n_, am, lda, data_, cm, ldc, p, e);
      }
      rest<ACC>(rows - full, a_rest, lda, c_rest, ldc, p, e);
    }
  }

  // The last `rows` rows (fewer than a block) over panels [p, e): smaller blocks, more panels each to keep enough
  // FMAs in flight; 7 to 11 (AVX-512's short calls, kShortRows) one block of them.
  template <bool ACC>
  void rest(int rows, const float* a, int lda, float* c, int ldc, int p, int e) const {
    switch (rows) {
      case 1: row_block<1, 4, ACC>(k_, n_, a, lda, data_, c, ldc, p, e); break;
      case 2: row_block<2, 3, ACC>(k_, n_, a, lda, data_, c, ldc, p, e); break;
      case 3: row_block<3, 2, ACC>(k_, n_, a, lda, data_, c, ldc, p, e); break;
      case 4: row_block<4, 1, ACC>(k_, n_, a, lda, data_, c, ldc, p, e); break;
      case 5: row_block<5, 1, ACC>(k_, n_, a, lda, data_, c, ldc, p, e); break;
      case 6: row_block<6, 2, ACC>(k_, n_, a, lda, data_, c, ldc, p, e); break;
      case 7: row_block<7, 1, ACC>(k_, n_, a, lda, data_, c, ldc, p, e); break;
      case 8: row_block<8, 1, ACC>(k_, n_, a, lda, data_, c, ldc, p, e); break;
      case 9: row_block<9, 1, ACC>(k_, n_, a, lda, data_, c, ldc, p, e); break;
      case 10: row_block<10, 1, ACC>(k_, n_, a, lda, data_, c, ldc, p, e); break;
      case 11: row_block<11, 1, ACC>(k_, n_, a, lda, data_, c, ldc, p, e); break;
      default: break;
    }
  }

  int n_, k_;
  bool read_once_;
  const float* data_;
  LineVector<float> own_;  // on a cache line (aligned.h), as the 64-byte column loads want
};
#endif

}  // namespace birnn
