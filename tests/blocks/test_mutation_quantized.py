"""Tests written against the surviving mutants of ``models/blocks/quantized.py`` (issue 37, mutation testing).

What ``tests/blocks/test_quantize.py`` leaves open: the two-thread rule's arithmetic (which thread count the kernel
call is handed, checked with a stub kernel call at the rule's boundary), which path runs (kernel or portable), the
cached kernel plan and when it is dropped, the empty batch, unbatched lengths and states, ``run``'s refusals, the
``from_float`` / constructor refusals, ``extra_repr`` and the attributes the float blocks have.
"""

from typing import List, Optional, Tuple

import pytest
import torch
from torch import Tensor, nn

from models import BiGRU, BiLSTM, BiRNN, quantize
from models.blocks import cpu_kernel
from models.blocks.cpu_kernel import q8
from models.blocks.quantized import QuantizedBiRNN, quantize_rows, quantize_weight, reference_layer

needs_kernel = pytest.mark.skipif(not cpu_kernel.available(), reason="CPU kernel not built on this machine")


class _Called(Exception):
    """Raised by the stub kernel call: carries the thread count it was handed."""

    def __init__(self, threads: int) -> None:
        super().__init__(threads)
        self.threads = threads


def _threads_handed(monkeypatch: pytest.MonkeyPatch, q: QuantizedBiRNN, x: Tensor, num_threads: int) -> int:
    """The ``threads`` argument ``q(x)`` hands ``q8.forward_stack`` with torch at ``num_threads`` threads."""

    def stub(*args, **kwargs) -> List[Tensor]:  # type: ignore[no-untyped-def]
        raise _Called(args[-1] if len(args) == 9 else kwargs["threads"])

    monkeypatch.setattr(q8, "forward_stack", stub)
    before = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        with pytest.raises(_Called) as called:
            q(x)
    finally:
        torch.set_num_threads(before)
    return called.value.threads


@needs_kernel
def test_two_threads_exactly_from_twenty_million_multiply_adds(monkeypatch: pytest.MonkeyPatch):
    # macs = 2 T B G (sum of layer input widths + layers * H); the rule: 2 threads where macs >= 20M and torch has
    # at least 2 threads. RNN, H = 10, F = 90, one layer: macs = 2 * T * B * 10 * 100 = 20M exactly at T = B = 100.
    torch.manual_seed(0)
    rnn = quantize(BiRNN(90, 10, 1).eval())
    assert _threads_handed(monkeypatch, rnn, torch.zeros(100, 100, 90), 2) == 2      # == 20M: two
    assert _threads_handed(monkeypatch, rnn, torch.zeros(99, 100, 90), 2) == 1       # 19.8M: one
    assert _threads_handed(monkeypatch, rnn, torch.zeros(100, 100, 90), 1) == 1      # torch at one thread: one
    assert _threads_handed(monkeypatch, rnn, torch.zeros(200, 100, 90), 3) == 2      # never more than two
    # LSTM (G = 4H): 2 * T * B * 40 * 100 = 20M at T * B = 2500; GRU (G = 3H) just above and below its boundary.
    lstm = quantize(BiLSTM(90, 10, 1).eval())
    assert _threads_handed(monkeypatch, lstm, torch.zeros(50, 50, 90), 2) == 2
    assert _threads_handed(monkeypatch, lstm, torch.zeros(49, 50, 90), 2) == 1
    gru = quantize(BiGRU(90, 10, 1).eval())
    assert _threads_handed(monkeypatch, gru, torch.zeros(67, 50, 90), 2) == 2        # 20.1M
    assert _threads_handed(monkeypatch, gru, torch.zeros(66, 50, 90), 2) == 1        # 19.8M
    # Two layers, concat: widths 90 + 20, plus 2 * H: 2 * T * B * 10 * 130 = 2600 T B; 20M at T B = 7692.3.
    two = quantize(BiRNN(90, 10, 2, merge_mode="concat").eval())
    assert _threads_handed(monkeypatch, two, torch.zeros(770, 10, 90), 2) == 2       # 20.02M
    assert _threads_handed(monkeypatch, two, torch.zeros(769, 10, 90), 2) == 1       # 19.99M


