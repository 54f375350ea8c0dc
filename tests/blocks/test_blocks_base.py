"""``models/blocks/base.py``'s own logic, against values written out here: the constructor's attributes, parameter
names and shapes after each merge mode, its refusals and ``nn.LSTM``'s dropout warning word for word, the
initial range, the ``repr``, each layer's slice of the flat weights, the fused call sites, and the forward's
shape handling (unbatched, ``batch_first``, states) on both CPU paths (issue 37's mutation testing)."""

import math
import re
import warnings

import pytest
import torch

from models import BiGRU, BiLSTM, BiRNN
from models.blocks import cpu_kernel

TOL = {"atol": 2e-5, "rtol": 2e-5}


def raises(error: type, message: str):  # type: ignore[no-untyped-def]
    return pytest.raises(error, match="^" + re.escape(message) + "$")


def paths() -> list:
    return [cpu_kernel.disabled, *([cpu_kernel.forced] if cpu_kernel.available() else [])]


@pytest.mark.parametrize(("cls", "gates", "mode"), [(BiLSTM, 4, "LSTM"), (BiGRU, 3, "GRU"), (BiRNN, 1, "RNN_TANH")])
def test_the_attributes_and_parameters_after_each_merge_mode(cls: type, gates: int, mode: str) -> None:
    block = cls(3, 5, num_layers=3, merge_mode=["sum", "concat", None], batch_first=True, dropout=0.25)
    assert (block.mode, block.gates, block.input_size, block.hidden_size, block.num_layers) == (mode, gates, 3, 5, 3)
    assert block.bias is True and block.batch_first is True and block.bidirectional is True and block.proj_size == 0
    assert block.dropout == 0.25 and type(block.dropout) is float
    assert block.merge_modes == ["sum", "concat", None] and block.all_concat is False and block.output_size == 10
    names = [f"{kind}_l{layer}{suffix}" for layer in range(3) for suffix in ("", "_reverse")
             for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
    assert block._flat_weights_names == names
    assert [name for name, _ in block.named_parameters()] == names
    widths = {0: 3, 1: 5, 2: 10}                                # layer 1 reads sum's H, layer 2 concat's 2H
    for layer, width in widths.items():
        for suffix in ("", "_reverse"):
            assert getattr(block, f"weight_ih_l{layer}{suffix}").shape == (gates * 5, width)
            assert getattr(block, f"weight_hh_l{layer}{suffix}").shape == (gates * 5, 5)
            assert getattr(block, f"bias_ih_l{layer}{suffix}").shape == (gates * 5,)
            assert getattr(block, f"bias_hh_l{layer}{suffix}").shape == (gates * 5,)
    assert block._all_weights == [names[i:i + 4] for i in range(0, 24, 4)]


@pytest.mark.parametrize(("modes", "size", "all_concat"), [("concat", 8, True), (["concat", "concat"], 8, True),
                                                            (["concat", "mul"], 4, False),
                                                            (["ave", "concat"], 8, False),
                                                            (["sum", None], 8, False)])
def test_output_size_and_the_single_fused_call(modes: object, size: int, all_concat: bool) -> None:
    block = BiGRU(3, 4, num_layers=2, merge_mode=modes)
    assert block.output_size == size and block.all_concat is all_concat
    assert block(torch.randn(5, 2, 3))[0].flatten(2).shape[-1] == size


def test_without_biases_there_are_two_weights_per_direction() -> None:
    block = BiLSTM(3, 5, num_layers=2, bias=False)
    assert block._flat_weights_names == [f"{kind}_l{layer}{suffix}" for layer in range(2)
                                         for suffix in ("", "_reverse") for kind in ("weight_ih", "weight_hh")]


@pytest.mark.parametrize(("kwargs", "error", "message"), [
    ({"bias": 1}, TypeError, "bias must be a bool, got int: 1"),
    ({"batch_first": "yes"}, TypeError, "batch_first must be a bool, got str: 'yes'"),
    ({"bidirectional": False}, ValueError,
     "bidirectional=False: {cls} is always bidirectional (it exists to merge the two directions); use nn.{nn} for "
     "one direction"),
    ({"bidirectional": 1}, ValueError,
     "bidirectional=1: {cls} is always bidirectional (it exists to merge the two directions); use nn.{nn} for "
     "one direction"),
])
@pytest.mark.parametrize(("cls", "nn_name"), [(BiLSTM, "LSTM"), (BiGRU, "GRU"), (BiRNN, "RNN")])
def test_the_constructors_refusals_word_for_word(cls: type, nn_name: str, kwargs: dict, error: type,
                                                 message: str) -> None:
    with raises(error, message.format(cls=cls.__name__, nn=nn_name)):
        cls(3, 5, **kwargs)


def test_the_dropout_warning_is_nn_lstms_and_points_at_the_caller() -> None:
    with pytest.warns(UserWarning) as caught:
        BiLSTM(3, 5, dropout=0.5)
    assert str(caught[0].message) == ("dropout option adds dropout after all but last recurrent layer, so non-zero "
                                      "dropout expects num_layers greater than 1, but got dropout=0.5 and "
                                      "num_layers=1")
    assert caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        BiLSTM(3, 5, num_layers=2, dropout=0.5)
        BiLSTM(3, 5, num_layers=1, dropout=0.0)


@pytest.mark.parametrize("hidden", [1, 4, 25])
def test_every_parameter_starts_uniform_within_one_over_sqrt_h(hidden: int) -> None:
    torch.manual_seed(0)
    bound = 1.0 / math.sqrt(hidden)
    values = torch.cat([p.detach().flatten() for p in BiGRU(7, hidden, num_layers=2).parameters()])
    assert values.abs().max() <= bound
    assert values.max() > 0.9 * bound and values.min() < -0.9 * bound
    assert values.mean().abs() < 0.1 * bound


@pytest.mark.parametrize(("block", "text"), [
    (BiLSTM(3, 5), "BiLSTM(3, 5, num_layers=1, merge_mode=['concat'])"),
    (BiGRU(3, 5, num_layers=2, merge_mode=["sum", None], bias=False, batch_first=True, dropout=0.5),
     "BiGRU(3, 5, num_layers=2, merge_mode=['sum', None], bias=False, batch_first=True, dropout=0.5)"),
    (BiRNN(2, 4, dropout=0.0, batch_first=False, bias=True), "BiRNN(2, 4, num_layers=1, merge_mode=['concat'])"),
])
def test_the_repr(block: torch.nn.Module, text: str) -> None:
    assert repr(block) == text


@pytest.mark.parametrize("bias", [True, False])
def test_each_layers_slice_of_the_flat_weights(bias: bool) -> None:
    block = BiLSTM(3, 5, num_layers=3, bias=bias, merge_mode="sum")
    weights = block._weights_now()
    kinds = ("weight_ih", "weight_hh", "bias_ih", "bias_hh") if bias else ("weight_ih", "weight_hh")
    for layer in range(3):
        forward = [getattr(block, f"{kind}_l{layer}") for kind in kinds]
        backward = [getattr(block, f"{kind}_l{layer}_reverse") for kind in kinds]
        for direction, expected in ((0, forward), (1, backward), (2, forward + backward)):
            got = block._layer_weights(weights, layer, direction)
            assert len(got) == len(expected) and all(a is b for a, b in zip(got, expected, strict=True))


@pytest.mark.parametrize("bias", [True, False])
def test_the_fused_call_sites(bias: bool) -> None:
    block = BiGRU(3, 5, num_layers=2, bias=bias)
    assert block.cudnn_call_sites() == [(block._flat_weights_names, 3, 2)]
    block = BiGRU(3, 5, num_layers=3, bias=bias, merge_mode=["sum", "concat", "mul"])
    per = 8 if bias else 4
    names = block._flat_weights_names
    assert block.cudnn_call_sites() == [(names[:per], 3, 1), (names[per:2 * per], 5, 1), (names[2 * per:], 10, 1)]


@pytest.mark.parametrize("cls", [BiGRU, BiRNN])
def test_run_refuses_a_cell_state_for_one_state_blocks(cls: type) -> None:
    block = cls(3, 5)
    with raises(ValueError, f"c0 is the LSTM's cell state; {block.mode} blocks take h0 only"):
        block.run(torch.randn(4, 2, 3), None, torch.zeros(2, 2, 5))


@pytest.mark.parametrize("use", paths())
@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_unbatched_input_is_one_batched_row(use, batch_first: bool, cell: str) -> None:  # type: ignore[no-untyped-def]
    """``(T, F)`` is ``(T, 1, F)`` whatever ``batch_first`` says, with states ``(2L, H)``; lengths of shape
    ``()`` or ``(1,)``; anything else is refused word for word."""
    torch.manual_seed(0)
    block = (BiLSTM if cell == "lstm" else BiGRU)(3, 4, num_layers=2, merge_mode=["mul", "ave"],
                                                  batch_first=batch_first)
    x, h0, c0 = torch.randn(6, 3), torch.randn(4, 4), torch.randn(4, 4)
    hx = (h0, c0) if cell == "lstm" else h0
    batched_hx = (h0.unsqueeze(1), c0.unsqueeze(1)) if cell == "lstm" else h0.unsqueeze(1)
    row = x.unsqueeze(0 if batch_first else 1)
    with use(), torch.no_grad():
        out, state = block(x, hx, lengths=torch.tensor(4))
        want, want_state = block(row, batched_hx, lengths=torch.tensor([4]))
        with raises(ValueError, "lengths for unbatched input must hold one length (shape () or (1,)), got shape "
                                "[1, 1]"):
            block(x, lengths=torch.tensor([[4]]))
    assert out.shape == (6, 4)
    torch.testing.assert_close(out, want.squeeze(0 if batch_first else 1), rtol=0, atol=0)
    for a, b in zip(state if cell == "lstm" else (state,), want_state if cell == "lstm" else (want_state,),
                    strict=True):
        assert a.shape == (4, 4)
        torch.testing.assert_close(a, b.squeeze(1), rtol=0, atol=0)


@pytest.mark.parametrize("use", paths())
@pytest.mark.parametrize("modes", ["concat", ["sum", "mul"]])
def test_batch_first_is_the_transpose_of_time_major(use, modes: object) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    time_major = BiLSTM(3, 4, num_layers=2, merge_mode=modes)
    batch_major = BiLSTM(3, 4, num_layers=2, merge_mode=modes, batch_first=True)
    batch_major.load_state_dict(time_major.state_dict())
    x, lengths = torch.randn(5, 3, 3), torch.tensor([5, 2, 4])
    hx = (torch.randn(4, 3, 4), torch.randn(4, 3, 4))
    with use(), torch.no_grad():
        for kwargs in ({}, {"lengths": lengths}):
            a, (h_a, c_a) = time_major(x, hx, **kwargs)
            b, (h_b, c_b) = batch_major(x.transpose(0, 1), hx, **kwargs)
            torch.testing.assert_close(b, a.transpose(0, 1), rtol=0, atol=0)
            torch.testing.assert_close((h_b, c_b), (h_a, c_a), rtol=0, atol=0)


@pytest.mark.parametrize("use", paths())
@pytest.mark.parametrize("cls", [BiLSTM, BiGRU, BiRNN])
def test_initial_states_reach_every_layer_and_direction(use, cls: type) -> None:  # type: ignore[no-untyped-def]
    """Against ``nn.LSTM``/``nn.GRU``/``nn.RNN`` with random states: each of the ``2L`` rows goes to its own layer
    and direction (``concat``, one fused call), and, through a per-layer mode, to the same rows."""
    torch.manual_seed(0)
    block = cls(3, 4, num_layers=2)
    reference = {BiLSTM: torch.nn.LSTM, BiGRU: torch.nn.GRU, BiRNN: torch.nn.RNN}[cls](3, 4, 2, bidirectional=True)
    reference.load_state_dict(block.state_dict())
    x = torch.randn(5, 2, 3)
    hx = (torch.randn(4, 2, 4), torch.randn(4, 2, 4)) if cls is BiLSTM else torch.randn(4, 2, 4)
    with use(), torch.no_grad():
        ours, theirs = block(x, hx), reference(x, hx)
        lengths_ours = block(x, hx, lengths=torch.tensor([5, 5]))
    for got in (ours, lengths_ours):
        torch.testing.assert_close(got[0], theirs[0], **TOL)
        torch.testing.assert_close(got[1], theirs[1], **TOL)


@pytest.mark.parametrize("use", paths())
@pytest.mark.parametrize("cls", [BiLSTM, BiGRU, BiRNN])
def test_initial_states_of_a_per_layer_merge_go_to_their_own_layer(use, cls: type) -> None:  # type: ignore[no-untyped-def]
    """``merge_mode=["sum", "mul"]`` with random ``hx``: the block equals two one-layer torch modules chained by
    hand, layer ``l`` starting from rows ``2l, 2l + 1`` of ``hx`` (so a row taken from another layer fails)."""
    torch.manual_seed(0)
    block = cls(3, 4, num_layers=2, merge_mode=["sum", "mul"])
    torch_cls = {BiLSTM: torch.nn.LSTM, BiGRU: torch.nn.GRU, BiRNN: torch.nn.RNN}[cls]
    layers = [torch_cls(3, 4, bidirectional=True), torch_cls(4, 4, bidirectional=True)]
    for layer, module in enumerate(layers):
        module.load_state_dict({key: getattr(block, key.replace("l0", f"l{layer}")) for key in module.state_dict()})
    x = torch.randn(5, 2, 3)
    h0, c0 = torch.randn(4, 2, 4), torch.randn(4, 2, 4)
    hx = (h0, c0) if cls is BiLSTM else h0
    with use(), torch.no_grad():
        out, state = block(x, hx)
        rows, states = x, []
        for layer, (module, merge) in enumerate(zip(layers, (torch.add, torch.mul), strict=True)):
            given = (h0[2 * layer:2 * layer + 2], c0[2 * layer:2 * layer + 2]) if cls is BiLSTM else \
                h0[2 * layer:2 * layer + 2]
            both, last = module(rows, given)
            rows = merge(both[..., :4], both[..., 4:])
            states.append(last)
    torch.testing.assert_close(out, rows, **TOL)
    if cls is BiLSTM:
        torch.testing.assert_close(state[0], torch.cat([s[0] for s in states]), **TOL)
        torch.testing.assert_close(state[1], torch.cat([s[1] for s in states]), **TOL)
    else:
        torch.testing.assert_close(state, torch.cat(states), **TOL)
