// The one struct every C entry point of the kernel takes (birnn_cpu.cpp): a call's sizes and pointers, one layer
// (forward, backward) or every layer of an inference call (forward_stack). Its layout is the kernel's signature:
// models/blocks/cpu_kernel/abi.py mirrors it field by field as a ctypes.Structure and checks sizeof and the offset
// of the last field (birnn_args_layout) when it loads the library. Change both together, nowhere else.
//
// Layouts (row-major, contiguous; T steps, B rows, F inputs, H hidden, G = gates * H, d = direction):
//   x (T, B, F); w_ih (2, G, F); b_ih (2, G) (b_ih + b_hh where the cell folds them); w_hh (2, G, H);
//   b_hh (2, G) for a cell that keeps it apart (kApartHh), else null; h0, c0 (2, B, H) (c0 null without a cell
//   state); lengths (B,) int64 or null (right padding: step t of row b is valid iff t < lengths[b]).
//   gi (T, B, 2, G) with keep_gates (training): the projections, then the activated gates; else null.
//   out (T, B, 2, H) zero at padded steps; h_n, c_n (2, B, H): the state at each row's last valid step.
//   The stash for the reverse loop: h_all, c_all (T, B, 2, H) the state after each step (carried through
//   padding), ghn (T, B, 2, H) W_hn h + b_hn (kApartHh); all null when no gradient is needed.
//   Backward: d_out (T, B, 2, H); dh, dc (2, B, H) in d h_n / d c_n, out d h0 / d c0; d_x (T, B, F) or null;
//   d_w_ih, d_w_hh, d_b_ih, d_b_hh as their weights (the biases may be null). The gate gradients are the
//   backward's own scratch (backward.h, GateGrads).
// At padded steps a row's state is not updated, so the backward direction starts at each row's last valid step and
// h_n/c_n are exact, with no packing.
//   forward_stack: input_sizes, merges (layers,) and weights (6 addresses a layer: w_ih, packed_ih, b_ih, w_hh,
//   packed_hh, b_hh; 0 when absent); h0, c0, h_n, c_n (2 * layers, B, H); out (T, B, H) after a last
//   sum/mul/ave, else (T, B, 2H).
//   packed_ih, packed_hh: null, or W_ih / W_hh packed by birnn_pack_ih_f32 / birnn_pack_hh_f32 (float32 vector
//   builds; packed_ih is read in inference only).
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>
#include <vector>

#include "cells.h"

namespace birnn {

template <typename T>
struct Args {
  Cell cell;
  int32_t steps, batch, hidden, input_size;
  int32_t layers;      // forward_stack only
  int32_t keep_gates;  // training: gi keeps the projections, then the activated gates
  int32_t threads;
  const T* x;
  const T* w_ih;
  const float* packed_ih;
  const T* b_ih;
  const T* w_hh;
  const float* packed_hh;
  const T* b_hh;
  const T* h0;
  const T* c0;
  const int64_t* lengths;
  T* gi;
  T* out;
  T* h_n;
  T* c_n;
  T* h_all;
  T* c_all;
  T* ghn;
  const T* d_out;
  T* dh;
  T* dc;
  T* d_x;
  T* d_w_ih;
  T* d_b_ih;
  T* d_w_hh;
  T* d_b_hh;
  const int32_t* input_sizes;
  const int32_t* merges;
  const int64_t* weights;

