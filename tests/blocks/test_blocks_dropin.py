"""PyTorch's own RNN tests (``test/test_nn.py``: argument checks, initial hidden states, variable sequences,
PackedSequence input, dropout state, weight norm, grad and gradgrad; ``test/nn/test_pruning.py``: pruning), ported
to run the blocks with ``merge_mode="concat"`` next to ``nn.LSTM``/``nn.GRU``/``nn.RNN(bidirectional=True)``
holding the same weights. Outputs, states and gradients equal ``nn.*`` (float32 1e-5, float64 1e-10); where
``nn.*`` raises, the block raises a clear error. Every test runs on both CPU paths (``path`` fixture)."""

import copy
import re

import pytest
import torch
from helpers.dropin_pairs import CELLS, assert_same, assert_same_gradients, flat, initial_state, pair, path
from torch.nn.utils import parametrizations, prune
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

__all__ = ["path"]  # the fixture, imported so every test here can use it
F64 = torch.float64


@pytest.mark.parametrize("cell", CELLS)
def test_rnn_args_check(cell: str, path: str) -> None:
    """test_nn's test_rnn_args_check: a wrong input size or a wrong hidden shape is refused by both."""
    input_size, hidden_size, num_layers, seq_len, batch = 3, 5, 2, 4, 6
    block, reference = pair(cell, input_size, hidden_size, num_layers)

    def hx(layers: int = num_layers, rows: int = batch, width: int = hidden_size) -> object:
        h = torch.randn(2 * layers, rows, width)
        return (h, torch.randn_like(h)) if cell == "lstm" else h

    good, state = torch.randn(seq_len, batch, input_size), hx()
    assert_same(flat(block(good, state)), flat(reference(good, state)))
    cases = [(torch.randn(seq_len, batch, input_size + 1), hx(), "features"),
             (good, hx(layers=num_layers + 1), "must have shape"),
             (good, hx(rows=batch + 1), "must have shape"),
             (good, hx(width=hidden_size + 1), "must have shape")]
    if cell == "lstm":
        h, c = hx()
        cases += [(good, (h, c[:, :-1]), re.escape("hx[1] must have shape")),
                  (good, (h[:-1], c), re.escape("hx[0] must have shape"))]
    for x, state, message in cases:
        with pytest.raises(RuntimeError):
            reference(x, state)
        with pytest.raises(ValueError, match=message):
            block(x, state)


@pytest.mark.parametrize("cell", CELLS)
def test_rnn_initial_hidden_state(cell: str, path: str) -> None:
    """test_nn's test_rnn_initial_hidden_state: no hx equals zeros, and both equal nn.*."""
    block, reference = pair(cell, 3, 5, 2)
    x = torch.randn(6, 4, 3)
    zeros = initial_state(cell, 2, 4, 5)
    zeros = tuple(torch.zeros_like(t) for t in zeros) if cell == "lstm" else torch.zeros_like(zeros)
    assert_same(flat(block(x)), flat(block(x, zeros)))
    assert_same(flat(block(x)), flat(reference(x)))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("batch_first", [False, True])
def test_variable_sequence(cell: str, batch_first: bool, path: str) -> None:
    """test_nn's _test_variable_sequence: a packed batch (sorted, as there) equals nn.* and each sequence run alone,
    outputs, states and the input's gradient."""
    block, reference = pair(cell, 3, 4, 2, dtype=F64, batch_first=batch_first)
    lengths = [10, 10, 6, 2, 2, 1, 1]
    padded = torch.randn(len(lengths), 10, 3, dtype=F64)
    if not batch_first:
        padded = padded.transpose(0, 1).contiguous()
    padded.requires_grad_()
    reference_padded = padded.detach().clone().requires_grad_()
    ours = block(pack_padded_sequence(padded, lengths, batch_first=batch_first))
    theirs = reference(pack_padded_sequence(reference_padded, lengths, batch_first=batch_first))
    assert_same_gradients(flat(ours), flat(theirs), [padded, *block.parameters()],
                          [reference_padded, *reference.parameters()], F64)
    out, _ = pad_packed_sequence(ours[0], batch_first=batch_first)
    h_n = ours[1][0] if cell == "lstm" else ours[1]
    for row, n in enumerate(lengths):
        alone = padded[row, :n] if batch_first else padded[:n, row]
        alone_out, alone_state = block(alone)                                   # unbatched (T, F)
        torch.testing.assert_close(out[row, :n] if batch_first else out[:n, row], alone_out, atol=1e-10, rtol=0)
        alone_h = alone_state[0] if cell == "lstm" else alone_state
        torch.testing.assert_close(h_n[:, row], alone_h, atol=1e-10, rtol=0)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("enforce_sorted", [True, False])
