"""birnn-zoo: multi-layer bidirectional RNNs with a Keras merge mode after every layer."""

from . import zoo  # noqa: F401  (registers the presets)
from .blocks import BiGRU, BiLSTM, BiRNN
from .classifier import SequenceClassifier
from .compile import COMPILE_MODES, compile_model
from .export import EXPORT_FORMATS, export, load_exported
from .merge import MERGE_MODES, merge_directions, resolve_merge_modes
from .registry import create_model, describe_models, list_models, register_model

__all__ = [
    "BiGRU", "BiLSTM", "BiRNN", "MERGE_MODES", "merge_directions", "resolve_merge_modes",
    "SequenceClassifier", "create_model", "describe_models", "list_models", "register_model",
    "COMPILE_MODES", "compile_model", "EXPORT_FORMATS", "export", "load_exported",
]
