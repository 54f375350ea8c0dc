"""benchmarks/onnx_rnn.py: the ONNX Runtime twin of a block (fused LSTM/GRU ops, sequence_lens) computes what
nn.LSTM/nn.GRU and the blocks compute, so the benchmark compares like with like. Skipped without onnxruntime."""

import pytest
import torch
from helpers.optional import optional_import
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models import BiGRU, BiLSTM

_, needs_onnx = optional_import("onnx", "the ONNX twin needs onnx (pip install -e '.[onnx]')")
_, needs_onnxruntime = optional_import("onnxruntime", "the ONNX twin needs onnxruntime (pip install -e '.[onnx]')")
pytestmark = [needs_onnx, needs_onnxruntime]
from benchmarks import onnx_rnn  # noqa: E402


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_twin_equals_torch_and_block(cell: str, with_lengths: bool) -> None:
    batch, steps, hidden = 3, 7, 10
    reference = getattr(nn, cell)(hidden, hidden, 2, batch_first=True, bidirectional=True).eval()
    block = (BiLSTM if cell == "LSTM" else BiGRU)(hidden, hidden, 2, batch_first=True).eval()
    block.load_state_dict(reference.state_dict())
    x = torch.randn(batch, steps, hidden)
    lengths = torch.tensor([steps, 4, 2]) if with_lengths else None
    session = onnx_rnn.session(onnx_rnn.build(reference, with_lengths), threads=1)
    feeds = {"x": x.numpy()}
    if lengths is not None:
        feeds["lengths"] = lengths.int().numpy()
    got = [torch.from_numpy(a) for a in session.run(None, feeds)]
    with torch.no_grad():
        if lengths is None:
            out, state = reference(x)
        else:
            packed, state = reference(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
            out, _ = pad_packed_sequence(packed, batch_first=True, total_length=steps)
        ours, our_state = block(x, lengths=lengths)
    expected = [out, *(state if cell == "LSTM" else (state,))]
    mine = [ours, *(our_state if cell == "LSTM" else (our_state,))]
    for a, b, c in zip(got, expected, mine, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(a, c, atol=1e-5, rtol=1e-5)