def test_packed_sequence_input(cell: str, enforce_sorted: bool, path: str) -> None:
    """A PackedSequence (sorted, or not with sorted_indices) gives nn.*'s PackedSequence: data, batch_sizes,
    sorted_indices, unsorted_indices, states in the caller's order and every gradient (hx included)."""
    block, reference = pair(cell, 3, 4, 2)
    lengths = torch.tensor([6, 5, 3, 3, 1]) if enforce_sorted else torch.tensor([3, 6, 1, 5, 3])
    x = torch.randn(6, 5, 3, requires_grad=True)
    hx = initial_state(cell, 2, 5, 4, requires_grad=True)
    states = list(hx) if cell == "lstm" else [hx]
    ours = block(pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted), hx)
    theirs = reference(pack_padded_sequence(x, lengths, enforce_sorted=enforce_sorted), hx)
    assert type(ours[0]) is type(theirs[0])
    for field in ("batch_sizes", "sorted_indices", "unsorted_indices"):
        mine, reference_field = getattr(ours[0], field), getattr(theirs[0], field)
        assert (mine is None and reference_field is None) or torch.equal(mine, reference_field), field
    assert_same_gradients(flat(ours), flat(theirs), [x, *states, *block.parameters()],
                          [x, *states, *reference.parameters()])


@pytest.mark.parametrize("p", [0.0, 0.1234])
@pytest.mark.parametrize("train", [True, False])
def test_rnn_dropout_state(p: float, train: bool, path: str) -> None:
    """test_nn's test_RNN_dropout_state: a copy (there a pickled round trip) draws its own dropout masks; without
    dropout or in eval mode every call and the copy agree."""
    block = CELLS["rnn"][0](10, 10, 2, bias=False, dropout=p, nonlinearity="relu")
    block.train(train)
    x, hx = torch.rand(4, 3, 10), torch.rand(4, 3, 10)
    first, second = block(x, hx), block(x, hx)
    twin = copy.deepcopy(block)
    twin.flatten_parameters()
    third = twin(x, hx)
    if p == 0 or not train:
        assert_same(flat(first), flat(second))
        assert_same(flat(first), flat(third))
    else:
        assert not torch.allclose(first[0], second[0])
        assert not torch.allclose(first[0], third[0])


@pytest.mark.parametrize("train", [True, False])
def test_rnn_change_dropout(train: bool, path: str) -> None:
    """test_nn's test_RNN_change_dropout: the dropout probability set on the module is read at every call."""
    block = CELLS["gru"][0](10, 10, 2, dropout=0.0)
    block.train(train)
    x = torch.rand(4, 3, 10)
    for p in (0.0, 0.276, 0.731, 1.0):
        block.dropout = p
        first, second = block(x)[0], block(x)[0]
        if p == 0.0 or p == 1.0 or not train:   # p = 1 zeroes the second layer's input: no randomness left
            torch.testing.assert_close(first, second, atol=0, rtol=0)
        else:
            assert not torch.allclose(first, second)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("kind", ["weight_norm", "spectral_norm", "orthogonal", "weight_norm_hook"])
