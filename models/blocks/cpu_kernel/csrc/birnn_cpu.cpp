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
// Every entry point takes one struct, Args (args.h: the layouts of its tensors), mirrored by
// models/blocks/cpu_kernel/abi.py. The cells and their gate math: cells.h.

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <cstring>
#include <memory>
#include <omp.h>
#include <vector>

#include "activations.h"
#include "args.h"
#include "backward.h"
#include "cells.h"
#include "forward.h"
#include "products.h"
#include "q8_forward.h"  // int8 inference (models.quantize): its entry points are defined there
#include "bf16_forward.h"  // bfloat16 inference (cpu_kernel/bf16.py): its entry points are defined there

using birnn::Args;
using birnn::Cell;

extern "C" {
// The vector width the gate math was compiled for (16 AVX-512, 8 AVX2, 1 scalar): models/blocks/cpu_kernel/abi.py
// checks it matches the library it meant to load.
int birnn_vector_width() {
#ifdef BIRNN_VECTOR
  return BIRNN_VECTOR;
#else
  return 1;
#endif
}
// The layout of Args, for abi.py's check of its mirror: sizeof, and the offset of the last field.
void birnn_args_layout(int64_t* size, int64_t* last_offset) {
  *size = int64_t(sizeof(Args<float>));
  *last_offset = int64_t(offsetof(Args<float>, weights));
}
// A cell's traits (cells.h), for Python: gates, cell_state, apart_hh, second_product, direct, foldable; all 0 for
// a code that is no cell.
void birnn_cell_traits(int cell, birnn::CellTraits* out) { *out = birnn::traits_of(Cell(cell)); }
// The gate activations alone, in place, for tests/test_cpu_kernel_math.py.
void birnn_sigmoid_f32(float* x, int n) { birnn::sigmoid_(x, n); }
void birnn_tanh_f32(float* x, int n) { birnn::tanh_(x, n); }

// Floats of the buffer birnn_pack_hh_f32 fills for this cell and hidden size: both directions' packs, then one
// float saying whether every weight is finite (forward.h's zero_start); 0: this build does not pack (pass null as
// packed_hh).
int64_t birnn_packed_hh_floats(int cell, int hidden) {
  const int64_t packs = int64_t(birnn::packed_hh_floats(Cell(cell), hidden));
  return packs > 0 ? packs + 1 : 0;
}
// Packs both directions' W_hh (2, G, H) for the forward loop's step product into `out`: inference caches it so a
// call does not repack (measured 35-240 us a direction and layer at H = 128-256).
void birnn_pack_hh_f32(int cell, int hidden, const float* w_hh, float* out) {
#ifdef BIRNN_VECTOR
  const birnn::CellTraits c = birnn::traits_of(Cell(cell));
  const int H = hidden, G = c.gates * H, G1 = c.second_product ? G - H : G;
  for (int d = 0; d < 2; ++d) {
    const float* w = w_hh + int64_t(d) * G * H;
    float* o = out + birnn::packed_hh_floats(Cell(cell), H) / 2 * d;
    birnn::PanelGemm::pack(w, true, G1, H, o);
    if (c.second_product) birnn::PanelGemm::pack(w + int64_t(G1) * H, true, H, H, o + birnn::packed_floats(G1, H));
  }
  bool finite = true;
  for (int64_t i = 0; i < 2 * int64_t(G) * H; ++i) finite = finite && std::isfinite(w_hh[i]);
  out[birnn::packed_hh_floats(Cell(cell), H)] = finite ? 1.0f : 0.0f;
#else
  (void)cell;
  (void)hidden;
  (void)w_hh;
  (void)out;
#endif
}
// Floats of both directions' packed W_ih^T (2, G, F); 0: this build does not pack.
int64_t birnn_packed_ih_floats(int cell, int hidden, int input_size) {
  return 2 * int64_t(birnn::packed_floats(birnn::traits_of(Cell(cell)).gates * hidden, input_size));
}
// Packs both directions' W_ih (2, G, F) for the input projections of inference (keep_gates == 0).
void birnn_pack_ih_f32(int cell, int hidden, int input_size, const float* w_ih, float* out) {
#ifdef BIRNN_VECTOR
  const int G = birnn::traits_of(Cell(cell)).gates * hidden;
  for (int d = 0; d < 2; ++d)
    birnn::PanelGemm::pack(w_ih + int64_t(d) * G * input_size, true, G, input_size,
                           out + int64_t(d) * birnn::packed_floats(G, input_size));
#else
  (void)cell;
  (void)hidden;
  (void)input_size;
  (void)w_ih;
  (void)out;
#endif
}
// One layer, both directions (training keeps the stash: keep_gates, h_all, c_all, ghn).
void birnn_forward_f32(const Args<float>* args) { birnn::forward(*args); }
void birnn_forward_f64(const Args<double>* args) { birnn::forward(*args); }
// Every layer of an inference call at once (forward_stack). merges[l]: 0 concat, 1 sum, 2 mul, 3 ave, 4 None
// (last layer only).
void birnn_forward_stack_f32(const Args<float>* args) { birnn::forward_stack(*args); }
void birnn_forward_stack_f64(const Args<double>* args) { birnn::forward_stack(*args); }
// The reverse loops and every gradient of one layer.
void birnn_backward_f32(const Args<float>* args) { birnn::backward(*args); }
void birnn_backward_f64(const Args<double>* args) { birnn::backward(*args); }
}
