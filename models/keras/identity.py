"""A Keras object's full identity: ``module``, ``class_name`` and ``registered_name``, not the class name alone.

Keras writes, for every serialized object, the module its class lives in and, for a class registered with
``keras.saving.register_keras_serializable(package=...)``, its registered name ``"<package>><name>"``. A custom
class may reuse a built-in's name (``class Dense(layers.Dense)`` whose ``call`` differs): matched on
``class_name`` alone it would import as the built-in, and the importer's promise is "exact or refused".
:func:`check_identities` walks the whole config and refuses, naming it, every object whose identity is not one
of Keras's own (Keras 3, Keras 2 / ``tf_keras`` / ``tf.keras``; old files that omit ``module`` are read as built-ins).
"""

from typing import Any, List, Optional

from .errors import KerasImportError

KERAS_MODULES = ("keras", "tf_keras", "tensorflow.keras", "tensorflow.python.keras")
"""Packages whose classes are Keras's own: a ``module`` equal to one of them or inside one of them."""
MAX_DEPTH = 64


def _keras_module(module: Any) -> bool:
    return module is None or (isinstance(module, str) and any(
        module == root or module.startswith(root + ".") for root in KERAS_MODULES))


def _own_registration(registered: Any, class_name: Any) -> bool:
    """Keras 3 writes ``None`` for its own classes; tf_keras writes the class name itself."""
    return registered is None or registered == class_name


def _where(node: dict, path: List[str]) -> str:
    config = node.get("config")
    name = config.get("name") if isinstance(config, dict) else None
    return repr(name) if isinstance(name, str) else "at " + ("/".join(path) or "the top")


def check_identities(config: Any, path: Optional[List[str]] = None, depth: int = 0) -> None:
    """Raise ``KerasImportError`` for the first object in ``config`` (a parsed ``config.json`` /
    ``model_config``) that is a custom or registered class, whatever its ``class_name``."""
    path = path or []
    if depth > MAX_DEPTH:
        raise KerasImportError(f"malformed model config: nested deeper than {MAX_DEPTH} levels")
    if isinstance(config, dict):
        if "class_name" in config:
            module, class_name = config.get("module"), config.get("class_name")
            registered = config.get("registered_name")
            if not isinstance(class_name, str) or not _keras_module(module) or \
                    not _own_registration(registered, class_name):
                raise KerasImportError(
                    f"layer {_where(config, path)}: class {class_name!r} from module {module!r} registered as "
                    f"{registered!r} is a custom object, not Keras's own {class_name}; custom objects are refused "
                    f"(their code is not in the file and may differ from the built-in of the same name)")
        for key, value in config.items():
            check_identities(value, [*path, str(key)], depth + 1)
    elif isinstance(config, list):
        for index, value in enumerate(config):
            check_identities(value, [*path, str(index)], depth + 1)
