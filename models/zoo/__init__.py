"""The model zoo: the registry (timm-style), the ``SequenceClassifier`` and its named presets.

The Hydra config group ``conf/model/*.yaml`` builds on (``models/zoo/config_group.py``) is registered by the
training app (``models.training``), not here: importing the zoo imports no Hydra."""

from . import presets  # noqa: F401  (adds the named presets to the zoo's registry)
from .classifier import SequenceClassifier
from .registry import create_model, describe_models, list_models, register_model

__all__ = ["SequenceClassifier", "create_model", "describe_models", "list_models", "register_model"]