@needs_kernel
def test_the_kernel_runs_unless_disabled(monkeypatch: pytest.MonkeyPatch):
    q = quantize(BiGRU(6, 8, 1).eval())
    x = torch.randn(5, 2, 6, generator=torch.Generator().manual_seed(0))
    calls = []
    real = q8.forward_stack
    monkeypatch.setattr(q8, "forward_stack", lambda *a, **k: calls.append(1) or real(*a, **k))
    kernel_out, _ = q(x)
    assert len(calls) == 1
    with cpu_kernel.disabled():
        portable_out, _ = q(x)
    assert len(calls) == 1                        # the portable path: no kernel call
    torch.testing.assert_close(portable_out, kernel_out, rtol=0, atol=2e-4)


@needs_kernel
def test_the_default_plan_is_kept_and_dropped_when_buffers_change():
    q = quantize(BiLSTM(6, 8, 1).eval())
    lib = q8.library()
    assert q._packed is None
    first = q.kernel_plan(lib)
    assert q.kernel_plan(lib) is first and q._packed is first
    assert q.kernel_plan(lib, q8.best_product(lib)) is first         # the best product named: the kept plan
    other = q8.products(lib)[0]
    if other != q8.best_product(lib):
        slow = q.kernel_plan(lib, other)
        assert slow is not first and slow.product == other and q._packed is first
    q.float()                                                        # _apply: dropped
    assert q._packed is None
    q.kernel_plan(lib)
    q.load_state_dict(q.state_dict())                                # a load: dropped
    assert q._packed is None
    x = torch.randn(4, 2, 6, generator=torch.Generator().manual_seed(1))
    before, _ = q(x)
    with torch.no_grad():                                            # new weights through _apply: a new plan
        q._apply(lambda t: t * 2 if t.dtype == torch.float32 else t)
    after, _ = q(x)
    assert not torch.equal(before, after)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("merge", [None, "concat", "sum"])
def test_an_empty_batch_gives_empty_outputs_of_the_right_shapes(cell: str, merge: Optional[str]):
    torch.manual_seed(0)
    make = BiLSTM if cell == "lstm" else BiGRU
    q = quantize(make(6, 8, 2, merge_mode=["concat", merge]).eval())
    out, state = q(torch.randn(5, 0, 6))
    width = {None: (2, 8), "concat": (16,), "sum": (8,)}[merge]
    assert out.shape == (5, 0, *width) and out.dtype == torch.float32
    h_n = state[0] if cell == "lstm" else state
    assert h_n.shape == (4, 0, 8)
    if cell == "lstm":
        assert state[1].shape == (4, 0, 8)
    out_bf, _ = quantize(make(6, 8, 2, merge_mode=["concat", merge], batch_first=True).eval())(torch.randn(0, 5, 6))
    assert out_bf.shape == (0, 5, *width)


def unbatched_lstm_case(merge: str, batch_first: bool, steps: int, seed: int
                        ) -> Tuple[nn.Module, Tensor, Tensor, Tensor]:
    """A quantized two-layer ``BiLSTM(6, 8)`` in eval mode, an unbatched ``x (steps, 6)`` and states ``(4, 8)``
    drawn from generators seeded ``seed``, ``seed + 1``, ``seed + 2``."""
    torch.manual_seed(0)
    q = quantize(BiLSTM(6, 8, 2, merge_mode=merge, batch_first=batch_first).eval())
    x = torch.randn(steps, 6, generator=torch.Generator().manual_seed(seed))
    h0 = torch.randn(4, 8, generator=torch.Generator().manual_seed(seed + 1))
    c0 = torch.randn(4, 8, generator=torch.Generator().manual_seed(seed + 2))
    return q, x, h0, c0


@pytest.mark.parametrize("batch_first", [False, True])
def test_unbatched_input_with_lengths_and_states(batch_first: bool):
    q, x, h0, c0 = unbatched_lstm_case("concat", batch_first, steps=7, seed=2)
    batched_x = x.unsqueeze(0 if batch_first else 1)
    for lengths in (torch.tensor(4), torch.tensor([4])):
        out, (h, c) = q(x, (h0, c0), lengths=lengths)
        want, (want_h, want_c) = q(batched_x, (h0.unsqueeze(1), c0.unsqueeze(1)), lengths=torch.tensor([4]))
        assert out.shape == (7, 16) and h.shape == (4, 8) and c.shape == (4, 8)
        torch.testing.assert_close(out, want.squeeze(0 if batch_first else 1), rtol=0, atol=0)
        torch.testing.assert_close(h, want_h.squeeze(1), rtol=0, atol=0)
        torch.testing.assert_close(c, want_c.squeeze(1), rtol=0, atol=0)
        assert not out[4:].any()
    for bad in (torch.tensor([4, 3]), torch.tensor([[4]])):
        with pytest.raises(ValueError, match=r"lengths for unbatched input must hold one length .*shape " +
                           str(list(bad.shape)).replace("[", r"\[").replace("]", r"\]")):
            q(x, lengths=bad)


