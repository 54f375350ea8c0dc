"""birnn-zoo: multi-layer bidirectional RNNs with a Keras merge mode after every layer."""

from .blocks import BiGRU, BiLSTM, BiRNN
from .merge import MERGE_MODES, merge_directions, resolve_merge_modes

__all__ = ["BiGRU", "BiLSTM", "BiRNN", "MERGE_MODES", "merge_directions", "resolve_merge_modes"]
