"""Issue 15's table, one test per row: what a PyTorch user does with ``nn.LSTM``/``nn.GRU``/``nn.RNN`` behaves the
same with the blocks (``merge_mode="concat"``, the reference's weights loaded), on both CPU paths. Rows covered by
the ported PyTorch tests are named there (``tests/blocks/test_blocks_dropin.py``); this file holds the rest and the
TorchScript twin."""

import re
import warnings

import pytest
import torch
from helpers.dropin_pairs import CELLS, assert_same, assert_same_gradients, flat, initial_state, pair, path
from torch.func import functional_call, grad, stack_module_state, vmap
from torch.nn.utils import parametrizations
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models import MERGE_MODES, BiGRU, BiLSTM, BiRNN

__all__ = ["path"]
F64 = torch.float64


@pytest.mark.parametrize("cell", CELLS)
def test_row1_hx_is_the_second_positional_argument(cell: str, path: str) -> None:
    block, reference = pair(cell, 3, 4, 2)
    x = torch.randn(5, 3, 3, requires_grad=True)
    hx = initial_state(cell, 2, 3, 4, requires_grad=True)
    states = list(hx) if cell == "lstm" else [hx]
    assert_same_gradients(flat(block(x, hx)), flat(reference(x, hx)), [x, *states, *block.parameters()],
                          [x, *states, *reference.parameters()])
    assert_same(flat(torch.jit.script(block)(x, hx)), flat(reference(x, hx)))
    # The old call, block(x, lengths): a clear TypeError that says what to write instead.
    with pytest.raises(TypeError, match=re.escape("pass lengths by keyword, block(input, lengths=lengths)")):
        block(x, torch.tensor([5, 2, 4]))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("mode", [*MERGE_MODES, None])
def test_row2_packed_sequence_in_packed_sequence_out_in_every_merge_mode(cell: str, mode: object, path: str) -> None:
    """concat equals nn.* (tests/blocks/test_blocks_dropin.py::test_packed_sequence_input); every mode equals the
    block's
    own lengths path, packed: data (N, 2, H) for None, states and gradients."""
    block = CELLS[cell][0](3, 4, 2, merge_mode=["sum", None] if mode is None else mode)
    lengths = torch.tensor([2, 5, 1, 4])
    x = torch.randn(5, 4, 3, requires_grad=True)
    packed = block(pack_padded_sequence(x, lengths, enforce_sorted=False))
    padded = block(x, lengths=lengths)
    assert packed[0].data.shape == ((12, 2, 4) if mode is None else (12, block.output_size))
    again = pack_padded_sequence(padded[0], lengths, enforce_sorted=False)
    assert torch.equal(again.batch_sizes, packed[0].batch_sizes)
    assert_same_gradients(flat(packed), [again.data, *flat(padded)[1:]], [x, *block.parameters()],
                          [x, *block.parameters()])
    with pytest.raises(ValueError, match="pass either a PackedSequence or lengths, not both"):
        block(pack_padded_sequence(x, lengths, enforce_sorted=False), lengths=lengths)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_row3_unbatched_input_with_and_without_hx(cell: str, batch_first: bool, path: str) -> None:
    block, reference = pair(cell, 3, 4, 2, batch_first=batch_first)
    x = torch.randn(6, 3, requires_grad=True)                   # (T, F): batch_first does not apply
    hx = initial_state(cell, 2, None, 4, requires_grad=True)   # (2L, H)
    states = list(hx) if cell == "lstm" else [hx]
    assert flat(block(x))[0].shape == (6, 8)
    assert_same(flat(block(x)), flat(reference(x)))
    assert_same_gradients(flat(block(x, hx)), flat(reference(x, hx)), [x, *states, *block.parameters()],
                          [x, *states, *reference.parameters()])
    batched_hx = initial_state(cell, 2, 1, 4)
    with pytest.raises(RuntimeError):
        reference(x, batched_hx)
    with pytest.raises(ValueError, match=re.escape("(2 * num_layers, hidden_size) for unbatched input = [4, 4]")):
        block(x, batched_hx)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("mode", ["concat", "sum"])
