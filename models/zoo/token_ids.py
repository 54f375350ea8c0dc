"""``check_token_ids``: token ids must be integers in ``[0, vocab_size)`` before they reach an ``nn.Embedding``.

Without it an id ``>= vocab_size`` or a negative id ends in ``IndexError: index out of range in self`` from
deep inside the embedding (or a device-side assert on CUDA), naming neither the argument nor the range.
Shared by the zoo's ``SequenceClassifier`` and the Keras importer's embedding stage; TorchScript can script
it. The value check reads the tensor's minimum and maximum (one device-to-host copy), so it is skipped while
``torch.compile`` / ``torch.export`` trace (it would force a graph break or a specialisation) and inside
``validate_inputs(False)``, like the ``lengths`` range check in :mod:`models.blocks.validation`.
"""

import torch
from torch import Tensor

from ..blocks.validation import checking_values, host_bounds


def check_token_ids(token_ids: Tensor, vocab_size: int, name: str = "token_ids") -> None:
    """Raise ``TypeError`` unless ``token_ids`` is an integer tensor, ``ValueError`` unless every id lies in
    ``[0, vocab_size)``; the message names ``name``, the range found and the range expected. Any shape."""
    check_token_dtype(token_ids, vocab_size, name)
    if checking_values() and token_ids.numel() > 0:
        bounds = host_bounds([token_ids])
        check_token_range(bounds[0], bounds[1], vocab_size, name)


def check_token_dtype(token_ids: Tensor, vocab_size: int, name: str) -> None:
    """The free half of ``check_token_ids``: ``TypeError`` unless ``token_ids`` is an integer tensor."""
    if token_ids.is_floating_point() or token_ids.is_complex() or token_ids.dtype == torch.bool:
        raise TypeError(f"{name} must be an integer tensor of token ids in [0, vocab_size) = [0, {vocab_size}), "
                        f"got dtype {token_ids.dtype}")


def check_token_range(low: int, high: int, vocab_size: int, name: str) -> None:
    """The value half of ``check_token_ids``, on bounds already read (``host_bounds``): ``ValueError`` unless
    ``[low, high]`` lies in ``[0, vocab_size)``."""
    if low < 0 or high >= vocab_size:
        raise ValueError(f"{name} must lie in [0, vocab_size) = [0, {vocab_size}), got values from {low} to "
                         f"{high}")
