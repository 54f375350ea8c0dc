// The products of the kernel (birnn_cpu.cpp): BLAS for float64 and the big training GEMMs, the step product
// (step_gemm.h's micro-kernel in vector builds), and the layout helpers every loop shares.
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "step_gemm.h"

extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*);
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*, const int*,
            const double*, const int*, const double*, double*, const int*);
// MKL's packed GEMM: W_hh is packed once per call instead of once per time step (most of a small sgemm's time).
// MKL threads of the calling thread only. PyTorch turns MKL's dynamic adjustment off, so without this every
// small GEMM inside the two-direction parallel region would start its own nested team (measured: 1.5x slower).
int mkl_set_num_threads_local_(const int*);  // the Fortran entry (by reference): it is what libtorch exports
size_t sgemm_pack_get_size_(const char*, const int*, const int*, const int*);
void sgemm_pack_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
                 float*);
void sgemm_compute_(const char*, const char*, const int*, const int*, const int*, const float*, const int*,
                    const float*, const int*, const float*, float*, const int*);
}

namespace {


// Row-major C (M x N) = op(A) @ op(B) (+ C if accumulate); lda/ldb/ldc are row strides. BLAS is column-major,
// so this computes C^T = op(B)^T op(A)^T.
void blas_gemm(bool ta, bool tb, int m, int n, int k, const float* a, int lda, const float* b, int ldb, bool acc,
               float* c, int ldc) {
  const char opa = tb ? 'T' : 'N', opb = ta ? 'T' : 'N';
  const float one = 1.0f, beta = acc ? 1.0f : 0.0f;
  sgemm_(&opa, &opb, &n, &m, &k, &one, b, &ldb, a, &lda, &beta, c, &ldc);
}
void blas_gemm(bool ta, bool tb, int m, int n, int k, const double* a, int lda, const double* b, int ldb, bool acc,
               double* c, int ldc) {
  const char opa = tb ? 'T' : 'N', opb = ta ? 'T' : 'N';
  const double one = 1.0, beta = acc ? 1.0 : 0.0;
  dgemm_(&opa, &opb, &n, &m, &k, &one, b, &ldb, a, &lda, &beta, c, &ldc);
}

// C (B x N, row stride ldc) = A (B x K, row stride lda) @ W' for a fixed row-major W used at every step:
// W' = W^T (W is N x K: forward, h @ W_hh^T) or W itself (W is K x N: backward, dG @ W_hh).
// float32 packs W once with MKL's packed GEMM; float64 (tests, gradcheck) calls plain dgemm.
template <typename T>
class StepGemm;

#ifdef BIRNN_VECTOR
// AVX2 / AVX-512 builds: the project's own packed micro-kernel (models/blocks/cpu_kernel/csrc/step_gemm.h says why not MKL's).
template <>
class StepGemm<float> : public birnn::PanelGemm {
 public:
  using birnn::PanelGemm::PanelGemm;
};
#else
template <>
class StepGemm<float> {
 public:
  StepGemm(const float* w, bool transposed, int n, int k, const float* = nullptr) : n_(n), k_(k) {
    const char id = 'A', trans = transposed ? 'T' : 'N';
    const int ld = transposed ? k : n, one_row = 1;  // the packed size does not depend on the row count
    const float one = 1.0f;
    packed_.resize(sgemm_pack_get_size_(&id, &n_, &one_row, &k_) / sizeof(float) + 1);
    sgemm_pack_(&id, &trans, &n_, &one_row, &k_, &one, w, &ld, packed_.data());
  }
  void operator()(int rows, const float* a, int lda, float* c, int ldc) const {
    const char pa = 'P', nb = 'N';
    const float zero = 0.0f;
    sgemm_compute_(&pa, &nb, &n_, &rows, &k_, packed_.data(), &n_, a, &lda, &zero, c, &ldc);
  }

 private:
  int n_, k_;
  std::vector<float> packed_;
};
#endif

template <>
class StepGemm<double> {
 public:
  StepGemm(const double* w, bool transposed, int n, int k, const float* = nullptr)
      : w_(w), transposed_(transposed), n_(n), k_(k) {}
  void operator()(int rows, const double* a, int lda, double* c, int ldc) const {
    blas_gemm(false, transposed_, rows, n_, k_, a, lda, w_, transposed_ ? k_ : n_, false, c, ldc);
  }

 private:
  const double* w_;
  bool transposed_;
  int n_, k_;
};

#ifdef BIRNN_VECTOR
constexpr bool kPackedBuild = true;  // the step product is PanelGemm: an unused second product costs nothing
#else
constexpr bool kPackedBuild = false;  // MKL's pack is not asked for an empty matrix
#endif

template <typename T>
struct Layer {
  int cell;  // 0 LSTM, 1 GRU, 2 GRU with the reset gate before the recurrent product (Keras reset_after=False)
  int steps, batch, hidden;
  int gh() const { return (cell == 0 ? 4 : 3) * hidden; }
  // time index of processing step s in direction d
  int time(int d, int s) const { return d == 0 ? s : steps - 1 - s; }
  bool valid(const int64_t* lengths, int t, int b) const { return lengths == nullptr || t < lengths[b]; }
  // (T, B, 2, n) element offset of row b, direction d, step t
  int64_t at(int t, int b, int d, int n) const { return ((int64_t(t) * batch + b) * 2 + d) * n; }
};

// Floats one packed W^T (K x N) takes: 0 where the step product does not pack (float64, scalar builds).
size_t packed_floats(int n, int k) {
#ifdef BIRNN_VECTOR
  return n > 0 ? birnn::PanelGemm::packed_floats(n, k) : 0;
#else
  (void)n;
  (void)k;
  return 0;
#endif
}

// Floats of both directions' packed W_hh^T (the reset-before GRU: its r, z rows, then W_hn, packed apart).
size_t packed_hh_floats(int cell, int hidden) {
  const size_t one = cell == 2 ? packed_floats(2 * hidden, hidden) + packed_floats(hidden, hidden)
                               : packed_floats((cell == 0 ? 4 : 3) * hidden, hidden);
  return 2 * one;
}

}  // namespace