  // G: rows of W_ih and W_hh a direction
  int gh() const { return traits_of(cell).gates * hidden; }
  // time index of processing step s in direction d
  int time(int d, int s) const { return d == 0 ? s : steps - 1 - s; }
  bool valid(int t, int b) const { return lengths == nullptr || t < lengths[b]; }
  // (T, B, 2, n) element offset of row b, direction d, step t
  int64_t at(int t, int b, int d, int n) const { return ((int64_t(t) * batch + b) * 2 + d) * n; }
};

// The rows of [b0, b1) each step must compute, and where they sit in a packed sequence. A product row depends only
// on its own input row, so covering the first n rows gives them the values a product over all rows would. With
// lengths sorted longest first over the rows (models/blocks/base.py sorts a training batch with lengths so,
// row_order.h an inference batch), the rows valid at step t are a prefix, at(t) of them, and the padded rows after
// it are skipped: about half the work when lengths are uniform. Packed, step t's valid rows are rows
// [offset(t), offset(t) + at(t)) of one (total(), n) matrix, PackedSequence's layout: the input projections and the
// weight and input gradients run as one GEMM over those rows (gathered by pack, scattered back by unpack) instead of
// over every (t, b).
// Otherwise (no lengths, or not sorted) every row counts at every step and the packed layout is the plain one.
class StepRows {
 public:
  StepRows(const int64_t* lengths, int steps, int b0, int b1) : rows_(b1 - b0), offset_(size_t(steps) + 1, 0) {
    const bool prefix = lengths != nullptr && std::is_sorted(lengths + b0, lengths + b1, std::greater<int64_t>());
    count_.assign(size_t(steps), rows_);
    for (int t = 0; t < steps; ++t) {
      if (prefix)
        count_[t] = int(std::partition_point(lengths + b0, lengths + b1, [t](int64_t n) { return n > t; }) -
                        (lengths + b0));
      offset_[t + 1] = offset_[t] + count_[t];
      padded_ = padded_ || count_[t] < rows_;
    }
  }
  int at(int t) const { return count_[t]; }
  int64_t offset(int t) const { return offset_[t]; }
  int64_t total() const { return offset_.back(); }
  // the first step whose packed rows start at or after `row`
  int step_from(int64_t row) const {
    return int(std::partition_point(offset_.begin(), offset_.end() - 1, [row](int64_t o) { return o < row; }) -
               offset_.begin());
  }
  // The end of a run of steps from t0 whose packed rows fit in max_rows (at least one step).
  int chunk_end(int t0, int64_t max_rows) const {
    const int64_t limit = offset_[t0] + max_rows;
    const auto beyond = std::partition_point(offset_.begin(), offset_.end(), [limit](int64_t o) { return o <= limit; });
    const int past = int(beyond - offset_.begin());  // the first step boundary beyond the limit
    return std::max(t0 + 1, past - 1);
  }
  // whether some step skips rows (else the packed layout is the (T, rows) one and packing is a plain copy)
  bool padded() const { return padded_; }
  // Steps [t0, t1) of src (step t's first row at src + t * step_stride, rows `width` elements apart, n elements
  // copied a row) into packed rows of dst (row stride ld), or back (unpack). Rows skipped at a step are not touched.
  template <typename T>
  void pack(int t0, int t1, const T* src, int64_t step_stride, int64_t width, int n, T* dst, int64_t ld) const {
    for (int t = t0; t < t1; ++t) {
      T* to = dst + (offset_[t] - offset_[t0]) * ld;
      if (width == n && ld == n)  // the step's rows are one block on both sides
        std::memcpy(to, src + t * step_stride, sizeof(T) * n * count_[t]);
      else
        for (int r = 0; r < count_[t]; ++r) std::memcpy(to + r * ld, src + t * step_stride + r * width, sizeof(T) * n);
    }
  }
  template <typename T>
  void unpack(int t0, int t1, const T* src, int64_t ld, T* dst, int64_t step_stride, int64_t width, int n) const {
    for (int t = t0; t < t1; ++t) {
      const T* from = src + (offset_[t] - offset_[t0]) * ld;
      if (width == n && ld == n)
        std::memcpy(dst + t * step_stride, from, sizeof(T) * n * count_[t]);
      else
        for (int r = 0; r < count_[t]; ++r)
          std::memcpy(dst + t * step_stride + r * width, from + r * ld, sizeof(T) * n);
    }
  }

 private:
  int rows_;
  std::vector<int> count_;
  std::vector<int64_t> offset_;
  bool padded_ = false;
};

// One layout for both element types: Python's mirror has one set of fields.
static_assert(std::is_standard_layout<Args<float>>::value, "Args is read through ctypes");
static_assert(sizeof(Args<float>) == sizeof(Args<double>), "Args<float> and Args<double> share a layout");

}  // namespace birnn
