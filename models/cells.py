"""The recurrent cells, named once: every other spelling of a cell is derived from this table.

A cell has one word in the zoo and the training config (``"lstm"``, ``"gru"``, ``"rnn"``, ``"rnn_relu"``), and
from it follow PyTorch's mode name (``nn.RNNBase.mode``: ``"LSTM"``, ``"RNN_TANH"``, ...), the number of gates,
the Keras layer class (``"SimpleRNN"``) and activation, and the CPU kernel's integer code (LSTM and GRU only).
``GRU_RESET_BEFORE`` is Keras's ``reset_after=False`` GRU: a variant of the ``"gru"`` cell, not a word of its
own (``BiGRU(reset_after=False)``), with its own mode and kernel code.
"""

from typing import Dict, NamedTuple, Optional, Tuple


class Cell(NamedTuple):
    """One recurrent cell and its names in each place that spells it."""

    name: str               # the zoo's word: SequenceClassifier(cell=...), model.cell
    mode: str               # PyTorch's mode (nn.LSTM().mode): the blocks' MODE and the fused kernel they call
    gates: int              # gate blocks in weight_ih / weight_hh: (gates * H, ...)
    keras: str              # the Keras layer class
    activation: str         # the Keras activation (tanh, or relu for the ReLU Elman RNN)
    kernel: Optional[int]   # the CPU kernel's cell code (models/blocks/cpu_kernel/csrc); None: no kernel


LSTM = Cell("lstm", "LSTM", 4, "LSTM", "tanh", 0)
GRU = Cell("gru", "GRU", 3, "GRU", "tanh", 1)
RNN_TANH = Cell("rnn", "RNN_TANH", 1, "SimpleRNN", "tanh", None)
RNN_RELU = Cell("rnn_relu", "RNN_RELU", 1, "SimpleRNN", "relu", None)
# Keras's reset_after=False GRU (the reset gate applied before the recurrent product): BiGRU(reset_after=False).
GRU_RESET_BEFORE = Cell("gru", "GRU_RESET_BEFORE", 3, "GRU", "tanh", 2)

CELLS: Tuple[str, ...] = tuple(cell.name for cell in (LSTM, GRU, RNN_TANH, RNN_RELU))
"""The zoo's cell words: ``("lstm", "gru", "rnn", "rnn_relu")``."""

BY_NAME: Dict[str, Cell] = {cell.name: cell for cell in (LSTM, GRU, RNN_TANH, RNN_RELU)}
BY_MODE: Dict[str, Cell] = {cell.mode: cell for cell in (LSTM, GRU, RNN_TANH, RNN_RELU, GRU_RESET_BEFORE)}
GATES: Dict[str, int] = {mode: cell.gates for mode, cell in BY_MODE.items()}
"""PyTorch mode -> gates, e.g. ``GATES["LSTM"] == 4``."""
KERNEL_CODES: Dict[str, int] = {mode: cell.kernel for mode, cell in BY_MODE.items() if cell.kernel is not None}
"""The modes the CPU kernel runs -> its cell codes: ``{"LSTM": 0, "GRU": 1, "GRU_RESET_BEFORE": 2}``."""
KERAS_LAYERS: Tuple[str, ...] = tuple(dict.fromkeys(cell.keras for cell in BY_NAME.values()))
"""The Keras recurrent layer classes: ``("LSTM", "GRU", "SimpleRNN")``."""


def from_keras_layer(layer: str, activation: str = "tanh") -> Cell:
    """The cell of a Keras ``LSTM`` / ``GRU`` / ``SimpleRNN`` layer (``activation`` tells the two Elman RNNs apart;
    a ``reset_after=False`` GRU is still ``"gru"``). Raises ``ValueError`` for any other layer or activation."""
    for cell in BY_NAME.values():
        if cell.keras == layer and (layer != "SimpleRNN" or cell.activation == activation):
            return cell
    raise ValueError(f"no cell for Keras layer {layer!r} with activation={activation!r}; known layers: "
                     f"{list(KERAS_LAYERS)} (SimpleRNN with tanh or relu)")
