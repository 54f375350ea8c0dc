"""Input checks shared by the blocks: clear errors before any compute.

Eager code raises ``ValueError``/``TypeError``; under TorchScript the same messages arrive as
``torch.jit.Error``. Checks that read tensor values (the range of ``lengths``) are skipped while
``torch.compile``/``torch.export`` trace, where they would force a graph break or a specialisation.
"""


from typing import List, Optional

import torch
from torch import Tensor


def dtype_name(dtype: torch.dtype) -> str:
    """``"torch.float32"``, in eager code and under TorchScript (where a dtype formats as a bare number)."""
    if not torch.jit.is_scripting():
        return str(dtype)
    # TorchScript holds a dtype as an int and has no dtype -> name table: one comparison per dtype the checks name.
    if dtype == torch.float32:
        return "torch.float32"
    if dtype == torch.float64:
        return "torch.float64"
    if dtype == torch.float16:
        return "torch.float16"
    if dtype == torch.bfloat16:
        return "torch.bfloat16"
    if dtype == torch.int64:
        return "torch.int64"
    if dtype == torch.int32:
        return "torch.int32"
    if dtype == torch.bool:
        return "torch.bool"
    return "dtype number " + str(dtype)


def check_input(input: Tensor, input_size: int, batch_first: bool) -> None:
    """``input`` must be a floating ``(T, B, input_size)`` tensor (``(B, T, input_size)`` with batch_first) or an
    unbatched ``(T, input_size)`` one, with ``T >= 1`` (``B = 0`` is an empty batch, allowed as in ``nn.LSTM``)."""
    layout = "(B, T, input_size)" if batch_first else "(T, B, input_size)"
    if input.dim() != 3 and input.dim() != 2:
        raise ValueError(
            f"input must be a 3-D tensor {layout} or an unbatched 2-D tensor (T, input_size) with "
            f"input_size={input_size}, got a {input.dim()}-D tensor of shape {list(input.shape)}"
        )
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating-point tensor, got dtype {dtype_name(input.dtype)}")
    if input.shape[-1] != input_size:
        raise ValueError(
            f"input has {input.shape[-1]} features (shape {list(input.shape)}) but the block was built with "
            f"input_size={input_size}; expected {layout} or (T, input_size)"
        )
    time_axis = 1 if batch_first and input.dim() == 3 else 0
    if input.shape[time_axis] == 0:
        raise ValueError(
            f"input of shape {list(input.shape)} has no time steps (T = 0); expected {layout} with T >= 1 "
            f"(nn.LSTM refuses T = 0 too)"
        )


def check_weights(input: Tensor, weight: Tensor) -> None:
    """``input`` and the module's weights must agree in dtype and device (as ``nn.LSTM`` checks): a float64 input
    to a float32 module is refused, never converted. Callers skip the dtype half under autocast."""
    if input.dtype != weight.dtype:
        raise ValueError(
            f"input dtype ({dtype_name(input.dtype)}) does not match the block's weight dtype "
            f"({dtype_name(weight.dtype)}); convert the input, input.to({dtype_name(weight.dtype)}), or the block, "
            f"block.to({dtype_name(input.dtype)})"
        )
    if input.device != weight.device:
        raise ValueError(
            f"input is on device {input.device} but the block's weights are on {weight.device}; move one of them "
            f"(input.to({weight.device}) or block.to({input.device}))"
        )


def check_not_lengths(state: Optional[Tensor], name: str) -> None:
    """A 1-D integer tensor where a hidden state belongs is almost surely ``lengths`` passed positionally, as
    this project's blocks took it before they took ``nn.LSTM``'s ``forward(input, hx)``."""
    if state is not None and state.dim() == 1 and not state.is_floating_point() and not state.is_complex():
        raise TypeError(
            f"{name} got a 1-D integer tensor (dtype {dtype_name(state.dtype)}, shape {list(state.shape)}), which "
            f"looks like lengths: the second positional argument is hx, as in nn.LSTM/nn.GRU/nn.RNN; pass lengths by "
            f"keyword, block(input, lengths=lengths)"
        )


def check_lengths(lengths: Tensor, batch: int, seq_len: int) -> Tensor:
    """``lengths`` must be an integer ``(B,)`` tensor with values in ``[1, T]``; returns it as int64."""
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(f"lengths must have shape (B,) = ({batch},), got shape {list(lengths.shape)}")
    if lengths.is_floating_point() or lengths.is_complex() or lengths.dtype == torch.bool:
        raise TypeError(f"lengths must be an integer tensor (int64), got dtype {dtype_name(lengths.dtype)}")
    if batch > 0 and not torch.compiler.is_compiling() and lengths.device.type != "meta":   # meta: no values
        # Both bounds in one device-to-host copy: at most one sync per batch for CUDA lengths (none for CPU ones).
        bounds = torch.stack([lengths.min(), lengths.max()]).cpu()
        low = int(bounds[0])
        high = int(bounds[1])
        if low < 1 or high > seq_len:
            raise ValueError(
                f"lengths must lie in [1, T] = [1, {seq_len}], got values from {low} to {high}"
            )
    return lengths.long()


def check_hidden(state: Tensor, shape: List[int], name: str, input: Tensor) -> None:
    """An initial state must have ``shape`` (``(2 * num_layers, B, H)``, or ``(2 * num_layers, H)`` for unbatched
    input) and the input's dtype and device."""
    if list(state.shape) != shape:
        layout = "(2 * num_layers, B, hidden_size)"
        if len(shape) == 2:
            layout = "(2 * num_layers, hidden_size) for unbatched input"
        raise ValueError(f"{name} must have shape {layout} = {shape}, got {list(state.shape)}")
    if state.dtype != input.dtype:
        raise TypeError(f"{name} has dtype {dtype_name(state.dtype)} but input has dtype {dtype_name(input.dtype)}")
    if state.device != input.device:
        raise ValueError(f"{name} is on device {state.device} but input is on device {input.device}")