def test_run_is_the_float_blocks_run_and_refuses_as_documented():
    torch.manual_seed(0)
    q = quantize(BiGRU(6, 8, 1).eval())
    x = torch.randn(5, 2, 6, generator=torch.Generator().manual_seed(5))
    h0 = torch.randn(2, 2, 8, generator=torch.Generator().manual_seed(6))
    out, h_n, c_n = q.run(x, h0, lengths=torch.tensor([5, 3]))
    want, want_h = q(x, h0, lengths=torch.tensor([5, 3]))
    assert torch.equal(out, want) and torch.equal(h_n, want_h) and torch.equal(c_n, want_h)
    with pytest.raises(ValueError, match=r"c0 is the LSTM's cell state; GRU blocks take h0 only"):
        q.run(x, h0, torch.zeros(2, 2, 8))
    with pytest.raises(TypeError, match=r"h0 .*looks like lengths"):
        q.run(x, torch.tensor([5, 3]))
    with pytest.raises(TypeError, match=r"lengths must be an integer tensor \(B,\), got list: \[5, 3\]"):
        q.run(x, lengths=[5, 3])
    lstm = quantize(BiLSTM(6, 8, 1).eval())
    with pytest.raises(TypeError, match=r"c0 .*looks like lengths"):
        lstm.run(x, torch.zeros(2, 2, 8), torch.tensor([5, 3]))
    out, h_n, c_n = lstm.run(x, torch.zeros(2, 2, 8), torch.ones(2, 2, 8))
    want, (want_h, want_c) = lstm(x, (torch.zeros(2, 2, 8), torch.ones(2, 2, 8)))
    assert torch.equal(out, want) and torch.equal(h_n, want_h) and torch.equal(c_n, want_c)
    assert not torch.equal(c_n, h_n)


def test_forward_refuses_bad_types_with_the_reason():
    torch.manual_seed(0)
    lstm = quantize(BiLSTM(6, 8, 1).eval())
    x = torch.randn(5, 2, 6)
    with pytest.raises(TypeError, match=r"input must be a tensor, got list"):
        lstm([[1.0]])
    with pytest.raises(TypeError, match=r"lengths must be an integer tensor \(B,\), got tuple: \(5, 2\)"):
        lstm(x, lengths=(5, 2))
    with pytest.raises(TypeError, match=r"hx of an LSTM must be a tuple \(h_0, c_0\)"):
        lstm(x, (torch.zeros(2, 2, 8),) * 3)
    out, (h_n, c_n) = lstm(x, [torch.zeros(2, 2, 8), torch.ones(2, 2, 8)])    # a list of two is accepted
    assert out.shape == (5, 2, 16) and not torch.equal(h_n, c_n)
    gru = quantize(BiGRU(6, 8, 1).eval())
    with pytest.raises(TypeError, match=r"hx of a GRU block must be a tensor \(2 \* num_layers, B, H\), got tuple"):
        gru(x, (torch.zeros(2, 2, 8),))
    with pytest.raises(ValueError, match=r"input is on device meta; the int8 blocks run on the CPU"):
        gru(torch.zeros(5, 2, 6, device="meta"))
    with pytest.raises(TypeError, match=r"compute in float32: input has dtype torch.float64; pass input.float\(\)"):
        gru(x.double())


def test_from_float_and_the_constructor_refuse_with_the_reason():
    with pytest.raises(ValueError, match=r"mode='TANH' has no int8 path; expected one of \['LSTM', 'GRU', "):
        QuantizedBiRNN("TANH", 4, 4, 1, ["concat"])
    with pytest.raises(TypeError, match=r"quantize expects a BiLSTM, BiGRU or BiRNN .*got Linear"):
        QuantizedBiRNN.from_float(nn.Linear(3, 3))
    with pytest.raises(ValueError, match=r"BiGRU\(reset_after=False\) .*has no int8 path"):
        QuantizedBiRNN.from_float(BiGRU(4, 4, reset_after=False))
    on_meta = BiLSTM(4, 4, 1).to("meta")
    with pytest.raises(ValueError, match=r"the block's weights are on meta; .*quantize\(model.cpu\(\)\)"):
        QuantizedBiRNN.from_float(on_meta)


