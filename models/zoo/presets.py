"""The model zoo: named ``SequenceClassifier`` presets, registered for ``create_model``.

Every preset takes ``SequenceClassifier``'s keyword arguments as overrides. Defaults common to all presets:
token input with ``vocab_size=20000``, ``embed_dim=128``, ``padding_idx=0``, ``num_classes=2``, 2 layers of
hidden size 128 merged with ``concat``. Give ``input_size=F`` (and no ``vocab_size``) for float features
``(B, T, F)``::

    model = create_model("bilstm", vocab_size=20000, num_classes=6, merge_mode="sum")
    logits = model(token_ids)            # (B, T) int64, 0 = padding -> (B, 6)

The factories live at the bottom of this file; the first line of each docstring is its ``list_models``
description.
"""

from typing import Any, Dict

from .classifier import SequenceClassifier
from .registry import register_model

_COMMON: Dict[str, Any] = {
    "num_classes": 2,
    "vocab_size": 20000,
    "embed_dim": 128,
    "hidden_size": 128,
    "num_layers": 2,
    "merge_mode": "concat",
    "pooling": "last",
}


def _create(preset: Dict[str, Any], overrides: Dict[str, Any]) -> SequenceClassifier:
    """``SequenceClassifier(**{common defaults, preset, overrides})``; ``input_size`` replaces ``vocab_size``."""
    kwargs = {**_COMMON, **preset, **overrides}
    if overrides.get("input_size") is not None and "vocab_size" not in overrides:
        kwargs["vocab_size"] = None
    return SequenceClassifier(**kwargs)


@register_model
def bilstm(**kwargs: Any) -> SequenceClassifier:
    """2-layer BiLSTM (hidden 128, concat), merged final states of both directions (Keras return_sequences=False)."""
    return _create({"cell": "lstm"}, kwargs)


@register_model
def bigru(**kwargs: Any) -> SequenceClassifier:
    """2-layer BiGRU (hidden 128, concat, reset_after=True), merged final states of both directions."""
    return _create({"cell": "gru"}, kwargs)


@register_model
def birnn(**kwargs: Any) -> SequenceClassifier:
    """2-layer bidirectional tanh RNN (Keras SimpleRNN; hidden 128, concat), merged final states."""
    return _create({"cell": "rnn"}, kwargs)


@register_model
def bilstm_attn(**kwargs: Any) -> SequenceClassifier:
    """2-layer BiLSTM (hidden 128, concat) with additive attention pooling over valid steps."""
    return _create({"cell": "lstm", "pooling": "attention", "attention_size": 64}, kwargs)


@register_model
def bigru_attn(**kwargs: Any) -> SequenceClassifier:
    """2-layer BiGRU (hidden 128, concat) with additive attention pooling over valid steps."""
    return _create({"cell": "gru", "pooling": "attention", "attention_size": 64}, kwargs)


@register_model
def bilstm_deep(**kwargs: Any) -> SequenceClassifier:
    """4-layer BiLSTM (hidden 128, concat, dropout 0.2 between layers), merged final states."""
    return _create({"cell": "lstm", "num_layers": 4, "dropout": 0.2}, kwargs)
