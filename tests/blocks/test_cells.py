"""The cell table (models/cells.py) against PyTorch and Keras, the one cell-to-block mapping, the last-state pooling."""

import pytest
import torch
from torch import nn

from models import BiGRU, BiLSTM, BiRNN
from models.blocks import cpu_kernel
from models.blocks.factory import block_for_cell
from models.cells import BY_MODE, BY_NAME, CELLS, GATES, GRU_RESET_BEFORE, KERAS_LAYERS, KERNEL_CODES, from_keras_layer
from models.merge import merge_directions
from models.zoo.pooling import last_state

TORCH = {"lstm": (nn.LSTM, {}), "gru": (nn.GRU, {}), "rnn": (nn.RNN, {"nonlinearity": "tanh"}),
         "rnn_relu": (nn.RNN, {"nonlinearity": "relu"})}


@pytest.mark.parametrize("name", CELLS)
def test_each_cell_is_what_pytorch_calls_it(name: str) -> None:
    cls, options = TORCH[name]
    reference = cls(3, 5, **options)
    cell = BY_NAME[name]
    assert reference.mode == cell.mode and BY_MODE[cell.mode] is cell
    assert reference.weight_ih_l0.shape[0] == GATES[cell.mode] * 5 == cell.gates * 5


@pytest.mark.parametrize(("name", "block_class"),
                         [("lstm", BiLSTM), ("gru", BiGRU), ("rnn", BiRNN), ("rnn_relu", BiRNN)])
def test_block_for_cell_builds_the_block_of_that_cell(name: str, block_class: type) -> None:
    block = block_for_cell(name, 3, 4, 2, batch_first=True, merge_mode="sum")
    assert type(block) is block_class and block.mode == BY_NAME[name].mode
    assert block.num_layers == 2 and block.batch_first and block.merge_modes == ["sum", "sum"]
    assert block_for_cell("gru", 3, 4, reset_after=False).reset_after is False


def test_block_for_cell_refuses_what_it_cannot_build() -> None:
    with pytest.raises(ValueError, match=r"cell='transformer' is not supported; choose one of \['lstm', 'gru'"):
        block_for_cell("transformer", 3, 4)
    with pytest.raises(ValueError, match="reset_after=False is a GRU option; cell='lstm' takes none"):
        block_for_cell("lstm", 3, 4, reset_after=False)


def test_kernel_codes_and_keras_names() -> None:
    assert KERNEL_CODES == {"LSTM": 0, "GRU": 1, "GRU_RESET_BEFORE": 2} and cpu_kernel._CELLS is KERNEL_CODES
    assert GRU_RESET_BEFORE.name == "gru" and BiGRU(2, 3, reset_after=False)._kernel_cell() == GRU_RESET_BEFORE.mode
    assert KERAS_LAYERS == ("LSTM", "GRU", "SimpleRNN")
    assert [from_keras_layer(layer, act).name for layer, act in
            [("LSTM", "tanh"), ("GRU", "tanh"), ("SimpleRNN", "tanh"), ("SimpleRNN", "relu")]] == list(CELLS)
    with pytest.raises(ValueError, match="no cell for Keras layer 'ConvLSTM1D'"):
        from_keras_layer("ConvLSTM1D")


@pytest.mark.parametrize("mode", ["concat", "sum", "mul", "ave", None])
def test_last_state_merges_the_last_layers_final_states(mode) -> None:
    torch.manual_seed(0)
    h_n = torch.randn(4, 3, 5)                                  # (2L, B, H), L = 2
    expected = merge_directions(h_n[2], h_n[3], mode)
    torch.testing.assert_close(last_state(h_n, mode), expected, rtol=0, atol=0)
    rows = torch.tensor([True, False, True])
    masked = last_state(h_n, mode, rows)
    torch.testing.assert_close(masked[rows], expected[rows], rtol=0, atol=0)
    assert masked[1].abs().sum() == 0
