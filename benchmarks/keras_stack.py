"""Keras 3 (torch backend) stack of ``Bidirectional(LSTM/GRU(H, return_sequences=True), merge_mode=m) x L``.

Keras layers on the torch backend are ``torch.nn.Module``s whose variables are ``torch.nn.Parameter``s, so
the benchmark times them exactly like the torch variants: forward under ``torch.inference_mode`` (``training
=False``), and a training step as forward (``training=True``) + ``loss.backward()`` through torch autograd,
which is what Keras' own torch ``train_step`` does before the optimizer (no optimizer is timed anywhere).
On CPU Keras has no fused kernel for the torch backend (cuDNN only) and runs a per-time-step loop.
"""

import os
from typing import List

from torch import Tensor


def keras_available() -> bool:
    """True when ``keras`` imports on the torch backend."""
    os.environ.setdefault("KERAS_BACKEND", "torch")
    try:
        import keras
    except Exception:
        return False
    return keras.backend.backend() == "torch"


class KerasStack:
    """A built ``keras.Sequential`` stack, called on batch-first torch tensors ``(B, T, in)``."""

    def __init__(self, cell: str, seq_len: int, input_size: int, hidden: int, num_layers: int, merge_mode: str) -> None:
        os.environ.setdefault("KERAS_BACKEND", "torch")
        import keras

        layer_cls = {"LSTM": keras.layers.LSTM, "GRU": keras.layers.GRU}[cell]
        layers: List[object] = [keras.Input((seq_len, input_size))]
        for _ in range(num_layers):
            layers.append(keras.layers.Bidirectional(layer_cls(hidden, return_sequences=True), merge_mode=merge_mode))
        self.model = keras.Sequential(layers)
        self.params = [v.value for v in self.model.trainable_variables]

    def __call__(self, x: Tensor, training: bool) -> Tensor:
        return self.model(x, training=training)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

