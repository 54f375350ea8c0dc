"""The zoo's presets as Hydra's ``model`` config group: ``conf/model/<name>.yaml`` names a preset and holds only
overrides; the values come from ``models/zoo/presets.py``, their one source.

``conf/model/bilstm.yaml`` is::

    # @package model
    defaults:
      - preset          # every SequenceClassifier argument, each the value of the preset named below
      - _self_
    name: bilstm

``preset`` is the node registered here in Hydra's ``ConfigStore`` (group ``model``): one key per
``SequenceClassifier`` argument that the training app does not take from the data, each the interpolation
``${zoo_preset:${.name},<key>}``, answered by the resolver registered here from ``preset_arguments``. A key in
the YAML or an override (``model.hidden_size=256``) replaces it; ``OmegaConf.to_container(cfg, resolve=True)``
holds the values a run used. The training app registers both (``import models.training`` calls ``register``),
before any ``compose`` or ``@hydra.main``; importing ``models`` alone imports no Hydra and registers nothing.
"""

import inspect
from typing import Any, Dict

from .classifier import SequenceClassifier
from .presets import preset_arguments

RESOLVER = "zoo_preset"
DATA_KEYS = ("vocab_size", "num_classes", "input_size")
"""``SequenceClassifier`` arguments the training app takes from the dataset, never from ``model``."""


def preset_value(name: str, key: str) -> Any:
    """The value of ``key`` in preset ``name`` (what ``${zoo_preset:name,key}`` resolves to)."""
    return preset_arguments(name)[key]


def preset_node() -> Dict[str, str]:
    """``name`` (``???``: the YAML sets it), then ``{key: "${zoo_preset:${.name},key}"}`` for every
    ``SequenceClassifier`` argument outside ``DATA_KEYS``."""
    keys = [key for key in inspect.signature(SequenceClassifier.__init__).parameters
            if key not in ("self", *DATA_KEYS)]
    return {"name": "???", **{key: "${" + RESOLVER + ":${.name}," + key + "}" for key in keys}}


def register() -> None:
    """Register the resolver and the ``model/preset`` node (again: a no-op)."""
    from hydra.core.config_store import ConfigStore  # the training app's dependency, not the zoo's
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, preset_value)
    ConfigStore.instance().store(group="model", name="preset", node=preset_node())