def test_rnn_weight_norm_and_parametrizations(cell: str, kind: str, path: str) -> None:
    """test_nn's test_rnn_weight_norm (and torch.nn.utils.parametrizations): the parametrized weight is the one in
    use, and the gradient reaches the parametrization's own parameters, exactly as with nn.*."""
    block, reference = pair(cell, 3, 4, 2)
    name = "weight_hh_l1_reverse"

    def apply(module: torch.nn.Module) -> torch.nn.Module:
        if kind == "weight_norm_hook":
            with pytest.warns(FutureWarning):
                return torch.nn.utils.weight_norm(module, name)
        return getattr(parametrizations, kind)(module, name)

    apply(reference)
    apply(block)
    with torch.no_grad():  # the parametrized weight now differs from the plain one the block was built with
        for parameter in reference.parameters():
            parameter.add_(0.3 * torch.randn_like(parameter))
    block.load_state_dict(reference.state_dict())
    if kind == "spectral_norm":
        # In training every read of the weight runs a power iteration that updates u and v, and nn.* reads its
        # weights more than once per call: compare in eval mode, where the weight is a function of the parameters.
        block.eval()
        reference.eval()
    x = torch.randn(5, 2, 3)
    ours, theirs = block(x), reference(x)
    assert_same_gradients(flat(ours), flat(theirs), list(block.parameters()), list(reference.parameters()))
    parametrized = [n for n, _ in block.named_parameters() if "original" in n or n.endswith(("_g", "_v"))]
    assert parametrized, "the parametrization registered its own parameters"


@pytest.mark.parametrize("cell", CELLS)
def test_rnn_pruning(cell: str, path: str) -> None:
    """test_pruning's test_rnn_pruning: a pruned weight (orig * mask, recomputed by a forward pre-hook) is used,
    before and after prune.remove, outputs and gradients as nn.*."""
    block, reference = pair(cell, 3, 4, 2)
    for module in (block, reference):
        prune.l1_unstructured(module, "weight_ih_l0", amount=0.5)
        prune.random_unstructured(module, "weight_hh_l1_reverse", amount=0.3)
    block.weight_hh_l1_reverse_mask.copy_(reference.weight_hh_l1_reverse_mask)  # random masks: use one
    x = torch.randn(5, 2, 3)
    assert_same_gradients(flat(block(x)), flat(reference(x)), list(block.parameters()), list(reference.parameters()))
    assert "weight_ih_l0_orig" in dict(block.named_parameters())
    for module in (block, reference):
        prune.remove(module, "weight_ih_l0")
        prune.remove(module, "weight_hh_l1_reverse")
    assert_same(flat(block(x)), flat(reference(x)))
    assert (block.weight_ih_l0 == 0).sum() == block.weight_ih_l0.numel() // 2


def _flat_call(module: torch.nn.Module, cell: str):  # type: ignore[no-untyped-def]
    def call(x: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> tuple:
        return tuple(flat(module(x, (h, c) if cell == "lstm" else h)))
    return call


@pytest.mark.parametrize("cell", CELLS)
def test_grad_and_gradgrad(cell: str, path: str, request: pytest.FixtureRequest) -> None:
    """test_nn's test_LSTM/GRU_grad_and_gradgrad: gradcheck and gradgradcheck in float64 (input and states), and
    the first gradients equal nn.*'s."""
    block, reference = pair(cell, 3, 3, 2, dtype=F64, batch_first=True)
    x = torch.randn(3, 4, 3, dtype=F64, requires_grad=True)
    h = torch.randn(4, 3, 3, dtype=F64, requires_grad=True)
    c = torch.randn(4, 3, 3, dtype=F64, requires_grad=True)
    call = _flat_call(block, cell)
    assert torch.autograd.gradcheck(call, (x, h, c))
    assert_same_gradients(call(x, h, c), _flat_call(reference, cell)(x, h, c), [x, h, c, *block.parameters()],
                          [x, h, c, *reference.parameters()], F64)
    assert torch.autograd.gradgradcheck(call, (x, h, c))