def test_row4_empty_batch_gives_empty_outputs_and_t0_raises(cell: str, mode: str, path: str) -> None:
    block = CELLS[cell][0](3, 4, 2, merge_mode=mode)
    reference = CELLS[cell][1](3, 4, 2, bidirectional=True)
    x = torch.randn(5, 0, 3, requires_grad=True)
    ours, theirs = flat(block(x)), flat(reference(x))
    assert ours[0].shape == (5, 0, 8 if mode == "concat" else 4)
    assert [t.shape for t in ours[1:]] == [t.shape for t in theirs[1:]] == [(4, 0, 4)] * len(theirs[1:])
    assert flat(block(x, lengths=torch.zeros(0, dtype=torch.long)))[0].shape == ours[0].shape
    ours[0].sum().backward()                                     # connected to the graph, as nn.*'s output
    assert x.grad is not None and x.grad.shape == x.shape
    with pytest.raises(RuntimeError, match="sequence length to be larger than 0"):
        reference(torch.randn(0, 2, 3))
    with pytest.raises(ValueError, match=re.escape("has no time steps (T = 0)")):
        block(torch.randn(0, 2, 3))


@pytest.mark.parametrize("cell", CELLS)
def test_row5_dtype_and_device_mismatches_raise_before_compute(cell: str, path: str) -> None:
    block, reference = pair(cell, 3, 4, 1)
    x64 = torch.randn(5, 2, 3, dtype=F64)
    message = re.escape("input dtype (torch.float64) does not match the block's weight dtype (torch.float32)")
    with pytest.raises(ValueError, match="does not match weight dtype"):
        reference(x64)
    with pytest.raises(ValueError, match=message):
        block(x64)
    with pytest.raises(ValueError, match=re.escape("input dtype (torch.float32) does not match the block's weight "
                                                   "dtype (torch.float64)")):
        block.double()(x64.float())
    block.float()
    hx64 = initial_state(cell, 1, 2, 4, dtype=F64)
    with pytest.raises(TypeError, match=re.escape("has dtype torch.float64 but input has dtype torch.float32")):
        block(x64.float(), hx64)
    with pytest.raises(torch.jit.Error, match=message):
        torch.jit.script(block)(x64)
    with pytest.raises(ValueError, match=re.escape("input is on device cpu but the block's weights are on meta")):
        CELLS[cell][0](3, 4, device="meta")(x64.float())


@pytest.mark.parametrize("cell", CELLS)
def test_row6_functional_call_runs_on_the_passed_weights(cell: str, path: str) -> None:
    block, reference = pair(cell, 3, 4, 2)
    x = torch.randn(5, 2, 3)
    others = {name: torch.randn_like(p, requires_grad=True) for name, p in reference.named_parameters()}
    ours, theirs = functional_call(block, others, (x,)), functional_call(reference, others, (x,))
    assert_same_gradients(flat(ours), flat(theirs), list(others.values()), list(others.values()))
    assert all(p.grad is None for p in block.parameters())


@pytest.mark.parametrize("cell", CELLS)
def test_row7_weight_norm_parametrization_is_used(cell: str, path: str) -> None:
    """The table's call exactly; spectral_norm, orthogonal and the old hook weight_norm are in
    tests/blocks/test_blocks_dropin.py::test_rnn_weight_norm_and_parametrizations."""
    block, reference = pair(cell, 3, 4, 1)
    for module in (block, reference):
        parametrizations.weight_norm(module, "weight_hh_l0")
    with torch.no_grad():
        reference.parametrizations.weight_hh_l0.original0.mul_(3.0)     # the weight's norms, tripled
    block.load_state_dict(reference.state_dict())
    x = torch.randn(5, 2, 3)
    originals = [block.parametrizations.weight_hh_l0.original0, block.parametrizations.weight_hh_l0.original1]
    their_originals = [reference.parametrizations.weight_hh_l0.original0,
                       reference.parametrizations.weight_hh_l0.original1]
    assert_same_gradients(flat(block(x)), flat(reference(x)), originals, their_originals)


