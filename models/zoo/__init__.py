"""The model zoo: the registry (timm-style), the ``SequenceClassifier`` and its named presets."""

from . import presets  # noqa: F401  (registers the presets)
from .classifier import SequenceClassifier
from .registry import create_model, describe_models, list_models, register_model

__all__ = ["SequenceClassifier", "create_model", "describe_models", "list_models", "register_model"]
