"""``_BiRNNBase.run`` (the scriptable forward with one return type) and the checks at the top of ``_run``, against
``nn.LSTM``/``nn.GRU`` with the same weights and against the refusals' exact words: the survivors of issue 37's
mutation run on ``models/blocks/base.py`` (each applied by hand fails a test here). float32 on the CPU, PyTorch's
own path (the CPU kernel disabled), tolerance 2e-5."""

import re

import pytest
import torch
from torch import nn

from models import BiGRU, BiLSTM
from models.blocks import cpu_kernel

TOL = {"atol": 2e-5, "rtol": 2e-5}


def raises(error: type, message: str):  # type: ignore[no-untyped-def]
    return pytest.raises(error, match="^" + re.escape(message) + "$")


@pytest.mark.parametrize("batch_first", [False, True])
def test_run_of_a_bilstm_is_nn_lstm_with_the_given_states_and_layout(batch_first: bool) -> None:
    torch.manual_seed(0)
    block = BiLSTM(3, 4, num_layers=2, batch_first=batch_first)
    reference = nn.LSTM(3, 4, num_layers=2, batch_first=batch_first, bidirectional=True)
    reference.load_state_dict(block.state_dict())
    x = torch.randn(2, 5, 3) if batch_first else torch.randn(5, 2, 3)
    h0, c0 = torch.randn(4, 2, 4), torch.randn(4, 2, 4)
    with cpu_kernel.disabled():
        out, h_n, c_n = block.run(x, h0, c0)
    want, (want_h, want_c) = reference(x, (h0, c0))
    torch.testing.assert_close(out, want, **TOL)
    torch.testing.assert_close(h_n, want_h, **TOL)
    torch.testing.assert_close(c_n, want_c, **TOL)


def test_run_of_a_bigru_is_nn_gru_and_its_c_n_is_its_h_n() -> None:
    torch.manual_seed(1)
    block = BiGRU(3, 4)
    reference = nn.GRU(3, 4, bidirectional=True)
    reference.load_state_dict(block.state_dict())
    x, h0 = torch.randn(5, 2, 3), torch.randn(2, 2, 4)
    with cpu_kernel.disabled():
        out, h_n, c_n = block.run(x, h0)
    want, want_h = reference(x, h0)
    torch.testing.assert_close(out, want, **TOL)
    torch.testing.assert_close(h_n, want_h, **TOL)
    assert torch.equal(c_n, h_n)


def test_run_with_lengths_is_nn_lstm_on_each_sequence_alone() -> None:
    torch.manual_seed(2)
    block = BiLSTM(3, 4)
    reference = nn.LSTM(3, 4, bidirectional=True)
    reference.load_state_dict(block.state_dict())
    x = torch.randn(5, 2, 3)
    with cpu_kernel.disabled():
        out, h_n, _ = block.run(x, lengths=torch.tensor([5, 3]))
    want, (want_h, _) = reference(x[:3, 1:2])
    torch.testing.assert_close(out[:3, 1:2], want, **TOL)
    torch.testing.assert_close(h_n[:, 1:2], want_h, **TOL)
    assert torch.equal(out[3:, 1], torch.zeros(2, 8))


def test_run_takes_c0_for_an_lstm_and_refuses_it_for_a_gru() -> None:
    x, state = torch.randn(5, 2, 3), torch.zeros(2, 2, 4)
    out, _, c_n = BiLSTM(3, 4).run(x, state, state)
    assert out.shape == (5, 2, 8) and c_n.shape == (2, 2, 4)
    gru = BiGRU(3, 4)
    with raises(ValueError, f"c0 is the LSTM's cell state; {gru.mode} blocks take h0 only"):
        gru.run(x, state, state)


def test_run_names_h0_and_c0_in_their_refusals() -> None:
    block = BiLSTM(3, 4)
    x, good, bad = torch.randn(5, 2, 3), torch.zeros(2, 2, 4), torch.zeros(2, 3, 4)
    with pytest.raises(ValueError, match=r"^h0 must have shape "):
        block.run(x, bad, good)
    with pytest.raises(ValueError, match=r"^c0 must have shape "):
        block.run(x, good, bad)


def test_run_refuses_lengths_passed_where_h0_belongs_naming_h0() -> None:
    with pytest.raises(TypeError, match=r"^h0 got a 1-D integer tensor \(dtype torch.int64, shape \[2\]\), which "):
        BiLSTM(3, 4).run(torch.randn(5, 2, 3), torch.tensor([5, 3]))


def test_a_float64_input_to_a_float32_block_is_refused_before_any_compute() -> None:
    message = ("input dtype (torch.float64) does not match the block's weight dtype (torch.float32); convert the "
               "input, input.to(torch.float32), or the block, block.to(torch.float64)")
    for block in (BiLSTM(3, 4), BiLSTM(3, 4, merge_mode="sum")):
        with raises(ValueError, message):
            block.run(torch.randn(5, 2, 3, dtype=torch.float64))


@pytest.mark.parametrize("lengths", [torch.tensor(3), torch.tensor([3])])
def test_unbatched_input_takes_one_length_as_shape_nothing_or_one(lengths: torch.Tensor) -> None:
    torch.manual_seed(3)
    block = BiLSTM(3, 4)
    reference = nn.LSTM(3, 4, bidirectional=True)
    reference.load_state_dict(block.state_dict())
    x = torch.randn(5, 3)
    with cpu_kernel.disabled():
        out, h_n, _ = block.run(x, lengths=lengths)
    want, (want_h, _) = reference(x[:3])
    torch.testing.assert_close(out[:3], want, **TOL)
    torch.testing.assert_close(h_n, want_h, **TOL)


@pytest.mark.parametrize("merge_mode", ["concat", "sum"])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_an_empty_batch_gives_empty_outputs_and_states(merge_mode: str, with_lengths: bool) -> None:
    block = BiLSTM(3, 4, num_layers=2, merge_mode=merge_mode)
    lengths = torch.zeros(0, dtype=torch.int64) if with_lengths else None
    for disabled in (False, True):
        with cpu_kernel.disabled() if disabled else torch.no_grad():
            out, h_n, c_n = block.run(torch.randn(5, 0, 3), lengths=lengths)
        assert out.shape == (5, 0, block.output_size)
        assert h_n.shape == c_n.shape == (4, 0, 4)


def test_a_batch_of_one_with_lengths_is_nn_lstm_on_the_cut_sequence() -> None:
    torch.manual_seed(4)
    block = BiLSTM(3, 4)
    reference = nn.LSTM(3, 4, bidirectional=True)
    reference.load_state_dict(block.state_dict())
    x = torch.randn(5, 1, 3)
    for disabled in (False, True):
        with cpu_kernel.disabled() if disabled else torch.no_grad():
            out, h_n, _ = block.run(x, lengths=torch.tensor([3]))
        with torch.no_grad():
            want, (want_h, _) = reference(x[:3])
        torch.testing.assert_close(out[:3], want, **TOL)
        torch.testing.assert_close(h_n, want_h, **TOL)
        assert torch.equal(out[3:], torch.zeros(2, 1, 8))
