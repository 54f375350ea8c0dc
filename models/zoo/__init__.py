"""The model zoo: the registry (timm-style), the ``SequenceClassifier`` and its named presets."""

from . import config_group, presets  # noqa: F401  (registers the presets)
from .classifier import SequenceClassifier
from .registry import create_model, describe_models, list_models, register_model

config_group.register()  # the Hydra config group conf/model/*.yaml build on

__all__ = ["SequenceClassifier", "create_model", "describe_models", "list_models", "register_model"]
