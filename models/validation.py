"""Input checks shared by the blocks: clear errors before any compute.

Eager code raises ``ValueError``/``TypeError``; under TorchScript the same messages arrive as
``torch.jit.Error``. Checks that read tensor values (the range of ``lengths``) are skipped while
``torch.compile``/``torch.export`` trace, where they would force a graph break or a specialisation.
"""


from typing import List

import torch
from torch import Tensor


def check_input(input: Tensor, input_size: int, batch_first: bool) -> None:
    """``input`` must be a floating ``(T, B, input_size)`` tensor (``(B, T, input_size)`` with batch_first), T, B >= 1."""
    layout = "(B, T, input_size)" if batch_first else "(T, B, input_size)"
    if input.dim() != 3:
        raise ValueError(
            f"input must be a 3-D tensor {layout} with input_size={input_size}, got a {input.dim()}-D tensor "
            f"of shape {list(input.shape)}"
        )
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got dtype {input.dtype}")
    if input.shape[2] != input_size:
        raise ValueError(
            f"input has {input.shape[2]} features (shape {list(input.shape)}) but the block was built with "
            f"input_size={input_size}; expected {layout}"
        )
    if input.shape[0] == 0 or input.shape[1] == 0:
        raise ValueError(
            f"input of shape {list(input.shape)} is empty; expected {layout} with at least one sequence and one "
            f"time step"
        )


def check_lengths(lengths: Tensor, batch: int, seq_len: int) -> Tensor:
    """``lengths`` must be an integer ``(B,)`` tensor with values in ``[1, T]``; returns it as int64."""
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(f"lengths must have shape (B,) = ({batch},), got shape {list(lengths.shape)}")
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must be an integer tensor (int64), got dtype {lengths.dtype}")
    if not torch.compiler.is_compiling():
        low = int(lengths.min())
        high = int(lengths.max())
        if low < 1 or high > seq_len:
            raise ValueError(
                f"lengths must lie in [1, T] = [1, {seq_len}], got values from {low} to {high}"
            )
    return lengths.long()


def check_hidden(state: Tensor, shape: List[int], name: str, input: Tensor) -> None:
    """An initial state must have ``shape`` = ``(2 * num_layers, B, H)`` and the input's dtype and device."""
    if list(state.shape) != shape:
        raise ValueError(
            f"{name} must have shape (2 * num_layers, B, hidden_size) = {shape}, got {list(state.shape)}"
        )
    if state.dtype != input.dtype:
        raise TypeError(f"{name} has dtype {state.dtype} but input has dtype {input.dtype}")
