"""The one mapping from a cell word (``models/cells.py``) to the block that runs it."""

from typing import Any

from ..cells import BY_NAME, CELLS
from .base import _BiRNNBase
from .modules import BiGRU, BiLSTM, BiRNN


def block_for_cell(cell: str, input_size: int, hidden_size: int, num_layers: int = 1, *, reset_after: bool = True,
                   **options: Any) -> _BiRNNBase:
    """``"lstm"`` -> ``BiLSTM``, ``"gru"`` -> ``BiGRU(reset_after=...)``, ``"rnn"`` / ``"rnn_relu"`` -> ``BiRNN`` with
    ``tanh`` / ``relu``. ``options`` are the blocks' other constructor arguments (``bias``, ``batch_first``,
    ``dropout``, ``merge_mode``, ...). ``reset_after=False`` is only for ``"gru"`` (``ValueError`` otherwise)."""
    if cell not in BY_NAME:
        raise ValueError(f"cell={cell!r} is not supported; choose one of {list(CELLS)}")
    if cell != "gru" and reset_after is not True:
        raise ValueError(f"reset_after={reset_after!r} is a GRU option; cell={cell!r} takes none")
    if cell == "lstm":
        return BiLSTM(input_size, hidden_size, num_layers, **options)
    if cell == "gru":
        return BiGRU(input_size, hidden_size, num_layers, reset_after=reset_after, **options)
    return BiRNN(input_size, hidden_size, num_layers, nonlinearity=BY_NAME[cell].activation, **options)
