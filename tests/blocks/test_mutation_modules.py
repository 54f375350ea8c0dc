"""``BiRNN``'s constructor and ``forward`` and ``BiGRU``'s and ``BiLSTM``'s serving paths, against
``nn.RNN``/``nn.GRU``/``nn.LSTM`` (issue 37's mutation testing of ``models/blocks/modules.py``: a dropped argument
or a changed default fails here). float32 tolerances as in the drop-in tests (1e-5)."""

from typing import List

import pytest
import torch
from helpers.dropin_pairs import CELLS, assert_same, pair
from helpers.kernel_aids import count_serving_calls, serving_call_available
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models import BiRNN
from models.blocks import cpu_kernel
from models.blocks.cpu_kernel import inference as cpu_kernel_inference


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_a_block_takes_its_defaults_dtype_and_device_as_its_nn_reference(cell: str) -> None:
    block_cls, reference_cls = CELLS[cell]
    assert block_cls(3, 4, 2).dropout == reference_cls(3, 4, 2, bidirectional=True).dropout == 0.0
    double = block_cls(3, 4, 2, dtype=torch.float64)
    assert {p.dtype for p in double.parameters()} == {torch.float64}
    on_meta = block_cls(3, 4, 2, device="meta")
    assert {p.device.type for p in on_meta.parameters()} == {"meta"}
    with pytest.raises(ValueError, match=rf"^bidirectional=False: {block_cls.__name__} is always bidirectional"):
        block_cls(3, 4, bidirectional=False)


def test_birnn_keeps_its_nonlinearity() -> None:
    assert BiRNN(3, 4, nonlinearity="relu").nonlinearity == "relu" and BiRNN(3, 4).nonlinearity == "tanh"


def test_birnn_honours_lengths_as_nn_rnn_on_a_packed_batch() -> None:
    torch.manual_seed(0)
    block, reference = pair("rnn")
    x, lengths = torch.randn(5, 3, 3), torch.tensor([5, 2, 4])
    out, h_n = block(x, lengths=lengths)
    packed, ref_h_n = reference(pack_padded_sequence(x, lengths, enforce_sorted=False))
    ref_out, _ = pad_packed_sequence(packed, total_length=5)
    assert_same([out, h_n], [ref_out, ref_h_n])


def test_bigru_in_serving_mode_starts_from_the_given_hx() -> None:
    if not cpu_kernel.available():
        pytest.skip("CPU kernel not built (tests/kernel/test_cpu_kernel.py says why): no serving fast path")
    torch.manual_seed(0)
    block, reference = pair("gru")
    block.eval()
    x, h0 = torch.randn(4, 2, 3), torch.randn(4, 2, 4)
    with torch.no_grad(), cpu_kernel.forced():
        block(x)                                       # the plan the serving path reuses is built here
        ours = block(x, h0)
        theirs = reference(x, h0)
    assert_same(list(ours), list(theirs))


def test_bigru_in_serving_mode_with_lengths_matches_nn_gru_on_a_packed_batch() -> None:
    if not cpu_kernel.available():
        pytest.skip("CPU kernel not built (tests/kernel/test_cpu_kernel.py says why): no serving fast path")
    torch.manual_seed(0)
    block, reference = pair("gru")
    block.eval()
    x, lengths = torch.randn(5, 3, 3), torch.tensor([5, 2, 4])
    with torch.no_grad(), cpu_kernel.forced():
        block(x)                                       # the plan the serving path reuses is built here
        out, h_n = block(x, lengths=lengths)
        packed, ref_h_n = reference(pack_padded_sequence(x, lengths, enforce_sorted=False))
    ref_out, _ = pad_packed_sequence(packed, total_length=5)
    assert_same([out, h_n], [ref_out, ref_h_n])


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_a_packed_batch_with_hx_matches_the_nn_reference(cell: str) -> None:
    torch.manual_seed(0)
    block, reference = pair(cell)
    x, lengths, h0 = torch.randn(5, 3, 3), torch.tensor([5, 2, 4]), torch.randn(4, 3, 4)
    packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
    out, h_n = block(packed, h0)
    ref_out, ref_h_n = reference(packed, h0)
    assert_same([out.data, h_n], [ref_out.data, ref_h_n])
    assert torch.equal(out.unsorted_indices, ref_out.unsorted_indices)


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_a_packed_batchs_wrong_hx_is_refused_naming_hx(cell: str) -> None:
    block, _ = pair(cell)
    packed = pack_padded_sequence(torch.randn(5, 3, 3), torch.tensor([5, 2, 4]), enforce_sorted=False)
    with pytest.raises(ValueError, match=r"^hx must have shape \(2 \* num_layers, B, hidden_size\) = \[4, 3, 4\], "
                                         r"got \[4, 2, 4\]$"):
        block(packed, torch.zeros(4, 2, 4))
    with pytest.raises(TypeError, match=r"^hx has dtype torch.float64 but input has dtype torch.float32$"):
        block(packed, torch.zeros(4, 3, 4, dtype=torch.float64))


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_a_packed_batch_with_lengths_too_is_refused(cell: str) -> None:
    block, _ = pair(cell)
    packed = pack_padded_sequence(torch.randn(5, 3, 3), torch.tensor([5, 2, 4]), enforce_sorted=False)
    with pytest.raises(ValueError, match=r"^pass either a PackedSequence or lengths, not both: a PackedSequence "
                                         r"carries its own lengths$"):
        block(packed, lengths=torch.tensor([5, 2, 4]))


