"""Function-level tests of models/blocks/cpu_kernel/weights.py written for mutation testing (issue 37):
``stack_layer`` against the layout written out by hand, for a cell that folds its biases and one that keeps
``b_hh`` apart, with and without biases. Pure tensor code: no kernel needed, exact comparisons (the only
arithmetic is one float32 addition, the same one on both sides)."""

from typing import List

import pytest
import torch
from torch import Tensor

from models.blocks import cpu_kernel
from models.blocks.cpu_kernel.abi import CellTraits
from models.blocks.cpu_kernel.weights import stack_layer
from models.cells import KERNEL_CODES

# Only ``apart_hh`` is read by stack_layer; the others are the LSTM's and GRU's as csrc/cells.h states them.
FOLDS = CellTraits(4, True, False, False, False, True)   # LSTM (and the reset-before GRU): b_ih + b_hh
APART = CellTraits(3, False, True, False, True, False)   # GRU (reset_after): b_hh kept apart


def direction_weights(gates: int = 4, hidden: int = 3, features: int = 5, biases: bool = True) -> List[Tensor]:
    """``[w_ih, w_hh, b_ih, b_hh]`` (or the first two) of the forward then the backward direction, each entry a
    different random tensor so that any swapped index shows."""
    torch.manual_seed(7)
    one = lambda: ([torch.randn(gates * hidden, features), torch.randn(gates * hidden, hidden)]  # noqa: E731
                   + ([torch.randn(gates * hidden), torch.randn(gates * hidden)] if biases else []))
    return one() + one()


def test_a_folding_cell_gets_both_directions_stacked_and_its_biases_summed() -> None:
    w = direction_weights()
    w_ih, b_ih, w_hh, b_hh = stack_layer(FOLDS, w, True)
    assert torch.equal(w_ih, torch.stack([w[0], w[4]])) and w_ih.shape == (2, 12, 5)
    assert torch.equal(w_hh, torch.stack([w[1], w[5]])) and w_hh.shape == (2, 12, 3)
    assert b_ih is not None and torch.equal(b_ih, torch.stack([w[2] + w[3], w[6] + w[7]]))
    assert b_hh is None


def test_a_cell_that_keeps_b_hh_apart_gets_both_biases_as_given() -> None:
    w = direction_weights(gates=3)
    w_ih, b_ih, w_hh, b_hh = stack_layer(APART, w, True)
    assert torch.equal(w_ih, torch.stack([w[0], w[4]])) and torch.equal(w_hh, torch.stack([w[1], w[5]]))
    assert b_ih is not None and torch.equal(b_ih, torch.stack([w[2], w[6]]))
    assert b_hh is not None and torch.equal(b_hh, torch.stack([w[3], w[7]]))


@pytest.mark.parametrize("traits", [FOLDS, APART], ids=["folds", "apart"])
def test_without_biases_two_weights_a_direction_and_no_bias(traits: CellTraits) -> None:
    w = direction_weights(biases=False)
    assert len(w) == 4
    w_ih, b_ih, w_hh, b_hh = stack_layer(traits, w, False)
    assert torch.equal(w_ih, torch.stack([w[0], w[2]])) and torch.equal(w_hh, torch.stack([w[1], w[3]]))
    assert b_ih is None and b_hh is None


def test_the_stacked_weights_stay_differentiable() -> None:
    w = [t.requires_grad_() for t in direction_weights()]
    w_ih, b_ih, w_hh, _ = stack_layer(FOLDS, w, True)
    assert b_ih is not None
    (w_ih.sum() + 2 * w_hh.sum() + 3 * b_ih.sum()).backward()
    assert all(torch.equal(t.grad, torch.full_like(t, k)) for t, k in zip(w, [1, 2, 3, 3] * 2, strict=True))


@pytest.mark.skipif(not cpu_kernel.available(), reason="CPU kernel not built")
def test_the_librarys_cells_fold_as_documented() -> None:
    """With the loaded library's own traits: LSTM and the reset-before GRU fold, the GRU keeps ``b_hh`` apart."""
    for mode, code in KERNEL_CODES.items():
        w = direction_weights(gates=4 if mode == "LSTM" else 3)
        _, b_ih, _, b_hh = stack_layer(cpu_kernel.traits(code), w, True)
        assert b_ih is not None
        if mode == "GRU":
            assert b_hh is not None and torch.equal(b_ih, torch.stack([w[2], w[6]]))
        else:
            assert b_hh is None and torch.equal(b_ih, torch.stack([w[2] + w[3], w[6] + w[7]]))
