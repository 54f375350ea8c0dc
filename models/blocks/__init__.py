"""The layers: ``BiLSTM``, ``BiGRU``, ``BiRNN`` (``nn.LSTM``'s API plus a Keras merge mode after every layer).

``base`` holds the shared module (parameters, the per-layer runner), ``modules`` the three public classes,
``scriptable`` their TorchScript forms, ``validation`` the argument checks (and ``validate_inputs``, the switch
for those that read tensor values), ``packed`` the ``PackedSequence`` adapters, ``gru_reset_before`` Keras's
``reset_after=False`` GRU, and ``cpu_kernel`` the fused CPU kernel.
"""

from . import scriptable  # noqa: F401  (registers the TorchScript twins)
from .modules import BiGRU, BiLSTM, BiRNN
from .validation import validate_inputs

__all__ = ["BiGRU", "BiLSTM", "BiRNN", "validate_inputs"]