def test_a_bilstm_packed_batch_names_the_state_it_refuses_and_refuses_lengths_too() -> None:
    block, _ = pair("lstm")
    packed = pack_padded_sequence(torch.randn(5, 3, 3), torch.tensor([5, 2, 4]), enforce_sorted=False)
    good, bad = torch.zeros(4, 3, 4), torch.zeros(4, 2, 4)
    shape = r" must have shape \(2 \* num_layers, B, hidden_size\) = \[4, 3, 4\], got \[4, 2, 4\]$"
    with pytest.raises(ValueError, match=r"^hx\[0\]" + shape):
        block(packed, (bad, good))
    with pytest.raises(ValueError, match=r"^hx\[1\]" + shape):
        block(packed, (good, bad))
    with pytest.raises(ValueError, match=r"^pass either a PackedSequence or lengths, not both"):
        block(packed, lengths=torch.tensor([5, 2, 4]))


def counted_serving_calls(block: nn.Module, x: torch.Tensor) -> List[int]:
    """Build ``block``'s plan with one call on ``x``, then count the serving path's C calls (its entry point,
    wrapped): the serving path is there for speed, so a forward that silently skips it gives the same numbers
    and only this count tells."""
    with torch.no_grad():
        block(x)
    return count_serving_calls(cpu_kernel_inference._plans[block].fast)


@pytest.mark.parametrize("batch_first", [False, True])
def test_bilstm_in_serving_mode_takes_one_c_call_and_matches_nn_lstm(batch_first: bool) -> None:
    """Eval, no gradient, no ``hx``: ``BiLSTM.forward`` returns the serving path's ``(output, (h_n, c_n))``, in
    that order, each equal to ``nn.LSTM``'s (1e-5), with and without ragged ``lengths``."""
    if not serving_call_available():
        pytest.skip("the CPU kernel or its serving call is not built here: no serving fast path")
    torch.manual_seed(0)
    block, reference = pair("lstm", batch_first=batch_first)
    block.eval()
    x, lengths = torch.randn(3, 5, 3) if batch_first else torch.randn(5, 3, 3), torch.tensor([5, 2, 4])
    with torch.no_grad(), cpu_kernel.forced():
        calls = counted_serving_calls(block, x)
        out, (h_n, c_n) = block(x)
        assert calls == [1], "BiLSTM's serving path was not taken"
        ref_out, (ref_h_n, ref_c_n) = reference(x)
        assert_same([out, h_n, c_n], [ref_out, ref_h_n, ref_c_n])
        out, (h_n, c_n) = block(x, lengths=lengths)
        assert calls == [1, 1], "BiLSTM's serving path was not taken with lengths"
        packed, (ref_h_n, ref_c_n) = reference(pack_padded_sequence(x, lengths, batch_first=batch_first,
                                                                    enforce_sorted=False))
    ref_out, _ = pad_packed_sequence(packed, batch_first=batch_first, total_length=5)
    assert_same([out, h_n, c_n], [ref_out, ref_h_n, ref_c_n])


def test_bilstm_batch_first_with_hx_matches_nn_lstm_on_the_general_path() -> None:
    """A given ``hx`` takes the general path (never the serving one), which must read ``input`` as ``(B, T, F)``
    when ``batch_first``: ``T != B`` so a time-major reading fails on shape or values."""
    torch.manual_seed(0)
    block, reference = pair("lstm", batch_first=True)
    x, hx = torch.randn(3, 5, 3), (torch.randn(4, 3, 4), torch.randn(4, 3, 4))
    out, (h_n, c_n) = block(x, hx)
    ref_out, (ref_h_n, ref_c_n) = reference(x, hx)
    assert_same([out, h_n, c_n], [ref_out, ref_h_n, ref_c_n])


def test_bigru_in_serving_mode_takes_one_c_call_and_matches_nn_gru() -> None:
    """Eval, no gradient, no ``hx``: ``BiGRU.forward`` returns the serving path's result (one C call), equal to
    ``nn.GRU``'s (1e-5)."""
    if not serving_call_available():
        pytest.skip("the CPU kernel or its serving call is not built here: no serving fast path")
    torch.manual_seed(0)
    block, reference = pair("gru")
    block.eval()
    x = torch.randn(5, 3, 3)
    with torch.no_grad(), cpu_kernel.forced():
        calls = counted_serving_calls(block, x)
        out, h_n = block(x)
        assert calls == [1], "BiGRU's serving path was not taken"
        ref_out, ref_h_n = reference(x)
    assert_same([out, h_n], [ref_out, ref_h_n])
