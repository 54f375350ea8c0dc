"""``check_token_ids``: token ids must be integers in ``[0, vocab_size)`` before they reach an ``nn.Embedding``.

Without it an id ``>= vocab_size`` or a negative id ends in ``IndexError: index out of range in self`` from
deep inside the embedding (or a device-side assert on CUDA), naming neither the argument nor the range.
Shared by the zoo's ``SequenceClassifier`` and the Keras importer's embedding stage; TorchScript can script
it. The value check reads the tensor's minimum and maximum, so it is skipped while ``torch.compile`` /
``torch.export`` trace (it would force a graph break or a specialisation), like the ``lengths`` range check
in :mod:`models.blocks.validation`.
"""

import torch
from torch import Tensor


def check_token_ids(token_ids: Tensor, vocab_size: int, name: str = "token_ids") -> None:
    """Raise ``TypeError`` unless ``token_ids`` is an integer tensor, ``ValueError`` unless every id lies in
    ``[0, vocab_size)``; the message names ``name``, the range found and the range expected. Any shape."""
    if token_ids.is_floating_point() or token_ids.is_complex() or token_ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of token ids in [0, vocab_size) = [0, {vocab_size}), "
                        f"got dtype {token_ids.dtype}")
    if torch.compiler.is_compiling() or token_ids.numel() == 0:
        return
    low = int(token_ids.min())
    high = int(token_ids.max())
    if low < 0 or high >= vocab_size:
        raise ValueError(f"{name} must lie in [0, vocab_size) = [0, {vocab_size}), got values from {low} to "
                         f"{high}")
