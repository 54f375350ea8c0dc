"""``block_for_cell`` (``models/blocks/factory.py``), the one mapping from a cell word to its block: every argument
reaches the block, and the refusals word for word (issue 37's mutation testing: a dropped or shifted argument, a
garbled message or a negated condition fails here)."""

import re

import pytest

from models import BiGRU, BiLSTM, BiRNN
from models.blocks.factory import block_for_cell


@pytest.mark.parametrize(("cell", "block_class", "nonlinearity"),
                         [("lstm", BiLSTM, None), ("gru", BiGRU, None), ("rnn", BiRNN, "tanh"),
                          ("rnn_relu", BiRNN, "relu")])
def test_every_argument_reaches_the_block(cell: str, block_class: type, nonlinearity: str) -> None:
    block = block_for_cell(cell, 3, 5, 2, merge_mode="ave", bias=False)
    assert type(block) is block_class
    assert (block.input_size, block.hidden_size, block.num_layers) == (3, 5, 2)
    assert block.merge_modes == ["ave", "ave"] and block.bias is False
    assert block.weight_ih_l0.shape == (block.gates * 5, 3)
    if nonlinearity is not None:
        assert block.nonlinearity == nonlinearity
    # The defaults: one layer, and a GRU with reset_after=True
    assert block_for_cell(cell, 3, 5).num_layers == 1
    assert block_for_cell(cell, 3, 5).reset_after is True


def test_reset_after_is_passed_to_the_gru_either_way() -> None:
    assert block_for_cell("gru", 3, 5, reset_after=False).reset_after is False
    assert block_for_cell("gru", 3, 5, reset_after=True).reset_after is True


def test_an_unknown_cell_is_refused_naming_it_and_the_choices() -> None:
    message = "cell='transformer' is not supported; choose one of ['lstm', 'gru', 'rnn', 'rnn_relu']"
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        block_for_cell("transformer", 3, 4)


@pytest.mark.parametrize("cell", ["lstm", "rnn", "rnn_relu"])
def test_reset_after_for_another_cell_is_refused_naming_both(cell: str) -> None:
    message = f"reset_after=False is a GRU option; cell={cell!r} takes none"
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        block_for_cell(cell, 3, 4, reset_after=False)
