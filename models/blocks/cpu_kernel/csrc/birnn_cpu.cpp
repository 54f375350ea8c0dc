// One bidirectional LSTM/GRU layer on CPU: both directions at once, one OpenMP thread each; with more than two
// threads each direction's batch rows are split into groups, a thread per direction and group (row_groups).
//
// Each direction's thread first computes its input projections (BLAS GEMMs on that thread), then runs its time
// loop: per step one small product h @ W_hh^T (step_gemm.h: W_hh packed once per call, a register-blocked FMA
// micro-kernel) and one fused, vectorised pass of gate math per row (activations.h), instead of ~10 ATen
// operator dispatches per step. The two directions are independent, so neither waits for the other, and the
// products of one direction stay on one thread: measured faster than splitting small per-step products over two
// threads. In training the reverse loop gives the gate pre-activations' gradients, then the threads compute the
// weight and bias gradients (GEMMs over all steps; a direction and a slice of gate rows each), then split the
// input gradient.
//
// Layouts (row-major, contiguous; T steps, B rows, F inputs, H hidden, G = 4H LSTM | 3H GRU, d = direction):
//   x (T, B, F); w_ih (2, G, F); b_ih (2, G) (LSTM: b_ih + b_hh); w_hh (2, G, H); b_hh (2, G) GRU only
//   h0, c0 (2, B, H); lengths (B,) int64 or null (right padding: step t of row b is valid iff t < len[b])
//   gi (T, B, 2, G) with keep_gates (training): the projections, then the activated gates; else unused (null)
//   out (T, B, 2, H) zero at padded steps; h_n, c_n (2, B, H): the state at each row's last valid step
//   stash for the backward loop: h_all, c_all (T, B, 2, H) state after each step (carried through padding),
//   ghn (T, B, 2, H) GRU's W_hn h + b_hn.
// Gate order as torch.nn: LSTM i, f, g, o; GRU r, z, n; GRU h' = n + z * (h - n) as ATen computes it.
// At padded steps a row's state is not updated, so the backward direction starts at each row's last valid
// step and h_n/c_n are exact, with no packing.

#include <cmath>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <memory>
#include <omp.h>
#include <vector>

#include "activations.h"
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

