"""The model zoo: named ``SequenceClassifier`` presets, registered for ``create_model``. The one source of their values.

Every preset takes ``SequenceClassifier``'s keyword arguments as overrides. Defaults common to all presets:
token input with ``vocab_size=20000``, ``embed_dim=128``, ``padding_idx=0``, ``num_classes=2``, 2 layers of
hidden size 128 merged with ``concat``. Give ``input_size=F`` (and no ``vocab_size``) for float features
``(B, T, F)``::

    model = create_model("bilstm", vocab_size=20000, num_classes=6, merge_mode="sum")
    logits = model(token_ids)            # (B, T) int64, 0 = padding -> (B, 6)

A preset pins what its name says: its cell (``create_model("bilstm", cell="gru")`` is a ``ValueError`` that names
``bigru``) and, for the ``*_attn`` presets, attention pooling. ``conf/model/<name>.yaml`` names the preset and
holds only overrides; the training config reads the values from here (``preset_arguments``).

The factories live at the bottom of this file; the first line of each docstring is its ``list_models``
description.
"""

import inspect
from typing import Any, Dict, Tuple

from .classifier import SequenceClassifier
from .registry import register_model

# On top of SequenceClassifier's own defaults (dropouts 0, attention_size 64, padding_idx 0).
_COMMON: Dict[str, Any] = {
    "num_classes": 2,
    "vocab_size": 20000,
    "embed_dim": 128,
    "hidden_size": 128,
    "num_layers": 2,
    "merge_mode": "concat",
    "pooling": "last",
}

_ATTENTION = {"pooling": "attention", "attention_size": 64}

# name -> (its values on top of _COMMON, what it pins: key -> the values that keep it what its name says).
_PRESETS: Dict[str, Tuple[Dict[str, Any], Dict[str, Tuple[Any, ...]]]] = {
    "bilstm": ({"cell": "lstm"}, {"cell": ("lstm",)}),
    "bigru": ({"cell": "gru"}, {"cell": ("gru",)}),
    "birnn": ({"cell": "rnn"}, {"cell": ("rnn", "rnn_relu")}),  # both Elman RNNs (Keras SimpleRNN tanh / relu)
    "bilstm_attn": ({"cell": "lstm", **_ATTENTION}, {"cell": ("lstm",), "pooling": ("attention",)}),
    "bigru_attn": ({"cell": "gru", **_ATTENTION}, {"cell": ("gru",), "pooling": ("attention",)}),
    "bilstm_deep": ({"cell": "lstm", "num_layers": 4, "dropout": 0.2}, {"cell": ("lstm",)}),
}


def preset_arguments(name: str) -> Dict[str, Any]:
    """Every ``SequenceClassifier`` argument of the built-in preset ``name``, as a new dict (``input_size=None``)."""
    if name not in _PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(sorted(_PRESETS))}")
    parameters = inspect.signature(SequenceClassifier.__init__).parameters.values()
    defaults = {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}
    return {**defaults, **_COMMON, **_PRESETS[name][0]}


def _check_pins(name: str, overrides: Dict[str, Any]) -> None:
    """Refuse an override that would make preset ``name`` another model (``ValueError`` naming the key first)."""
    for key, allowed in _PRESETS[name][1].items():
        if key in overrides and overrides[key] not in allowed:
            wanted = {**preset_arguments(name), **overrides}
            fits = {other: len(pins) for other, (_, pins) in _PRESETS.items()
                    if all(wanted[k] in ok for k, ok in pins.items())}
            others = [other for other, pinned in fits.items() if pinned == max(fits.values())]  # the most specific
            hint = f"use {' or '.join(repr(o) for o in others)}" if others else "build SequenceClassifier(...) directly"
            raise ValueError(f"{key}={overrides[key]!r} would change what preset {name!r} is ({key} "
                             f"{' or '.join(repr(a) for a in allowed)}); {hint}")


def _create(name: str, overrides: Dict[str, Any]) -> SequenceClassifier:
    """``SequenceClassifier(**{common defaults, preset, overrides})``; ``input_size`` replaces ``vocab_size``."""
    _check_pins(name, overrides)
    kwargs = {**preset_arguments(name), **overrides}
    if overrides.get("input_size") is not None and "vocab_size" not in overrides:
        kwargs["vocab_size"] = None
    return SequenceClassifier(**kwargs)


@register_model
def bilstm(**kwargs: Any) -> SequenceClassifier:
    """2-layer BiLSTM (hidden 128, concat), merged final states of both directions (Keras return_sequences=False)."""
    return _create("bilstm", kwargs)


@register_model
def bigru(**kwargs: Any) -> SequenceClassifier:
    """2-layer BiGRU (hidden 128, concat, reset_after=True), merged final states of both directions."""
    return _create("bigru", kwargs)


@register_model
def birnn(**kwargs: Any) -> SequenceClassifier:
    """2-layer bidirectional tanh RNN (Keras SimpleRNN; hidden 128, concat), merged final states."""
    return _create("birnn", kwargs)


@register_model
def bilstm_attn(**kwargs: Any) -> SequenceClassifier:
    """2-layer BiLSTM (hidden 128, concat) with additive attention pooling over valid steps."""
    return _create("bilstm_attn", kwargs)


@register_model
def bigru_attn(**kwargs: Any) -> SequenceClassifier:
    """2-layer BiGRU (hidden 128, concat) with additive attention pooling over valid steps."""
    return _create("bigru_attn", kwargs)


@register_model
def bilstm_deep(**kwargs: Any) -> SequenceClassifier:
    """4-layer BiLSTM (hidden 128, concat, dropout 0.2 between layers), merged final states."""
    return _create("bilstm_deep", kwargs)
