"""BiLSTM / BiGRU / BiRNN against their references: the merge formulas, nn.LSTM/nn.GRU/nn.RNN, and
sequences run one at a time. Fresh random inputs every run; float32 tolerances unless stated."""

from typing import Callable, Dict, Iterator

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models import MERGE_MODES, BiGRU, BiLSTM, BiRNN
from models.blocks import cpu_kernel

BLOCKS = {"lstm": (BiLSTM, nn.LSTM), "gru": (BiGRU, nn.GRU), "rnn": (BiRNN, nn.RNN)}
FORMULAS: Dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "concat": lambda f, b: torch.cat([f, b], -1),
    "sum": lambda f, b: f + b,
    "mul": lambda f, b: f * b,
    "ave": lambda f, b: (f + b) / 2,
}
TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(autouse=True, params=["cpu-kernel", "aten"])
def cpu_path(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test here runs on both CPU paths: the project's kernel (wherever it can run, whatever the speed
    policy picks) and PyTorch's fused kernels (the fallback)."""
    if request.param == "aten":
        with cpu_kernel.disabled():
            yield
        return
    if not cpu_kernel.available():
        pytest.skip("CPU kernel not built (tests/kernel/test_cpu_kernel.py says why)")
    with cpu_kernel.forced():
        yield


def states(cell: str, result: tuple) -> torch.Tensor:
    """``h_n`` (and ``c_n`` for LSTM) stacked on a new first axis."""
    _, state = result
    return torch.stack(state) if cell == "lstm" else state.unsqueeze(0)


def reference_layers(block: nn.Module, cell: str, layer: int) -> nn.Module:
    """A one-layer bidirectional nn.LSTM/GRU/RNN holding ``block``'s weights of ``layer``."""
    layer_input = getattr(block, f"weight_ih_l{layer}").shape[1]
    reference = BLOCKS[cell][1](layer_input, block.hidden_size, bidirectional=True)
    if cell == "rnn":
        reference.nonlinearity = block.nonlinearity
    with torch.no_grad():
        for suffix in ("", "_reverse"):
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(reference, f"{kind}_l0{suffix}").copy_(getattr(block, f"{kind}_l{layer}{suffix}"))
    return reference


@pytest.mark.parametrize("cell", BLOCKS)
@pytest.mark.parametrize("mode", MERGE_MODES)
def test_each_merge_mode_follows_its_formula_after_every_layer(cell: str, mode: str) -> None:
    block = BLOCKS[cell][0](5, 6, num_layers=3, merge_mode=mode)
    x = torch.randn(7, 4, 5)
    out, _ = block(x)
    expected = x
    for layer in range(3):
        full, _ = reference_layers(block, cell, layer)(expected)
        expected = FORMULAS[mode](full[..., :6], full[..., 6:])
    torch.testing.assert_close(out, expected, **TOL)
    assert out.shape == (7, 4, 12 if mode == "concat" else 6)


@pytest.mark.parametrize("cell", BLOCKS)
def test_per_layer_modes_and_none_last_keep_both_directions(cell: str) -> None:
    block = BLOCKS[cell][0](3, 4, num_layers=3, merge_mode=["concat", "mul", None], batch_first=True)
    assert [getattr(block, f"weight_ih_l{k}").shape[1] for k in range(3)] == [3, 8, 4]
    x = torch.randn(2, 5, 3)
    out, _ = block(x)
    assert out.shape == (2, 5, 2, 4)
    # Layer by layer with the references.
    h = x.transpose(0, 1)
    for layer, mode in enumerate(["concat", "mul"]):
        full, _ = reference_layers(block, cell, layer)(h)
        h = FORMULAS[mode](full[..., :4], full[..., 4:])
    full, _ = reference_layers(block, cell, 2)(h)
    torch.testing.assert_close(out[:, :, 0], full[..., :4].transpose(0, 1), **TOL)
    torch.testing.assert_close(out[:, :, 1], full[..., 4:].transpose(0, 1), **TOL)


