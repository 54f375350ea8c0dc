"""Training: the loop behind ``train.py`` (``loop.train``), its config schema and checks, checkpoints, resume, run
folders, stopping signals, multi-process sharding and the sweep report."""

from ..zoo.config_group import register as _register_model_group
from .cli_help import register as _register_help_resolver
from .schema import register as _register_config_schemas

_register_config_schemas()                             # Hydra's ConfigStore: before anyone composes conf/
_register_model_group()                                # conf/model/*.yaml's base node and ${zoo_preset:...}
_register_help_resolver()                              # train.py --help: the groups users pick, resolved values
