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
#include "backward.h"
#include "forward.h"
#include "products.h"

using birnn::sigmoid_;
using birnn::tanh_;

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