@pytest.mark.parametrize("bias", [True, False])
def test_from_float_copies_every_layer_and_direction(bias: bool):
    torch.manual_seed(0)
    float_block = BiLSTM(5, 4, 2, merge_mode="sum", bias=bias, batch_first=True).eval()
    q = QuantizedBiRNN.from_float(float_block)
    assert not q.training and q.bidirectional is True and q.batch_first and q.bias is bias
    assert (q.mode, q.input_size, q.hidden_size, q.num_layers, q.merge_modes) == ("LSTM", 5, 4, 2, ["sum", "sum"])
    assert q.output_size == 4 and q.input_sizes() == [5, 4]
    for layer in range(2):
        for direction, suffix in enumerate(("", "_reverse")):
            for kind in ("ih", "hh"):
                w = getattr(float_block, f"weight_{kind}_l{layer}{suffix}").detach()
                q_w = getattr(q, f"weight_{kind}_l{layer}")[direction]
                scale = getattr(q, f"scale_{kind}_l{layer}")[direction]
                torch.testing.assert_close(scale, w.abs().amax(1) / 127, rtol=0, atol=0)
                assert torch.equal(q_w, torch.round(w * (127 / w.abs().amax(1, keepdim=True))).to(torch.int8))
                if bias:
                    assert torch.equal(getattr(q, f"bias_{kind}_l{layer}")[direction],
                                       getattr(float_block, f"bias_{kind}_l{layer}{suffix}").detach())
    names = set(dict(q.named_buffers()))
    assert ("bias_ih_l1" in names) is bias and "weight_hh_l1" in names


def test_extra_repr_names_the_configuration():
    q = QuantizedBiRNN("GRU", 6, 8, 2, ["sum", None], bias=False, batch_first=True)
    assert q.extra_repr() == "GRU, 6, 8, num_layers=2, merge_mode=['sum', None], int8, bias=False, batch_first=True"
    plain = QuantizedBiRNN("LSTM", 3, 4, 1, ["concat"])
    assert plain.extra_repr() == "LSTM, 3, 4, num_layers=1, merge_mode=['concat'], int8"
    assert plain.output_size == 8 and QuantizedBiRNN("RNN_TANH", 3, 4, 1, ["ave"]).output_size == 4
    assert plain.weight_ih_l0.shape == (2, 16, 3) and plain.weight_hh_l0.shape == (2, 16, 4)
    assert q.weight_ih_l1.shape == (2, 24, 8) and q.scale_hh_l1.shape == (2, 24)
    assert QuantizedBiRNN("RNN_RELU", 3, 4, 1, [None]).weight_hh_l0.shape == (2, 4, 4)


def test_layer_weights_keep_the_grus_biases_apart_and_sum_the_others():
    torch.manual_seed(0)
    gru = quantize(BiGRU(4, 3, 1).eval())
    w = gru.layer_weights(0)
    assert w[2] is gru.bias_ih_l0 and w[5] is gru.bias_hh_l0
    lstm = quantize(BiLSTM(4, 3, 1).eval())
    w = lstm.layer_weights(0)
    assert torch.equal(w[2], lstm.bias_ih_l0 + lstm.bias_hh_l0) and w[5] is None
    assert w[0] is lstm.weight_ih_l0 and w[1] is lstm.scale_ih_l0 and w[3] is lstm.weight_hh_l0
    assert w[4] is lstm.scale_hh_l0
    bare = quantize(BiLSTM(4, 3, 1, bias=False).eval()).layer_weights(0)
    assert bare[2] is None and bare[5] is None


def test_quantize_rows_at_the_edges():
    q, scale = quantize_rows(torch.tensor([[-2.0, 1.0, 0.0], [float("inf"), 1.0, 0.0], [3.0, -1.5, 1.0]]))
    assert q[0].tolist() == [-127.0, 64.0, 0.0] and scale[0].item() == pytest.approx(2 / 127, rel=1e-7)
    assert q[1].tolist() == [0.0] * 3 and torch.isnan(scale[1])
    assert q[2].tolist() == [127.0, -64.0, 42.0]
    q64, s64 = quantize_rows(torch.tensor([[1.0, 0.5]], dtype=torch.float64))
    assert q64.dtype == torch.float32 and s64.dtype == torch.float32


