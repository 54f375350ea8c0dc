// The products of the kernel (birnn_cpu.cpp): BLAS for float64 and the big training GEMMs, and the step product
// (step_gemm.h's micro-kernel in float32 vector builds; MKL's packed GEMM in scalar float32 builds).
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "cells.h"
#include "step_gemm.h"

extern "C" {
void sgemm_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
            const float*, const int*, const float*, float*, const int*);
void dgemm_(const char*, const char*, const int*, const int*, const int*, const double*, const double*, const int*,
            const double*, const int*, const double*, double*, const int*);
// MKL threads of the calling thread only. PyTorch turns MKL's dynamic adjustment off, so without this every
// small GEMM inside the two-direction parallel region would start its own nested team (measured: 1.5x slower).
int mkl_set_num_threads_local_(const int*);  // the Fortran entry (by reference): it is what libtorch exports
// MKL's packed GEMM (scalar float32 builds): W_hh is packed once per call instead of once per time step (most of a
// small sgemm's time).
size_t sgemm_pack_get_size_(const char*, const int*, const int*, const int*);
void sgemm_pack_(const char*, const char*, const int*, const int*, const int*, const float*, const float*, const int*,
                 float*);
void sgemm_compute_(const char*, const char*, const int*, const int*, const int*, const float*, const int*,
                    const float*, const int*, const float*, float*, const int*);
}

namespace birnn {

// Row-major C (M x N) = op(A) @ op(B) (+ C if accumulate); lda/ldb/ldc are row strides. BLAS is column-major,
// so this computes C^T = op(B)^T op(A)^T.
inline void blas_gemm(bool ta, bool tb, int m, int n, int k, const float* a, int lda, const float* b, int ldb,
                      bool acc, float* c, int ldc) {
  const char opa = tb ? 'T' : 'N', opb = ta ? 'T' : 'N';
  const float one = 1.0f, beta = acc ? 1.0f : 0.0f;
  sgemm_(&opa, &opb, &n, &m, &k, &one, b, &ldb, a, &lda, &beta, c, &ldc);
}
inline void blas_gemm(bool ta, bool tb, int m, int n, int k, const double* a, int lda, const double* b, int ldb,
                      bool acc, double* c, int ldc) {
  const char opa = tb ? 'T' : 'N', opb = ta ? 'T' : 'N';
  const double one = 1.0, beta = acc ? 1.0 : 0.0;
  dgemm_(&opa, &opb, &n, &m, &k, &one, b, &ldb, a, &lda, &beta, c, &ldc);
}

// C (B x N, row stride ldc) = A (B x K, row stride lda) @ W' for a fixed row-major W used at every step:
// W' = W^T (W is N x K: forward, h @ W_hh^T) or W itself (W is K x N: backward, dG @ W_hh).
// float32 packs W once per call (or takes it prepacked): vector builds into step_gemm.h's panels (PanelGemm), scalar
// builds with MKL's packed GEMM; float64 (tests, gradcheck) calls plain dgemm.
template <typename T>
class StepGemm;

#ifdef BIRNN_VECTOR
// AVX2 / AVX-512 builds: the project's own packed micro-kernel (step_gemm.h says why not MKL's).
template <>
class StepGemm<float> : public birnn::PanelGemm {
 public:
  using birnn::PanelGemm::PanelGemm;
};
#else
template <>
class StepGemm<float> {
 public:
  StepGemm(const float* w, bool transposed, int n, int k, const float* = nullptr, bool = false) : n_(n), k_(k) {
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
  StepGemm(const double* w, bool transposed, int n, int k, const float* = nullptr, bool = false)
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

// Floats one packed W^T (K x N) takes: 0 where the step product does not pack (float64, scalar builds).
inline size_t packed_floats(int n, int k) {
#ifdef BIRNN_VECTOR
  return n > 0 ? birnn::PanelGemm::packed_floats(n, k) : 0;
#else
  (void)n;
  (void)k;
  return 0;
#endif
}

// Floats of both directions' packed W_hh^T (the reset-before GRU: its r, z rows, then W_hn, packed apart).
inline size_t packed_hh_floats(Cell cell, int hidden) {
  const CellTraits c = traits_of(cell);
  const int G = c.gates * hidden;
  const size_t one = c.second_product ? packed_floats(G - hidden, hidden) + packed_floats(hidden, hidden)
                                      : packed_floats(G, hidden);
  return 2 * one;
}

}  // namespace birnn
