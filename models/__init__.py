"""birnn-zoo: multi-layer bidirectional RNNs with a Keras merge mode after every layer.

The package is grouped by layer; the public API is re-exported here:

- ``models.merge``: the merge-mode words (``concat``, ``sum``, ``mul``, ``ave``, ``None``), spelled only there.
- ``models.blocks``: the layers ``BiLSTM``, ``BiGRU``, ``BiRNN``, their CPU kernel (``models.blocks.cpu_kernel``) and
  ``validate_inputs`` (``with validate_inputs(False):`` skips the input checks that read tensor values).
- ``models.zoo``: the registry (``create_model``, ``list_models``, ``register_model``), presets, classifier, pooling.
- ``models.deploy``: ``compile_model``, ``export``, ``load_exported``, ``load_run`` (a trained run -> a predictor of
  raw text), ``save_pretrained`` / ``from_pretrained``, ``quantize``
  (an int8 copy for serving).
- ``models.training``: the training loop behind ``train.py``, its config, checkpoints, run folders, reports.
- ``models.data`` (datasets, batching, downloads) and ``models.keras`` (Keras model import).

Importing ``models`` has no side effects beyond the package's own registries (the zoo's presets, the blocks'
TorchScript twins): no Hydra, OmegaConf or ``torch._dynamo`` is imported and no kernel is built. The training
app's Hydra wiring (config schemas, the ``model`` group, resolvers) is registered by ``import models.training``;
the CPU kernel is built or loaded by the first forward that uses it.
"""

from .blocks import BiGRU, BiLSTM, BiRNN, validate_inputs
from .deploy import (
    COMPILE_MODES,
    EXPORT_FORMATS,
    Predictor,
    compile_model,
    export,
    from_pretrained,
    load_exported,
    load_run,
    push_to_hub,
    quantize,
    save_pretrained,
)
from .merge import MERGE_MODES, merge_directions, resolve_merge_modes
from .zoo import SequenceClassifier, create_model, describe_models, list_models, register_model

__all__ = [
    "BiGRU", "BiLSTM", "BiRNN", "validate_inputs", "MERGE_MODES", "merge_directions", "resolve_merge_modes",
    "SequenceClassifier", "create_model", "describe_models", "list_models", "register_model",
    "COMPILE_MODES", "compile_model", "EXPORT_FORMATS", "export", "load_exported", "Predictor", "load_run",
    "save_pretrained", "from_pretrained", "push_to_hub", "quantize",
]

