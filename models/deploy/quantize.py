"""``quantize(model)``: an int8 copy of a block or a model for serving on the CPU.

Lives in ``models.deploy`` beside ``compile_model`` and ``export`` (a transform of a trained model for serving);
the int8 block it builds is ``models/blocks/quantized.py`` (the arithmetic, its error and its limits are
documented there and in ``docs/zoo-and-deployment.md``).
"""

import copy

from torch import nn

from ..blocks.base import _BiRNNBase
from ..blocks.quantized import QuantizedBiRNN


def quantize(model: nn.Module) -> nn.Module:
    """An inference-only copy of ``model`` with every ``BiLSTM`` / ``BiGRU`` / ``BiRNN`` replaced by its int8
    ``QuantizedBiRNN`` (int8 weights with per-output-channel scales, activations quantized per row at every step,
    exact int32 products, float32 states and gate math). Everything else (embeddings, attention, the ``Linear``
    head) stays float32 as it is. ``model`` itself is not changed; the copy is in eval mode with no gradients.

    ``model``: a block, or any module holding blocks (a ``SequenceClassifier``). Raises ``TypeError`` for a
    non-module, ``ValueError`` for a model with no block, a block on another device than the CPU, or a
    ``BiGRU(reset_after=False)`` (no int8 path)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"quantize expects a torch.nn.Module (a block or a model holding blocks), got "
                        f"{type(model).__name__}")
    if isinstance(model, QuantizedBiRNN):
        raise ValueError("quantize: the model is already quantized")
    if isinstance(model, _BiRNNBase):
        return QuantizedBiRNN.from_float(model)
    if not any(isinstance(module, _BiRNNBase) for module in model.modules()):
        raise ValueError(f"quantize: {type(model).__name__} holds no BiLSTM, BiGRU or BiRNN block; nothing to "
                         f"quantize")
    quantized = copy.deepcopy(model)
    for parent in list(quantized.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _BiRNNBase):
                setattr(parent, name, QuantizedBiRNN.from_float(child))
    quantized.eval()
    quantized.requires_grad_(False)
    return quantized
