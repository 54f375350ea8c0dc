"""Old module paths, kept importable after ``models/`` was grouped by layer.

``import models.cpu_kernel``, ``from models.trainer import train``, ``python -m models.report`` and the other
paths below are named in notebooks, docs and users' code; each now lives in a subpackage. A meta-path finder
hands out the module at its new home under the old name, lazily (importing ``models`` does not import the
training loop), and the same module object, so ``monkeypatch.setattr`` on either name patches both.
"""

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from types import CodeType, ModuleType
from typing import Dict, Optional, Sequence

MOVED: Dict[str, str] = {
    "models.cpu_kernel": "models.blocks.cpu_kernel",
    "models.cpu_kernel_build": "models.blocks.cpu_kernel.build",
    "models.cpu_kernel_policy": "models.blocks.cpu_kernel.policy",
    "models.cpu_kernel_reference": "models.blocks.cpu_kernel.reference",
    "models.validation": "models.blocks.validation",
    "models.packed": "models.blocks.packed",
    "models.gru_reset_before": "models.blocks.gru_reset_before",
    "models.registry": "models.zoo.registry",
    "models.classifier": "models.zoo.classifier",
    "models.pooling": "models.zoo.pooling",
    "models.token_ids": "models.zoo.token_ids",
    "models.compile": "models.deploy.compile",
    "models.trainer": "models.training.loop",
    "models.config": "models.training.config",
    "models.checkpoint": "models.training.checkpoint",
    "models.resume": "models.training.resume",
    "models.run_folder": "models.training.run_folder",
    "models.stopping": "models.training.stopping",
    "models.distributed": "models.training.distributed",
    "models.report": "models.training.report",
    "models.notebook_utils": "models.training.notebook_utils",
}


class _AliasLoader(importlib.abc.Loader):
    """Loads an old name as the module at its new home (no second copy of the module)."""

    def __init__(self, target: str) -> None:
        self.target = target

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self._spec = module.__spec__  # the import system overwrites __spec__; exec_module puts it back
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self._spec

    def get_code(self, fullname: str) -> Optional[CodeType]:
        """``python -m models.report`` runs the new module's code as ``__main__``."""
        spec = importlib.util.find_spec(self.target)
        assert spec is not None and spec.loader is not None
        return spec.loader.get_code(self.target)  # type: ignore[attr-defined]


def new_name(fullname: str) -> Optional[str]:
    """``models.cpu_kernel`` -> ``models.blocks.cpu_kernel``, and its submodules with it
    (``models.cpu_kernel.policy`` -> ``models.blocks.cpu_kernel.policy``: one module object, not a second copy
    loaded under the old package's name); None for names that did not move."""
    parts = fullname.split(".")
    for end in range(len(parts), 1, -1):
        new = MOVED.get(".".join(parts[:end]))
        if new is not None:
            return ".".join([new, *parts[end:]])
    return None


class MovedModuleFinder(importlib.abc.MetaPathFinder):
    """Finds the old names in :data:`MOVED`; every other import is left to the normal finders."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Optional[ModuleType] = None
                  ) -> Optional[importlib.machinery.ModuleSpec]:
        new = new_name(fullname)
        if new is None:
            return None
        target = importlib.util.find_spec(new)  # imports the new parent packages, not the module itself
        origin = None if target is None else target.origin  # python -m: runpy sets sys.argv[0] from it
        return importlib.util.spec_from_loader(fullname, _AliasLoader(new), origin=origin)


def install() -> None:
    """Put the finder on ``sys.meta_path`` once."""
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, MovedModuleFinder())


def old_attribute(name: str) -> ModuleType:
    """``models.cpu_kernel`` as an attribute (after a plain ``import models``), imported on first use."""
    full = f"models.{name}"
    if full not in MOVED:
        raise AttributeError(f"module 'models' has no attribute {name!r}")
    return importlib.import_module(full)
