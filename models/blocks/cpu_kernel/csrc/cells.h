// The recurrent cells the kernel runs, and what its loops need from each: how many gate blocks, which states
// it carries, and its step functions (the gate math after the step product, one file per cell, as oneDNN keeps
// one post-GEMM per cell: cell_lstm.h, cell_gru.h, cell_gru_reset_before.h). The loops (forward.h, backward.h)
// know no cell by name: they read a cell's traits and call its step functions through with_cell.
//
// Adding a cell: a value in Cell, a struct deriving CellBase with its traits and step functions (its own header,
// included below), one case in with_cell, and its code in models/cells.py (docs/contributing.md, "Adding a cell
// to the CPU kernel").
#pragma once

#include <cstdint>

#include "cell_gru.h"
#include "cell_gru_reset_before.h"
#include "cell_lstm.h"

namespace birnn {

// The code models/cells.py gives each cell (Cell.kernel): the value Python passes in Args::cell.
enum class Cell : int32_t { kLstm = 0, kGru = 1, kGruResetBefore = 2 };

// Calls f(cell_struct{}) for the cell: the one place that maps a Cell to its struct.
template <typename F>
inline void with_cell(Cell cell, F&& f) {
  switch (cell) {
    case Cell::kLstm: f(Lstm{}); return;
    case Cell::kGru: f(Gru{}); return;
    case Cell::kGruResetBefore: f(GruResetBefore{}); return;
  }
}

// A cell's traits as values, for the loops' run-time decisions.
struct CellTraits {
  int32_t gates = 0, cell_state = 0, apart_hh = 0, second_product = 0, direct = 0, foldable = 0;
};
inline CellTraits traits_of(Cell cell) {
  CellTraits t;
  with_cell(cell, [&](auto c) {
    using C = decltype(c);
    t = CellTraits{C::kGates, C::kCellState, C::kApartHh, C::kSecondProduct, C::kDirect, C::kFoldable};
  });
  return t;
}

}  // namespace birnn