@pytest.mark.parametrize("cell", CELLS)
def test_row8_torch_func_grad_equals_the_torch_module(cell: str, path: str, request: pytest.FixtureRequest) -> None:
    block, reference = pair(cell, 3, 4, 2, dtype=F64)
    x = torch.randn(5, 2, 3, dtype=F64)
    params = {name: p.detach() for name, p in reference.named_parameters()}
    theirs = grad(lambda p: functional_call(reference, p, (x,))[0].pow(2).sum())(params)
    ours = grad(lambda p: functional_call(block, p, (x,))[0].pow(2).sum())(params)
    assert_same(list(ours.values()), list(theirs.values()), F64)


@pytest.mark.parametrize("cell", CELLS)
def test_row8_vmap_over_stacked_ensembles_fails_as_for_the_torch_module(cell: str, path: str,
                                                                         request: pytest.FixtureRequest) -> None:
    """torch 2.13 has no batching rule for aten::lstm/gru/rnn_tanh, so vmap over an nn.LSTM ensemble raises; the
    blocks raise the same error (they run the same fused kernels under functorch), not wrong numbers."""
    x = torch.randn(5, 2, 3)
    for cls in (CELLS[cell][1], CELLS[cell][0]):
        kwargs = {"bidirectional": True} if cls is CELLS[cell][1] else {}
        members = [cls(3, 4, **kwargs) for _ in range(3)]
        params, buffers = stack_module_state(members)
        with pytest.raises(RuntimeError, match="Batching rule not implemented for aten::"):
            vmap(lambda p, b, m=members[0]: functional_call(m, (p, b), (x,))[0])(params, buffers)


@pytest.mark.parametrize("cell", CELLS)
def test_row9_all_weights_and_flatten_parameters(cell: str, path: str) -> None:
    block, reference = pair(cell, 3, 4, 2)
    assert [[w.shape for w in ws] for ws in block.all_weights] == [[w.shape for w in ws] for ws in
                                                                   reference.all_weights]
    assert all(w is getattr(block, n) for ws, names in zip(block.all_weights, block._all_weights, strict=True)
               for w, n in zip(ws, names, strict=True))
    x = torch.randn(5, 2, 3)
    before = flat(block(x))
    assert block.flatten_parameters() is None
    assert_same(flat(block(x)), before)


