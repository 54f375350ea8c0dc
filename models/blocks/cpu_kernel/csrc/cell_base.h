// What every cell's step functions read and write (ForwardRow, BackwardRow) and the traits every cell states
// (CellBase): the shared part of cell_lstm.h, cell_gru.h, cell_gru_reset_before.h. cells.h says how to add a cell.
#pragma once

// Before a loop over one row's H elements whose arrays are distinct buffers (ForwardRow, BackwardRow): the compiler
// cannot prove that, and with more arrays than it checks at run time it leaves the loop scalar.
#if defined(__clang__)
#define BIRNN_DISTINCT_ARRAYS _Pragma("clang loop vectorize(assume_safety)")
#elif defined(__GNUC__)
#define BIRNN_DISTINCT_ARRAYS _Pragma("GCC ivdep")
#else
#define BIRNN_DISTINCT_ARRAYS
#endif

namespace birnn {

// One row's forward step at one time step and direction: what the step functions read and write. H elements a
// block; G = gates * H.
template <typename T>
struct ForwardRow {
  int H;
  T* g;          // in: h_{t-1} @ W_hh^T (G), or with `folded` projection + bias + product; out: the activated gates
  const T* xg;   // the row's input projection x_t @ W_ih^T (G), without bias
  const T* bi;   // b_ih (G; b_ih + b_hh where the cell folds them) or null
  const T* bh;   // b_hh (G) where the cell keeps it apart (kApartHh), or null
  T* h;          // in: h_{t-1}; out: h_t
  T* c;          // the cell state, in c_{t-1} and out c_t (kCellState), else null
  T* out;        // the output row: h_t
  T* ghn;        // kApartHh: where W_hn h + b_hn goes for the backward pass, or null (no gradient needed)
  T* rh;         // kSecondProduct: r * h_{t-1}, the second product's input (H)
  T* tmp;        // H elements of scratch
  bool folded;   // g already holds projection + bias (kFoldable cells in inference)
};

// One row's backward step (reverse loop) at one time step and direction.
template <typename T>
struct BackwardRow {
  int H;
  const T* g;     // the activated gates the forward step left (G)
  const T* hp;    // h_{t-1}
  const T* dout;  // d out_t
  const T* dh;    // d h_t carried from step t + 1 through W_hh (and `direct`)
  T* dgi;         // out: the gradient of the gate pre-activations (G)
  T* dgh;         // kApartHh, out: the gradient of W_hh h + b_hh (G)
  T* direct;      // out: the part of d h_{t-1} that does not pass through W_hh (kDirect)
  T* rh;          // kSecondProduct, out: r * h_{t-1} (W_hn's gradient reads it)
  const T* drh;   // kSecondProduct, in (backward_after): d(r * h_{t-1}) = dn @ W_hn
  const T* hn;    // kApartHh: the stashed W_hn h + b_hn
  const T* c;     // kCellState: c_t
  const T* cp;    // kCellState: c_{t-1}
  T* dc;          // kCellState: in d c_t, out d c_{t-1}
  T* tmp;         // H elements of scratch
};

// The traits every cell states (defaults here) and the optional step functions of cells with a second product.
struct CellBase {
  static constexpr bool kCellState = false;      // a second state c (LSTM): c0, c_n, c_all, dc
  // W_hh h + b_hh enters the gates apart from the projection (GRU reset_after: r gates its n block): b_hh stays
  // unfolded, its n block is stashed (ghn) and its gradient d_gh is kept apart from d_gi.
  static constexpr bool kApartHh = false;
  // A second step product on r * h_{t-1} by W_hn fills the last H pre-activation columns (reset-before GRU); the
  // first product then covers the other G - H columns.
  static constexpr bool kSecondProduct = false;
  static constexpr bool kDirect = false;         // h_t depends on h_{t-1} outside the product (GRU's z * h)
  static constexpr bool kFoldable = false;       // inference may add projection + bias into the product's output
  // kSecondProduct: the gates before the second product, and the product's input rh.
  template <typename T>
  static void forward_before(const ForwardRow<T>&) {}
  // kSecondProduct: what the reverse step needs once d(r * h) is known.
  template <typename T>
  static void backward_after(const BackwardRow<T>&) {}
};

}  // namespace birnn
