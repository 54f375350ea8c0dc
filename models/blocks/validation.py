"""Input checks shared by the blocks: clear errors before any compute.

Eager code raises ``ValueError``/``TypeError``; under TorchScript the same messages arrive as
``torch.jit.Error``. Checks of shapes, dtypes and devices are free and always run. Checks that read tensor
values (the range of ``lengths``, of token ids) read them in one device-to-host copy (``host_bounds``: on CUDA
one sync); they are skipped while ``torch.compile``/``torch.export`` trace, where they would force a graph break
or a specialisation, and inside ``validate_inputs(False)``, where the caller asserts the values are valid.
"""

import threading
from types import TracebackType
from typing import List, Optional, Type

import torch
from torch import Tensor


class _Switch(threading.local):
    enabled = True


_switch = _Switch()  # per thread, like torch's grad mode: one thread's serving cannot turn off another's checks


class validate_inputs:
    """``with validate_inputs(False):`` the caller asserts that the inputs of the forwards inside are valid, so the
    checks that read tensor values are skipped: the range of ``lengths`` (the blocks, the zoo's classifier, the
    Keras import) and of token ids (``[0, vocab_size)``). Those are the only checks that cost a device-to-host
    copy (one sync per batch on CUDA); shape, dtype and device checks are free and still run. The default, and
    ``validate_inputs(True)``, check. The setting is per thread and restored on exit, as ``torch.no_grad`` is.

    With validation off, invalid values are not caught and nothing is guaranteed: an out-of-range token id
    fails inside ``nn.Embedding`` (``IndexError`` on the CPU, a device-side assert on CUDA), and ``lengths``
    outside ``[1, T]`` give wrong outputs or an error from deep inside PyTorch. TorchScript-compiled modules always
    check (the switch is Python state); ``torch.compile``d ones never read values while tracing.
    ``python train.py trainer.validate_inputs=false`` trains inside ``validate_inputs(False)``.
    """

    def __init__(self, mode: bool) -> None:
        if not isinstance(mode, bool):
            raise TypeError(f"validate_inputs(mode) takes a bool, got {type(mode).__name__}: {mode!r}")
        self.mode = mode
        self._before: List[bool] = []

    def __enter__(self) -> None:
        self._before.append(_switch.enabled)
        _switch.enabled = self.mode

    def __exit__(self, kind: Optional[Type[BaseException]], error: Optional[BaseException],
                 trace: Optional[TracebackType]) -> None:
        _switch.enabled = self._before.pop()

    @staticmethod
    def is_enabled() -> bool:
        """Whether value checks run in this thread now (outside any ``torch.compile`` trace)."""
        return _switch.enabled


def checking_values() -> bool:
    """Whether checks that read tensor values run now: not while ``torch.compile``/``torch.export`` trace, not
    inside ``validate_inputs(False)`` (always under TorchScript, which cannot see the switch)."""
    if torch.compiler.is_compiling():
        return False
    enabled = True
    if not torch.jit.is_scripting():
        enabled = _switch.enabled
    return enabled


def host_bounds(tensors: List[Tensor]) -> List[int]:
    """``[min(t0), max(t0), min(t1), max(t1), ...]`` of non-empty integer tensors on one device, read in one
    device-to-host copy (one sync on CUDA, whatever the number of tensors)."""
    parts: List[Tensor] = []
    for tensor in tensors:
        parts.append(tensor.min().long())
        parts.append(tensor.max().long())
    bounds: List[int] = torch.stack(parts).tolist()
    return bounds


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
    if batch > 0 and lengths.device.type != "meta" and checking_values():   # meta: no values
        # Both bounds in one device-to-host copy: at most one sync per batch for CUDA lengths (none for CPU ones).
        bounds = host_bounds([lengths])
        low = bounds[0]
        high = bounds[1]
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
