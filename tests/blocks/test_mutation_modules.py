"""``BiRNN``'s constructor and ``forward`` and ``BiGRU``'s serving path, against ``nn.RNN``/``nn.GRU`` (issue 37's
mutation testing of ``models/blocks/modules.py``: a dropped argument or a changed default fails here). float32
tolerances as in the drop-in tests (1e-5)."""

import pytest
import torch
from helpers.dropin_pairs import assert_same, pair
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models import BiRNN
from models.blocks import cpu_kernel


def test_birnn_takes_its_defaults_dtype_and_device_as_nn_rnn() -> None:
    reference, block = nn.RNN(3, 4, 2, bidirectional=True), BiRNN(3, 4, 2)
    assert block.dropout == reference.dropout == 0.0
    double = BiRNN(3, 4, 2, dtype=torch.float64)
    assert {p.dtype for p in double.parameters()} == {torch.float64}
    on_meta = BiRNN(3, 4, 2, nonlinearity="relu", device="meta")
    assert {p.device.type for p in on_meta.parameters()} == {"meta"} and on_meta.nonlinearity == "relu"
    with pytest.raises(ValueError, match=r"^bidirectional=False: BiRNN is always bidirectional"):
        BiRNN(3, 4, bidirectional=False)


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
