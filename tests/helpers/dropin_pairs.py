"""A block next to its ``nn.LSTM``/``nn.GRU``/``nn.RNN(bidirectional=True)`` reference with the same weights, and
the comparisons the drop-in tests make (float32 1e-5, float64 1e-10)."""

from typing import Dict, Iterator, List, Sequence, Tuple, Union

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from models import BiGRU, BiLSTM, BiRNN
from models.blocks import cpu_kernel

CELLS = {"lstm": (BiLSTM, nn.LSTM), "gru": (BiGRU, nn.GRU), "rnn": (BiRNN, nn.RNN)}
TOL: Dict[torch.dtype, Dict[str, float]] = {torch.float32: {"atol": 1e-5, "rtol": 1e-5},
                                            torch.float64: {"atol": 1e-10, "rtol": 1e-10}}
@pytest.fixture(params=["cpu-kernel", "aten"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Both CPU paths: the project's kernel (wherever it can run, whatever the speed policy picks) and PyTorch's
    fused kernels."""
    if request.param == "aten":
        monkeypatch.setattr(cpu_kernel, "applies", lambda *args, **kwargs: False)
        yield request.param
        return
    if not cpu_kernel.available():
        pytest.skip("CPU kernel not built (tests/kernel/test_cpu_kernel.py says why)")
    with cpu_kernel.forced():
        yield request.param


def pair(cell: str, input_size: int = 3, hidden_size: int = 4, num_layers: int = 2,
         dtype: torch.dtype = torch.float32, **kwargs: object) -> Tuple[nn.Module, nn.Module]:
    """``(block with merge_mode="concat", reference)`` holding the same weights (``block.load_state_dict(ref...)``)."""
    block_cls, reference_cls = CELLS[cell]
    reference = reference_cls(input_size, hidden_size, num_layers, bidirectional=True, dtype=dtype, **kwargs)
    block = block_cls(input_size, hidden_size, num_layers, merge_mode="concat", dtype=dtype, **kwargs)
    block.load_state_dict(reference.state_dict())
    return block, reference


def initial_state(cell: str, num_layers: int, batch: Union[int, None], hidden_size: int,
                  dtype: torch.dtype = torch.float32, requires_grad: bool = False) -> object:
    """A random ``hx``: ``(2L, B, H)`` (``(2L, H)`` when ``batch`` is None), a pair of them for the LSTM."""
    shape = (2 * num_layers, hidden_size) if batch is None else (2 * num_layers, batch, hidden_size)

    def one() -> Tensor:
        return torch.randn(shape, dtype=dtype, requires_grad=requires_grad)

    return (one(), one()) if cell == "lstm" else one()


def flat(result: Tuple[object, object]) -> List[Tensor]:
    """``output, state`` -> ``[output (or a PackedSequence's data), h_n(, c_n)]``."""
    out, state = result
    data = out.data if isinstance(out, PackedSequence) else out
    return [data, *state] if isinstance(state, tuple) else [data, state]


def assert_same(ours: Sequence[Tensor], theirs: Sequence[Tensor], dtype: torch.dtype = torch.float32) -> None:
    assert len(ours) == len(theirs)
    for mine, reference in zip(ours, theirs, strict=True):
        torch.testing.assert_close(mine, reference, **TOL[dtype])


def gradients(outputs: Sequence[Tensor], inputs: Sequence[Tensor], seed: int = 0) -> Tuple[Tensor, ...]:
    """Gradients of a fixed random weighting of ``outputs`` (the same for two calls with the same seed)."""
    generator = torch.Generator().manual_seed(seed)
    loss = sum((t * torch.randn(t.shape, generator=generator, dtype=t.dtype)).sum() for t in outputs)
    return torch.autograd.grad(loss, list(inputs), allow_unused=True)


def assert_same_gradients(ours: Sequence[Tensor], theirs: Sequence[Tensor], our_inputs: Sequence[Tensor],
                          their_inputs: Sequence[Tensor], dtype: torch.dtype = torch.float32) -> None:
    """Outputs equal, and the gradients of the same weighting of them with respect to matching inputs."""
    assert_same(ours, theirs, dtype)
    for mine, reference in zip(gradients(ours, our_inputs), gradients(theirs, their_inputs), strict=True):
        if mine is None or reference is None:   # an input neither uses (c_0 given to a GRU's call)
            assert mine is None and reference is None
            continue
        torch.testing.assert_close(mine, reference, **TOL[dtype])
