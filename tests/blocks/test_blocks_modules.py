"""``models/blocks/modules.py``'s own logic: the three constructors' refusals, ``forward``'s argument checks (each
message word for word), ``hx`` handed through unchanged, the ``repr``, and the documentation templates filled in
(issue 37's mutation testing: a dropped check, a swapped state or a garbled message fails here)."""

import re

import pytest
import torch
from torch.nn.utils.rnn import pack_sequence

from models import BiGRU, BiLSTM, BiRNN
from models.blocks import cpu_kernel


def raises(error: type, message: str):  # type: ignore[no-untyped-def]
    return pytest.raises(error, match="^" + re.escape(message) + "$")


X = torch.randn(4, 2, 3)


@pytest.mark.parametrize("hx", [torch.zeros(2, 2, 5), torch.zeros(1, 2, 2, 5)])
def test_one_tensor_where_the_lstm_takes_two_is_refused(hx: torch.Tensor) -> None:
    with raises(TypeError, f"hx for BiLSTM must be a tuple (h_0, c_0) as for nn.LSTM, got one tensor of shape "
                           f"{list(hx.shape)}"):
        BiLSTM(3, 5)(X, hx)


@pytest.mark.parametrize(("hx", "name"), [
    ((torch.zeros(2, 2, 5),), "tuple"),
    ((torch.zeros(2, 2, 5),) * 3, "tuple"),
    ([torch.zeros(2, 2, 5), 0.0], "list"),
    ((None, torch.zeros(2, 2, 5)), "tuple"),
])
def test_an_lstm_hx_that_is_not_two_tensors_is_refused(hx: object, name: str) -> None:
    with raises(TypeError, f"hx for BiLSTM must be a tuple (h_0, c_0) of two tensors, got {name}"):
        BiLSTM(3, 5)(X, hx)


def test_lengths_as_the_lstms_hx_is_named_as_lengths() -> None:
    with pytest.raises(TypeError, match=re.escape("hx got a 1-D integer tensor (dtype torch.int64, shape [2]), "
                                                  "which looks like lengths")):
        BiLSTM(3, 5)(X, torch.tensor([4, 2]))


@pytest.mark.parametrize("block", [BiLSTM(3, 5), BiGRU(3, 5), BiRNN(3, 5)], ids=["lstm", "gru", "rnn"])
def test_forwards_argument_types_are_checked_word_for_word(block: torch.nn.Module) -> None:
    with raises(TypeError, "input must be a Tensor or a PackedSequence, got list"):
        block([[1.0, 2.0, 3.0]])
    with raises(TypeError, "lengths must be an integer tensor (B,), got list: [4, 2]"):
        block(X, lengths=[4, 2])
    with raises(TypeError, "hx must be a tensor (h_0) or, for BiLSTM, a tuple (h_0, c_0); got float"):
        block(X, 0.0)
    block(X, lengths=None)
    block(X, None)


@pytest.mark.parametrize("cls", [BiGRU, BiRNN])
def test_a_tuple_where_one_state_belongs_is_refused(cls: type) -> None:
    with raises(TypeError, f"hx for {cls.__name__} must be a tensor h_0, got tuple"):
        cls(3, 5)(X, (torch.zeros(2, 2, 5), torch.zeros(2, 2, 5)))


@pytest.mark.parametrize("use_kernel", [False, True])
def test_the_given_states_are_used_as_h0_and_c0_in_that_order(use_kernel: bool) -> None:
    """Swapping ``h_0`` and ``c_0``, or dropping either, changes the output (the reference: ``nn.LSTM``)."""
    torch.manual_seed(0)
    block = BiLSTM(3, 5)
    reference = torch.nn.LSTM(3, 5, bidirectional=True)
    reference.load_state_dict(block.state_dict())
    h0, c0 = torch.randn(2, 2, 5), torch.randn(2, 2, 5) * 3
    with (cpu_kernel.forced() if use_kernel and cpu_kernel.available() else cpu_kernel.disabled()), torch.no_grad():
        ours, (h_n, c_n) = block(X, (h0, c0))
        theirs, (h_ref, c_ref) = reference(X, (h0, c0))
    for a, b in ((ours, theirs), (h_n, h_ref), (c_n, c_ref)):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)