def test_reference_layer_teacher_with_and_without_lengths():
    # A teacher equal to the reference's own outputs changes nothing: the teacher's indexing (forward: step t - 1;
    # backward: step t + 1, or h0 at each sequence's last valid step) is checked against the free-running result.
    torch.manual_seed(0)
    for make, mode in ((BiLSTM, "LSTM"), (BiGRU, "GRU"), (BiRNN, "RNN_TANH")):
        q = quantize(make(4, 3, 1).eval())
        x = torch.randn(6, 3, 4)
        h0 = torch.randn(2, 3, 3) * 0.5
        c0 = torch.randn(2, 3, 3) * 0.5 if mode == "LSTM" else None
        for lengths in (None, torch.tensor([6, 2, 4])):
            free, h_n, c_n = reference_layer(mode, x, lengths, h0, c0, q.layer_weights(0))
            taught, t_h, t_c = reference_layer(mode, x, lengths, h0, c0, q.layer_weights(0), teacher=free.float())
            torch.testing.assert_close(taught, free, rtol=0, atol=1e-6)
            torch.testing.assert_close(t_h, h_n, rtol=0, atol=1e-6)
            torch.testing.assert_close(t_c, c_n, rtol=0, atol=1e-6)
            if lengths is not None:
                for b, n in enumerate(lengths.tolist()):
                    assert not free[n:, b].any()
                    torch.testing.assert_close(h_n[0, b], free[n - 1, b, 0], rtol=0, atol=0)
                    torch.testing.assert_close(h_n[1, b], free[0, b, 1], rtol=0, atol=0)
            if mode != "LSTM":
                assert c_n is h_n


