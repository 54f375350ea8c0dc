"""``KerasModel.keras_specs`` (JSON text a user may hand to ``module_from_specs``) checked as data first.

The JSON must be a list of layer specs (objects with ``kind``, ``class_name``, ``name``, ``path``,
``in_features``, ``options``), each size a non-negative integer, and the module they describe no larger than
the importer accepts from a file (``archive.MAX_TOTAL_ELEMENTS`` parameters). Anything else is one
``KerasImportError``: never a ``RecursionError``, ``KeyError`` or an allocation of what hostile sizes ask for.
"""

import json
from typing import Any, Dict, List, Union

from .archive import MAX_TOTAL_ELEMENTS
from .errors import KerasImportError

KINDS = ("embedding", "masking", "recurrent", "dense", "activation", "pool", "identity", "norm", "conv", "pool1d",
         "shape", "merge", "attention", "timedistributed")
SIZE_OPTIONS = ("input_dim", "output_dim", "units", "filters", "kernel_size", "num_heads", "key_dim", "value_dim",
                "query_features", "key_features", "value_features")
MAX_SPECS_BYTES = 16 * 2**20


def _size(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOTAL_ELEMENTS:
        raise KerasImportError(f"keras_specs: {where}={value!r} must be an integer in [0, {MAX_TOTAL_ELEMENTS}]")
    return value


def parse_specs(specs_json: Any) -> Union[List[Dict[str, Any]], Dict[str, Any]]:
    """The checked spec list (a chain) or graph dict (``{"format": "graph", "layers": [...], ...}``) of
    ``specs_json``; raises ``KerasImportError`` naming what is wrong."""
    if not isinstance(specs_json, (str, bytes)) or len(specs_json) > MAX_SPECS_BYTES:
        raise KerasImportError(f"keras_specs must be JSON text of at most {MAX_SPECS_BYTES} bytes")
    try:
        specs = json.loads(specs_json)
    except (ValueError, RecursionError) as error:
        raise KerasImportError(f"keras_specs is not valid JSON ({type(error).__name__})") from None
    if isinstance(specs, dict):
        if specs.get("format") != "graph" or not isinstance(specs.get("layers"), list):
            raise KerasImportError("keras_specs as an object must be a graph: "
                                   "{\"format\": \"graph\", \"layers\": [...]}")
        _check_layers(specs["layers"])
        return specs
    if not isinstance(specs, list) or not specs:
        raise KerasImportError("keras_specs must be a non-empty JSON list of layer specs")
    _check_layers(specs)
    return specs


def _check_layers(specs: List[Any], elements: int = 0) -> int:
    """Checks every spec (a ``TimeDistributed`` one's wrapped spec too); the parameter count so far."""
    for index, spec in enumerate(specs):
        if not isinstance(spec, dict) or not isinstance(spec.get("options"), dict):
            raise KerasImportError(f"keras_specs[{index}] must be an object with an 'options' object")
        if spec.get("kind") not in KINDS:
            raise KerasImportError(f"keras_specs[{index}].kind={spec.get('kind')!r} is not one of {list(KINDS)}")
        for key in ("class_name", "name", "path"):
            if not isinstance(spec.get(key), str):
                raise KerasImportError(f"keras_specs[{index}].{key} must be a string")
        features = _size(spec.get("in_features"), f"[{index}].in_features")
        sizes = {key: _size(value, f"[{index}].options.{key}") for key, value in spec["options"].items()
                 if key in SIZE_OPTIONS}
        units = sizes.get("units", 0)
        elements += sizes.get("input_dim", 0) * sizes.get("output_dim", 0) + 8 * units * (features + units + 2)
        elements += sizes.get("filters", 0) * (sizes.get("kernel_size", 0) * features + 1)
        heads = sizes.get("num_heads", 0)          # MultiHeadAttention: four projections
        elements += heads * (sizes.get("key_dim", 0) * (sizes.get("query_features", 0) + sizes.get("key_features", 0)
                                                        + 2)
                             + sizes.get("value_dim", 0) * (sizes.get("value_features", 0) + sizes.get("output_dim", 0)
                                                            + 1))
        if spec["kind"] == "timedistributed":
            elements = _check_layers([spec["options"].get("inner")], elements)
        if elements > MAX_TOTAL_ELEMENTS:
            raise KerasImportError(f"keras_specs describe over {MAX_TOTAL_ELEMENTS} parameters (at [{index}]); "
                                   f"refused")
    return elements