@pytest.mark.parametrize("cell", BLOCKS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_concat_is_a_drop_in_for_the_torch_module(cell: str, batch_first: bool) -> None:
    block_cls, torch_cls = BLOCKS[cell]
    reference = torch_cls(5, 7, num_layers=3, bidirectional=True, batch_first=batch_first)
    block = block_cls(5, 7, num_layers=3, batch_first=batch_first)
    block.load_state_dict(reference.state_dict())           # same parameter names
    x = torch.randn(4, 6, 5, requires_grad=True)
    hx = torch.randn(6, 4 if batch_first else 6, 7)
    hx = (hx, torch.randn_like(hx)) if cell == "lstm" else hx
    ours, theirs = block(x, hx=hx), reference(x, hx)
    torch.testing.assert_close(ours[0], theirs[0], **TOL)
    torch.testing.assert_close(states(cell, ours), states(cell, theirs), **TOL)
    weights = torch.randn_like(ours[0])
    grads = torch.autograd.grad((ours[0] * weights).sum(), [x, *block.parameters()])
    reference_grads = torch.autograd.grad((theirs[0] * weights).sum(), [x, *reference.parameters()])
    for ours_grad, their_grad in zip(grads, reference_grads, strict=True):
        torch.testing.assert_close(ours_grad, their_grad, atol=1e-4, rtol=1e-4)


def right_padded(seq_len: int, lengths: torch.Tensor, features: int, fill: float) -> torch.Tensor:
    x = torch.randn(seq_len, len(lengths), features)
    pad = torch.arange(seq_len).unsqueeze(1) >= lengths.unsqueeze(0)
    return x.masked_fill(pad.unsqueeze(-1), fill)


@pytest.mark.parametrize("cell", BLOCKS)
@pytest.mark.parametrize("mode", [*MERGE_MODES, None])
def test_a_padded_batch_equals_each_sequence_run_alone(cell: str, mode: str) -> None:
    block = BLOCKS[cell][0](3, 5, num_layers=2, merge_mode=mode if mode is not None else ["sum", None])
    lengths = torch.tensor([4, 9, 1, 6, 9])                 # unsorted, with the extremes
    x = right_padded(9, lengths, 3, fill=float("nan"))
    out, state = block(x, lengths=lengths)
    full_state = states(cell, (out, state))
    assert torch.isfinite(out).all() and torch.isfinite(full_state).all()
    for i, n in enumerate(lengths.tolist()):
        alone_out, alone_state = block(x[:n, i:i + 1])
        torch.testing.assert_close(out[:n, i:i + 1], alone_out, **TOL)
        torch.testing.assert_close(full_state[:, :, i:i + 1], states(cell, (alone_out, alone_state)), **TOL)
        assert (out[n:, i] == 0).all(), "outputs at padded steps must be zero"


@pytest.mark.parametrize("cell", BLOCKS)
def test_padding_values_never_reach_outputs_states_or_gradients(cell: str) -> None:
    block = BLOCKS[cell][0](3, 4, num_layers=2, merge_mode="ave")
    lengths = torch.tensor([2, 7, 5])
    base = right_padded(7, lengths, 3, fill=0.0)
    results = []
    for fill in (0.0, float("nan"), 1e6):
        pad = (torch.arange(7).unsqueeze(1) >= lengths).unsqueeze(-1)
        x = base.masked_fill(pad, fill).requires_grad_(True)
        out, state = block(x, lengths=lengths)
        loss = out.pow(2).sum() + states(cell, (out, state)).sum()
        grads = torch.autograd.grad(loss, [x, *block.parameters()])
        valid_grad_x = grads[0].masked_fill(pad, 0.0)
        results.append((out, states(cell, (out, state)), valid_grad_x, grads[1:]))
    for other in results[1:]:
        torch.testing.assert_close(other[0], results[0][0], **TOL)
        torch.testing.assert_close(other[1], results[0][1], **TOL)
        torch.testing.assert_close(other[2], results[0][2], **TOL)
        for g, g0 in zip(other[3], results[0][3], strict=True):
            torch.testing.assert_close(g, g0, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cell", BLOCKS)
def test_lengths_with_concat_match_packed_torch_module_and_initial_states(cell: str) -> None:
    block_cls, torch_cls = BLOCKS[cell]
    reference = torch_cls(3, 5, num_layers=2, bidirectional=True, batch_first=True)
    block = block_cls(3, 5, num_layers=2, batch_first=True)
    block.load_state_dict(reference.state_dict())
    lengths = torch.tensor([3, 8, 1, 5])
    x = right_padded(8, lengths, 3, fill=0.0).transpose(0, 1).contiguous()
    h0 = torch.randn(4, 4, 5)
    hx = (h0, torch.randn_like(h0)) if cell == "lstm" else h0
    ours = block(x, hx, lengths=lengths)
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    packed_out, packed_state = reference(packed, hx)
    theirs_out, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=8)
    torch.testing.assert_close(ours[0], theirs_out, **TOL)
    torch.testing.assert_close(states(cell, ours), states(cell, (theirs_out, packed_state)), **TOL)


@pytest.mark.parametrize("mode", MERGE_MODES)
@pytest.mark.parametrize("with_lengths", [False, True])
def test_float64_gradcheck(mode: str, with_lengths: bool) -> None:
    block = BiLSTM(2, 3, num_layers=2, merge_mode=mode, dtype=torch.float64)
    lengths = torch.tensor([4, 2]) if with_lengths else None
    x = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)

    def run(inp: torch.Tensor) -> tuple:
        out, (h, c) = block(inp, lengths=lengths)
        return out, h, c

    assert torch.autograd.gradcheck(run, (x,), eps=1e-6, atol=1e-5)