class _CallsRun(nn.Module):
    """A module calling ``block.run`` (as an imported Keras model does)."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        return self.block.run(x)[0]


def test_run_refuses_tracing_and_export_with_the_reason():
    torch.manual_seed(0)
    wrapper = _CallsRun(quantize(BiGRU(6, 8, 1).eval()))
    x = torch.randn(5, 2, 6)
    with pytest.raises(RuntimeError, match=r"cannot be traced or exported \(torch.export, torch.jit.trace, ONNX\)"):
        torch.jit.trace(wrapper, (x,))
    with pytest.raises(RuntimeError, match=r"cannot be traced or exported"):
        torch.export.export(wrapper, (x,))


@needs_kernel
def test_reference_layer_returns_the_lstms_cell_state():
    torch.manual_seed(0)
    q = quantize(BiLSTM(4, 3, 1).eval())
    x = torch.randn(6, 2, 4)
    h0, c0 = torch.randn(2, 2, 3) * 0.5, torch.randn(2, 2, 3) * 0.5
    _, (h_n, c_n) = q(x, (h0, c0))
    _, ref_h, ref_c = reference_layer("LSTM", x, None, h0, c0, q.layer_weights(0))
    torch.testing.assert_close(ref_c.float(), c_n, rtol=0, atol=2e-4)     # tolerance: test_quantize's portable one
    torch.testing.assert_close(ref_h.float(), h_n, rtol=0, atol=2e-4)
    assert not torch.allclose(ref_c, ref_h, atol=1e-2)


@needs_kernel
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_the_portable_path_reads_each_layers_own_initial_states(cell: str):
    # Two layers, every initial state row different: the portable path must hand layer l rows 2l, 2l + 1 of h0
    # (and of c0 for the LSTM) as the kernel does. Tolerance: test_quantize's portable one (2e-4).
    torch.manual_seed(0)
    make = BiLSTM if cell == "lstm" else BiGRU
    q = quantize(make(6, 8, 2, merge_mode="concat").eval())
    x = torch.randn(5, 3, 6, generator=torch.Generator().manual_seed(7))
    h0 = torch.randn(4, 3, 8, generator=torch.Generator().manual_seed(8))
    c0 = torch.randn(4, 3, 8, generator=torch.Generator().manual_seed(9))
    hx = (h0, c0) if cell == "lstm" else h0
    lengths = torch.tensor([5, 2, 4])
    kernel_out, kernel_state = q(x, hx, lengths=lengths)
    with cpu_kernel.disabled():
        portable_out, portable_state = q(x, hx, lengths=lengths)
    torch.testing.assert_close(portable_out, kernel_out, rtol=0, atol=2e-4)
    for got, want in zip(portable_state if cell == "lstm" else (portable_state,),
                         kernel_state if cell == "lstm" else (kernel_state,), strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=2e-4)


def test_a_wrong_initial_state_is_refused_by_its_name():
    # Each state is named as the float blocks name it: hx[0] / hx[1] for the LSTM's pair, hx for the others.
    torch.manual_seed(0)
    lstm = quantize(BiLSTM(6, 8, 2).eval())
    x = torch.randn(5, 2, 6)
    good = torch.zeros(4, 2, 8)
    with pytest.raises(ValueError, match=r"^hx\[1\] must have shape \(2 \* num_layers, B, hidden_size\) = "
                                         r"\[4, 2, 8\], got \[4, 3, 8\]$"):
        lstm(x, (good, torch.zeros(4, 3, 8)))
    with pytest.raises(TypeError, match=r"^hx\[1\] has dtype torch.float64 but input has dtype torch.float32$"):
        lstm(x, (good, good.double()))
    with pytest.raises(ValueError, match=r"^hx\[0\] must have shape \(2 \* num_layers, hidden_size\) for unbatched "
                                         r"input = \[4, 8\], got \[4, 2, 8\]$"):
        lstm(x[:, 0], (good, good[:, 0]))
    gru = quantize(BiGRU(6, 8, 2).eval())
    with pytest.raises(ValueError, match=r"^hx must have shape \(2 \* num_layers, B, hidden_size\) = \[4, 2, 8\], "
                                         r"got \[2, 2, 8\]$"):
        gru(x, torch.zeros(2, 2, 8))


@needs_kernel
@pytest.mark.parametrize("batch_first", [False, True])
def test_the_portable_path_takes_unbatched_input_with_states(batch_first: bool):
    # Unbatched (T, F) input with (2 * num_layers, H) states: the portable path reads the states' shapes (the kernel
    # only their memory), so each must be given a batch axis of one at axis 1. Tolerance: the portable one, 2e-4.
    q, x, h0, c0 = unbatched_lstm_case("sum", batch_first, steps=5, seed=10)
    kernel_out, (kernel_h, kernel_c) = q(x, (h0, c0))
    with cpu_kernel.disabled():
        out, (h_n, c_n) = q(x, (h0, c0))
    assert out.shape == (5, 8) and h_n.shape == (4, 8) and c_n.shape == (4, 8)
    torch.testing.assert_close(out, kernel_out, rtol=0, atol=2e-4)
    torch.testing.assert_close(h_n, kernel_h, rtol=0, atol=2e-4)
    torch.testing.assert_close(c_n, kernel_c, rtol=0, atol=2e-4)


def test_an_empty_batch_one_layer_and_its_states():
    # One layer (the last merge mode is merge_modes[-1], the only one); the LSTM's c_n is a tensor of its own, not h_n
    # again (as on the kernel path); run's c_n *is* h_n for a one-state cell (its docstring; the kernel path too).
    torch.manual_seed(0)
    for merge, width in ((None, (2, 8)), ("concat", (16,)), ("mul", (8,))):
        lstm = quantize(BiLSTM(6, 8, 1, merge_mode=merge).eval())
        out, (h_n, c_n) = lstm(torch.randn(5, 0, 6))
        assert out.shape == (5, 0, *width) and h_n.shape == (2, 0, 8) and c_n.shape == (2, 0, 8)
        assert c_n is not h_n
    gru = quantize(BiGRU(6, 8, 1, merge_mode="ave").eval())
    out, h_n, c_n = gru.run(torch.randn(5, 0, 6))
    assert out.shape == (5, 0, 8) and c_n is h_n


def test_forward_names_what_it_refuses_word_for_word():
    torch.manual_seed(0)
    lstm = quantize(BiLSTM(6, 8, 1).eval())
    x = torch.randn(5, 2, 6)
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 2]))
    with pytest.raises(TypeError, match=r"^QuantizedBiRNN takes a padded tensor and lengths=, not a PackedSequence "
                                        r"\(torch\.nn\.utils\.rnn\.pad_packed_sequence gives both\)$"):
        lstm(packed)
    with pytest.raises(TypeError, match=r"^hx of an LSTM must be a tuple \(h_0, c_0\) of tensors "
                                        r"\(2 \* num_layers, B, H\)$"):
        lstm(x, torch.zeros(2, 2, 8))
    lengths_like = torch.tensor([5, 2])
    looks = (r" got a 1-D integer tensor \(dtype torch.int64, shape \[2\]\), which looks like lengths: the second "
             r"positional argument is hx, as in nn.LSTM/nn.GRU/nn.RNN; pass lengths by keyword, "
             r"block\(input, lengths=lengths\)$")
    with pytest.raises(TypeError, match=r"^hx\[0\]" + looks):
        lstm(x, (lengths_like, torch.zeros(2, 2, 8)))
    gru = quantize(BiGRU(6, 8, 1).eval())
    with pytest.raises(TypeError, match=r"^hx" + looks):
        gru(x, lengths_like)
    with pytest.raises(TypeError, match=r"^hx of a GRU block must be a tensor \(2 \* num_layers, B, H\), got list$"):
        gru(x, [torch.zeros(2, 2, 8)])
    with pytest.raises(TypeError, match=r"^input must be a tensor, got tuple$"):
        gru((x,))


def test_from_float_names_what_it_refuses_word_for_word():
    with pytest.raises(ValueError, match=r"^quantize: BiGRU\(reset_after=False\) \(Keras's original GRU\) has no int8 "
                                         r"path; quantize a reset_after=True GRU, or serve this one in float32$"):
        QuantizedBiRNN.from_float(BiGRU(4, 4, reset_after=False))
    # The first weight off the CPU, the others on it: the device named is the one that is not the CPU.
    mixed = BiLSTM(4, 4, 1)
    mixed.weight_ih_l0 = nn.Parameter(mixed.weight_ih_l0.detach().to("meta"))
    with pytest.raises(ValueError, match=r"^quantize: the block's weights are on meta; the int8 path runs on the "
                                         r"CPU: quantize\(model.cpu\(\)\)$"):
        QuantizedBiRNN.from_float(mixed)
    broken = BiGRU(4, 4, 1)
    with torch.no_grad():
        broken.weight_hh_l0_reverse[1, 2] = float("inf")
    with pytest.raises(ValueError, match=r"^quantize: a weight holds NaN or inf; an int8 copy of it would be "
                                         r"meaningless$"):
        QuantizedBiRNN.from_float(broken)


def test_quantize_weight_gives_int8_and_the_rows_scales():
    # Its documented result: (int8 (G, K), float32 (G,)), the values quantize_rows gives (a gradient-tracking float64
    # weight included).
    weight = torch.tensor([[0.5, -1.0, 0.25], [3.0, -1.5, 1.0]], dtype=torch.float64, requires_grad=True)
    q, scale = quantize_weight(weight)
    assert q.dtype == torch.int8 and scale.dtype == torch.float32 and not q.requires_grad
    assert q.tolist() == [[64, -127, 32], [127, -64, 42]]
    torch.testing.assert_close(scale, torch.tensor([1.0, 3.0]) / 127, rtol=0, atol=0)


def test_quantize_rows_clamps_a_row_whose_inverse_scale_overflows():
    # For m = max |v| below 127 / FLT_MAX (~3.7e-37), inv = 127 / m is inf in float32 and v * inv is +-inf: only the
    # clamp to [-127, 127] brings the row's extremes back to +-127 (the kernel's csrc/q8_forward.h clamps alike).
    q, scale = quantize_rows(torch.tensor([[1e-38, -1e-38], [-2e-38, 2e-38]]))
    assert q.tolist() == [[127.0, -127.0], [-127.0, 127.0]]
    torch.testing.assert_close(scale, torch.tensor([1e-38, 2e-38]) / 127, rtol=0, atol=0)


def test_quantize_rows_of_a_tiny_row_holding_a_zero_gives_no_nan():
    # Found by mutation testing: for m < 127 / FLT_MAX, 127 / m is inf and a zero became 0 * inf = NaN.
    q, _ = quantize_rows(torch.tensor([[1e-38, -1e-38, 0.0]]))
    assert not q.isnan().any() and q[0, 2].item() == 0.0


def test_quantize_rows_multiplies_by_127_over_m_as_the_kernel_does():
    # The kernel's rule for a row that is not tiny is round(v * (127 / m)); round(v / m * 127) differs for some
    # values, e.g. this one (70 against 71): only rows whose 127 / m overflows take the second form.
    q, _ = quantize_rows(torch.tensor([[5.483242511749268, 3.0438473224639893]]))
    assert q[0].tolist() == [127.0, 70.0]