def test_a_packed_sequence_gives_both_lstm_states() -> None:
    torch.manual_seed(0)
    block = BiLSTM(3, 5)
    packed = pack_sequence([torch.randn(4, 3), torch.randn(2, 3)])
    h0, c0 = torch.randn(2, 2, 5), torch.randn(2, 2, 5)
    with torch.no_grad():
        _, (h_n, c_n) = block(packed, (h0, c0))
        _, (h_ref, c_ref) = block(torch.nn.utils.rnn.pad_packed_sequence(packed)[0], (h0, c0),
                                  lengths=torch.tensor([4, 2]))
    torch.testing.assert_close(h_n, h_ref, rtol=0, atol=0)
    torch.testing.assert_close(c_n, c_ref, rtol=0, atol=0)
    assert not torch.equal(h_n, c_n)


@pytest.mark.parametrize("proj_size", [1, -1])
def test_projections_are_refused_word_for_word(proj_size: int) -> None:
    with raises(ValueError, f"proj_size={proj_size}: BiLSTM does not support nn.LSTM's projections; use proj_size=0 "
                            "(the default)"):
        BiLSTM(3, 5, proj_size=proj_size)


@pytest.mark.parametrize("value", [0, None, "False"])
def test_reset_after_must_be_a_bool(value: object) -> None:
    with raises(TypeError, f"reset_after must be a bool, got {type(value).__name__}: {value!r}"):
        BiGRU(3, 5, reset_after=value)  # type: ignore[arg-type]


@pytest.mark.parametrize("nonlinearity", ["gelu", "Tanh", ""])
def test_an_unknown_nonlinearity_is_refused_word_for_word(nonlinearity: str) -> None:
    with raises(ValueError, f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}"):
        BiRNN(3, 5, nonlinearity=nonlinearity)


@pytest.mark.parametrize(("nonlinearity", "mode", "torch_act"), [("tanh", "RNN_TANH", torch.tanh),
                                                                 ("relu", "RNN_RELU", torch.relu)])
def test_the_nonlinearity_is_the_one_asked_for(nonlinearity: str, mode: str, torch_act) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    block = BiRNN(3, 5, nonlinearity=nonlinearity)
    assert block.nonlinearity == nonlinearity and block.mode == mode
    reference = torch.nn.RNN(3, 5, nonlinearity=nonlinearity, bidirectional=True)
    reference.load_state_dict(block.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(block(X)[0], reference(X)[0], atol=2e-5, rtol=2e-5)
        step = torch_act(X[0] @ block.weight_ih_l0.T + block.bias_ih_l0 + block.bias_hh_l0)
        torch.testing.assert_close(block(X)[0][0, :, :5], step, atol=2e-5, rtol=2e-5)


def test_the_reset_after_flag_is_kept_and_shown() -> None:
    assert BiGRU(3, 5).reset_after is True and BiGRU(3, 5, reset_after=False).reset_after is False
    assert repr(BiGRU(3, 5, reset_after=False)) == (
        "BiGRU(3, 5, num_layers=1, merge_mode=['concat'], reset_after=False)")
    assert repr(BiGRU(3, 5)) == "BiGRU(3, 5, num_layers=1, merge_mode=['concat'])"


def test_the_documentation_templates_are_filled_in() -> None:
    for cls, nn_name in ((BiLSTM, "nn.LSTM"), (BiGRU, "nn.GRU"), (BiRNN, "nn.RNN")):
        doc = cls.__doc__
        assert "{" not in doc, cls
        assert "Shapes: ``T`` time steps" in doc and f"as for ``{nn_name}``" in doc
    for cls in (BiGRU, BiRNN):
        assert "Inputs: input, h_0, lengths" in cls.__doc__ and "Outputs: output, h_n" in cls.__doc__