using birnn::sigmoid_;
using birnn::tanh_;

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
  const int chunk = keep_gates ? L.steps : std::max(1, std::min(L.steps, 256 / std::max(1, nb)));
  // Uninitialised (every element is written by a projection before it is read): zeroing it cost a pass over
  // up to 512 KB a direction and layer in every inference call.
  std::unique_ptr<T[]> local(keep_gates ? nullptr : new T[int64_t(chunk) * nb * G]);
  if (keep_gates) project(0, L.steps, gi + L.at(0, b0, d, G), 2 * G, L.at(1, 0, 0, G));
  int chunk_start = 0;  // first time index of the chunk in local
  const T* w = w_hh + int64_t(d) * G * H;
  const T* bi = b_ih ? b_ih + int64_t(d) * G : nullptr;
  const T* bh = b_hh ? b_hh + int64_t(d) * G : nullptr;
  T* h = h_n + (int64_t(d) * B + b0) * H;  // the running state of rows b0.. lives in h_n / c_n
  T* c = lstm ? c_n + (int64_t(d) * B + b0) * H : nullptr;
  std::memcpy(h, h0 + (int64_t(d) * B + b0) * H, sizeof(T) * nb * H);
  if (lstm) std::memcpy(c, c0 + (int64_t(d) * B + b0) * H, sizeof(T) * nb * H);
  std::vector<T> pre(int64_t(nb) * G), tmp(H);
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
    }
    gemm(nb, h, H, pre.data(), G);  // pre = h @ W_hh^T (reset-before: its r, z columns)
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
        T* g = pre.data() + int64_t(b - b0) * G;
        if (lstm) {
          T* cb = c + int64_t(b - b0) * H;
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

// Merge codes of forward_stack, in models/merge.py's order: concat, sum, mul, ave, and None (the last layer only:
// the two directions kept apart, (T, B, 2, H), the same bytes as concat).
enum Merge { kConcat = 0, kSum = 1, kMul = 2, kAve = 3, kNone = 4 };

// Every layer of an inference call (no gradients) in one parallel region: per layer the (direction, row group)
// items run forward_direction into the layer's (T, B, 2, H) output, then the team merges the two directions into
// the next layer's input, with the arithmetic of models/merge.py (sum a + b, mul a * b, ave (a + b) / 2: the same
// bits as those torch ops). Why: with one kernel call per layer, a short request (B = 1, T = 10) spent more time in
// Python between the layers (a ctypes call of 24 arguments, allocations, the merge as torch ops) than in the
// kernel, and each layer woke the thread team anew.
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
  const bool merged_last = merges[layers - 1] != kConcat && merges[layers - 1] != kNone;
  const int count = layers > 1 ? 2 : merged_last ? 1 : 0;
  std::unique_ptr<T[]> buffers(count > 0 ? new T[count * raw_size] : nullptr);
  T* const spare[2] = {buffers.get(), count == 2 ? buffers.get() + raw_size : nullptr};
  const int P = row_groups(threads, batch);
#pragma omp parallel num_threads(std::min(threads, 2 * P))
  {
    const int one = 1, before = mkl_set_num_threads_local_(&one);
    const T* in = x;
    for (int l = 0; l < layers; ++l) {
      const bool last = l == layers - 1;
      const int merge = merges[l];
      T* raw = last && (merge == kConcat || merge == kNone) ? out : (in == spare[0] ? spare[1] : spare[0]);
      const int64_t* w = weights + 6 * int64_t(l);
      auto at = [](int64_t address) { return reinterpret_cast<const T*>(address); };
#pragma omp for schedule(static, 1)
      for (int item = 0; item < 2 * P; ++item) {  // direction item % 2, row group item / 2
        const int d = item % 2, p = item / 2;
        forward_direction<T>(L, d, group_start(batch, p, P), group_start(batch, p + 1, P), input_sizes[l], in,
                          at(w[0]), at(w[2]), reinterpret_cast<const float*>(w[1]), at(w[3]),
                          reinterpret_cast<const float*>(w[4]), at(w[5]), h0 + l * state, lstm ? c0 + l * state : nullptr,
                          lengths, nullptr, false, raw, h_n + l * state, lstm ? c_n + l * state : nullptr, nullptr,
                          nullptr, nullptr);
      }  // (the implicit barrier: the merge reads both directions)
      if (merge == kConcat || merge == kNone) {
        in = raw;
        continue;
      }
      T* merged = last ? out : (raw == spare[0] ? spare[1] : spare[0]);
#pragma omp for schedule(static)
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
      in = merged;
    }
    mkl_set_num_threads_local_(&before);
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

extern "C" {
// The vector width the gate math was compiled for (16 AVX-512, 8 AVX2, 1 scalar): models/blocks/cpu_kernel/__init__.py checks
// it matches the library it meant to load.
int birnn_vector_width() {
#ifdef BIRNN_VECTOR
  return BIRNN_VECTOR;
#else
  return 1;
#endif
}
// The gate activations alone, in place, for tests/test_cpu_kernel_math.py.
void birnn_sigmoid_f32(float* x, int n) { sigmoid_(x, n); }
void birnn_tanh_f32(float* x, int n) { tanh_(x, n); }

// C entry points for ctypes (float32 and float64). Null pointers: b_hh without bias or for LSTM, lengths
// without padding, c0/c_n/c_all for GRU, the stash when no gradient is needed.
// Floats of the buffer birnn_pack_hh_f32 fills for this cell and hidden size; 0: this build does not pack (pass
// null as packed_hh).
int64_t birnn_packed_hh_floats(int cell, int hidden) { return int64_t(packed_hh_floats(cell, hidden)); }
// Packs both directions' W_hh (2, G, H) for the forward loop's step product into `out`: inference caches it so a
// call does not repack (measured 35-240 us a direction and layer at H = 128-256).
void birnn_pack_hh_f32(int cell, int hidden, const float* w_hh, float* out) {
#ifdef BIRNN_VECTOR
  const int H = hidden, G = (cell == 0 ? 4 : 3) * H;
  for (int d = 0; d < 2; ++d) {
    const float* w = w_hh + int64_t(d) * G * H;
    float* o = out + packed_hh_floats(cell, H) / 2 * d;
    birnn::PanelGemm::pack(w, true, cell == 2 ? 2 * H : G, H, o);
    if (cell == 2) birnn::PanelGemm::pack(w + int64_t(2) * H * H, true, H, H, o + packed_floats(2 * H, H));
  }
#else
  (void)cell;
  (void)hidden;
  (void)w_hh;
  (void)out;
#endif
}
// Floats of both directions' packed W_ih^T (2, G, F); 0: this build does not pack.
int64_t birnn_packed_ih_floats(int cell, int hidden, int input_size) {
  return 2 * int64_t(packed_floats((cell == 0 ? 4 : 3) * hidden, input_size));
}
// Packs both directions' W_ih (2, G, F) for the input projections of inference (keep_gates == 0).
void birnn_pack_ih_f32(int cell, int hidden, int input_size, const float* w_ih, float* out) {
#ifdef BIRNN_VECTOR
  const int G = (cell == 0 ? 4 : 3) * hidden;
  for (int d = 0; d < 2; ++d)
    birnn::PanelGemm::pack(w_ih + int64_t(d) * G * input_size, true, G, input_size,
                           out + int64_t(d) * packed_floats(G, input_size));
#else
  (void)cell;
  (void)hidden;
  (void)input_size;
  (void)w_ih;
  (void)out;
#endif
}
// packed_ih, packed_hh: null, or W_ih / W_hh packed by birnn_pack_ih_f32 / birnn_pack_hh_f32 from these weights
// (float32 vector builds; packed_ih is read in inference only).
void birnn_forward_f32(int cell, int steps, int batch, int hidden, int input_size, const float* x, const float* w_ih,
                       const float* packed_ih, const float* b_ih, const float* w_hh, const float* packed_hh,
                       const float* b_hh, const float* h0, const float* c0, const int64_t* lengths, float* gi,
                       int keep_gates, float* out, float* h_n, float* c_n, float* h_all, float* c_all, float* ghn,
                       int threads) {
  forward(cell, steps, batch, hidden, input_size, x, w_ih, b_ih, packed_ih, w_hh, packed_hh, b_hh, h0, c0, lengths,
          gi, keep_gates, out, h_n, c_n, h_all, c_all, ghn, threads);
}
void birnn_forward_f64(int cell, int steps, int batch, int hidden, int input_size, const double* x,
                       const double* w_ih, const double* b_ih, const double* w_hh, const double* b_hh,
                       const double* h0, const double* c0, const int64_t* lengths, double* gi, int keep_gates,
                       double* out, double* h_n, double* c_n, double* h_all, double* c_all, double* ghn,
                       int threads) {
  forward(cell, steps, batch, hidden, input_size, x, w_ih, b_ih, nullptr, w_hh, nullptr, b_hh, h0, c0, lengths,
          gi, keep_gates, out, h_n, c_n, h_all, c_all, ghn, threads);
}
// Every layer of an inference call at once (forward_stack). merges[l]: 0 concat, 1 sum, 2 mul, 3 ave, 4 None
// (last layer only); weights: 6 addresses a layer (w_ih, packed_ih, b_ih, w_hh, packed_hh, b_hh; 0 when absent).
void birnn_forward_stack_f32(int cell, int steps, int batch, int hidden, int layers, const int* input_sizes,
                             const int* merges, const float* x, const int64_t* weights, const float* h0,
                             const float* c0, const int64_t* lengths, float* out, float* h_n, float* c_n, int threads) {
  forward_stack(cell, steps, batch, hidden, layers, input_sizes, merges, x, weights, h0, c0, lengths, out, h_n, c_n,
                threads);
}
void birnn_forward_stack_f64(int cell, int steps, int batch, int hidden, int layers, const int* input_sizes,
                             const int* merges, const double* x, const int64_t* weights, const double* h0,
                             const double* c0, const int64_t* lengths, double* out, double* h_n, double* c_n,
                             int threads) {
  forward_stack(cell, steps, batch, hidden, layers, input_sizes, merges, x, weights, h0, c0, lengths, out, h_n, c_n,
                threads);
}
void birnn_backward_f32(int cell, int steps, int batch, int hidden, int input_size, const float* d_out,
                        const float* x, const float* w_ih, const float* w_hh, const float* h0, const float* c0,
                        const int64_t* lengths, const float* h_all, const float* c_all, const float* gates,
                        const float* ghn, float* dh, float* dc, float* d_gi, float* d_gh, float* d_x, float* d_w_ih,
                        float* d_b_ih, float* d_w_hh, float* d_b_hh, int threads) {
  backward(cell, steps, batch, hidden, input_size, d_out, x, w_ih, w_hh, h0, c0, lengths, h_all, c_all, gates, ghn,
           dh, dc, d_gi, d_gh, d_x, d_w_ih, d_b_ih, d_w_hh, d_b_hh, threads);
}
void birnn_backward_f64(int cell, int steps, int batch, int hidden, int input_size, const double* d_out,
                        const double* x, const double* w_ih, const double* w_hh, const double* h0, const double* c0,
                        const int64_t* lengths, const double* h_all, const double* c_all, const double* gates,
                        const double* ghn, double* dh, double* dc, double* d_gi, double* d_gh, double* d_x,
                        double* d_w_ih, double* d_b_ih, double* d_w_hh, double* d_b_hh, int threads) {
  backward(cell, steps, batch, hidden, input_size, d_out, x, w_ih, w_hh, h0, c0, lengths, h_all, c_all, gates, ghn,
           dh, dc, d_gi, d_gh, d_x, d_w_ih, d_b_ih, d_w_hh, d_b_hh, threads);
}
}