@pytest.mark.parametrize("cell", CELLS)
def test_row10_dropout_with_one_layer_warns_as_the_torch_module(cell: str) -> None:
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1") as theirs:
        CELLS[cell][1](3, 4, 1, dropout=0.5, bidirectional=True)
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1") as ours:
        CELLS[cell][0](3, 4, 1, dropout=0.5)
    assert str(ours[0].message) == str(theirs[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        CELLS[cell][0](3, 4, 2, dropout=0.5)


@pytest.mark.parametrize("cell", CELLS)
def test_assign_loads_and_dtype_changes_act_on_every_path(cell: str, path: str) -> None:
    """load_state_dict(assign=True), .double() and .to(dtype): eager, and TorchScript (scripted after, or the
    scripted module converted)."""
    block, _ = pair(cell, 3, 4, 2)
    other = CELLS[cell][1](3, 4, 2, bidirectional=True)
    block.load_state_dict(other.state_dict(), assign=True)
    x = torch.randn(5, 2, 3)
    assert_same(flat(block(x)), flat(other(x)))
    assert_same(flat(torch.jit.script(block)(x)), flat(other(x)))
    block.double()
    other.double()
    assert_same(flat(block(x.double())), flat(other(x.double())), F64)
    scripted = torch.jit.script(block.to(torch.float32))
    scripted.double()
    assert_same(flat(scripted(x.double())), flat(other(x.double())), F64)


def test_constructor_refuses_what_it_does_not_do() -> None:
    with pytest.raises(ValueError, match=re.escape("proj_size=2: BiLSTM does not support nn.LSTM's projections")):
        BiLSTM(3, 4, proj_size=2)
    with pytest.raises(ValueError, match=re.escape("bidirectional=False: BiGRU is always bidirectional")):
        BiGRU(3, 4, bidirectional=False)
    with pytest.raises(TypeError, match="bias must be a bool, got str"):
        BiRNN(3, 4, bias="yes")
    block = BiLSTM(3, 4, 2, batch_first=True, bidirectional=True, proj_size=0)   # nn.LSTM's keywords carry over
    assert block.bidirectional and block.proj_size == 0
    packed = pack_padded_sequence(torch.randn(4, 5, 3), torch.tensor([5, 2, 4, 1]), batch_first=True,
                                  enforce_sorted=False)
    out, _ = pad_packed_sequence(block(packed)[0], batch_first=True)           # packed data ignore batch_first
    assert out.shape == (4, 5, 8)


class _Parent(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = BiGRU(3, 4, 2, merge_mode="sum")

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        return self.block(x, lengths=lengths)[0]


def test_scripting_a_parent_leaves_an_eager_block_that_still_takes_packed_sequences() -> None:
    """torch.jit.script compiles a twin of each block (TorchScript has no keyword-only arguments) and leaves it in
    the parent: eagerly it is still the public block, sharing the original's state."""
    parent = _Parent()
    block = parent.block
    x, lengths = torch.randn(5, 3, 3), torch.tensor([5, 1, 3])
    want = block(x, lengths=lengths)
    scripted = torch.jit.script(parent)
    torch.testing.assert_close(scripted(x, lengths), want[0], atol=1e-6, rtol=0)
    twin = parent.block
    assert twin is not block and isinstance(twin, BiGRU) and repr(twin) == repr(block)
    assert twin.weight_ih_l0 is block.weight_ih_l0
    assert_same(flat(twin(x, lengths=lengths)), flat(want))
    packed = twin(pack_padded_sequence(x, lengths, enforce_sorted=False))[0]
    torch.testing.assert_close(pad_packed_sequence(packed)[0], want[0], atol=1e-6, rtol=0)
    block.eval()
    assert not twin.training                                     # one module: the twin shares its state


@pytest.mark.parametrize("cell", CELLS)
def test_run_returns_output_and_both_states_for_every_block(cell: str, path: str) -> None:
    """``run(input, h0, c0, lengths=)``: one return type for the three blocks (what models/keras/module.py calls)."""
    block = CELLS[cell][0](3, 4, 2, merge_mode="ave", batch_first=True)
    x, lengths = torch.randn(3, 5, 3), torch.tensor([5, 2, 4])
    out, h_n, c_n = block.run(x, lengths=lengths)
    want = flat(block(x, lengths=lengths))
    assert_same([out, h_n, c_n], want if cell == "lstm" else [*want, want[1]])
    if cell != "lstm":
        with pytest.raises(ValueError, match="c0 is the LSTM's cell state"):
            block.run(x, torch.zeros(4, 3, 4), torch.zeros(4, 3, 4))
    with pytest.raises(TypeError, match="h0 got a 1-D integer tensor"):
        block.run(x, lengths)


@pytest.mark.parametrize("cell", CELLS)
def test_unbatched_input_takes_one_length(cell: str, path: str) -> None:
    block = CELLS[cell][0](3, 4, 2, merge_mode="sum")
    x = torch.randn(6, 3)
    for length in (torch.tensor(4), torch.tensor([4])):
        out, state = flat(block(x, lengths=length))[0], flat(block(x, lengths=length))[1:]
        alone = flat(block(x[:4]))
        torch.testing.assert_close(out[:4], alone[0], atol=1e-6, rtol=0)
        assert torch.equal(out[4:], torch.zeros_like(out[4:]))
        assert_same(state, alone[1:])
    with pytest.raises(ValueError, match=re.escape("lengths for unbatched input must hold one length")):
        block(x, lengths=torch.tensor([4, 2]))