def test_float64_gradcheck_gru_and_rnn_with_lengths() -> None:
    for block in (BiGRU(2, 3, 2, merge_mode="mul", dtype=torch.float64),
                  BiRNN(2, 3, 2, merge_mode="sum", nonlinearity="relu", dtype=torch.float64)):
        x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(lambda inp, b=block: b(inp, lengths=torch.tensor([1, 3]))[0], (x,), eps=1e-6,
                                        atol=1e-5)


def test_dropout_between_layers_only_in_training() -> None:
    block = BiGRU(3, 8, num_layers=2, dropout=0.5, merge_mode="sum")
    x = torch.randn(5, 2, 3)
    block.eval()
    torch.testing.assert_close(block(x)[0], block(x)[0])
    block.train()
    torch.manual_seed(0)
    first = block(x)[0]
    torch.manual_seed(1)
    assert not torch.allclose(first, block(x)[0])
    # Not after the last layer: a one-layer block is deterministic in training mode.
    single = BiGRU(3, 8, num_layers=1, dropout=0.5).train()
    torch.testing.assert_close(single(x)[0], single(x)[0])


def test_bfloat16_autocast_runs_in_bfloat16_as_nn_lstm_does() -> None:
    """As nn.LSTM does: bf16 under autocast where oneDNN has a bf16 LSTM for this CPU, the same error where not.
    The outputs have nn.LSTM's dtype and equal, to bf16 rounding, nn.LSTM's layers under the same autocast: a block
    that ignored autocast (float32 outputs, float32 numbers) fails both checks."""
    block = BiLSTM(8, 16, num_layers=2, merge_mode="sum")
    x = torch.randn(6, 3, 8)
    lengths = torch.tensor([6, 2, 4])
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            nn.LSTM(8, 16, bidirectional=True)(x)
    except RuntimeError as error:  # e.g. AVX2 CPUs: "could not create a primitive descriptor"
        with pytest.raises(RuntimeError, match="primitive"), torch.autocast("cpu", dtype=torch.bfloat16):
            block(x, lengths=lengths)
        pytest.skip(f"nn.LSTM has no bf16 autocast on this CPU ({str(error)[:60]}...); the block raises as it does")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, (_, c) = block(x)
        expected = x
        for layer in range(2):
            full, (_, c_ref) = reference_layers(block, "lstm", layer)(expected)
            expected = full[..., :16] + full[..., 16:]
        padded, (_, c_padded) = block(x, lengths=lengths)
    high, (_, c32) = block(x, lengths=lengths)
    assert low.dtype == padded.dtype == expected.dtype, "nn.LSTM's dtype under autocast"
    assert expected.dtype == torch.bfloat16
    torch.testing.assert_close(low, expected, atol=2e-2, rtol=2e-2)      # bf16 keeps 8 bits: 2^-7 relative steps
    torch.testing.assert_close(c[2:], c_ref, atol=2e-2, rtol=2e-2, check_dtype=False)
    # the padded batch: bf16 too, near the float32 result, not equal to it
    torch.testing.assert_close(padded.float(), high, atol=5e-2, rtol=5e-2)
    torch.testing.assert_close(c_padded.float(), c32, atol=5e-2, rtol=5e-2)
    assert not torch.equal(padded.float(), high), "computed in bf16, not float32"
