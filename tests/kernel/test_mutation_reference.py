"""Function-level tests of models/blocks/cpu_kernel/reference.py written for mutation testing (issue 37): the
kernel's layer recomputed on PyTorch's differentiable kernels, called directly in the kernel's own layout, against
``nn.LSTM``/``nn.GRU`` (packed by ``lengths``, rows unsorted, non-zero initial states) and, for the reset-before
GRU, a time loop written out here; and its gradients (with a graph) against autograd through those references.
No kernel needed: float64 throughout, tolerance 1e-12 (the same math in another order)."""

from typing import List, Optional, Tuple

import pytest
import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models.blocks.cpu_kernel.reference import reference_gradients, reference_layer

F64 = torch.float64
T, B, F, H = 5, 3, 4, 3
LENGTHS = torch.tensor([2, 5, 3])  # unsorted: the packed path's order and its inverse both matter
CODES = {"LSTM": 0, "GRU": 1, "GRU_RESET_BEFORE": 2}


def close(a: Tensor, b: Tensor) -> None:
    torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def torch_module(mode: str, bias: bool = True) -> nn.RNNBase:
    torch.manual_seed(3)
    cls = nn.LSTM if mode == "LSTM" else nn.GRU
    module = cls(F, H, bidirectional=True, bias=bias).to(F64)
    with torch.no_grad():
        for p in module.parameters():
            p.uniform_(-0.8, 0.8)  # biases non-zero and distinct per direction
    return module


def kernel_layout(module: nn.RNNBase, fold: bool) -> Tuple[Tensor, Optional[Tensor], Tensor, Optional[Tensor]]:
    """``module``'s weights as the kernel reads them: ``(2, G, ...)``, the biases folded into ``b_ih`` or not."""
    get = lambda name: torch.stack([getattr(module, name + "_l0"), getattr(module, name + "_l0_reverse")])  # noqa
    w_ih, w_hh = get("weight_ih"), get("weight_hh")
    if not module.bias:
        return w_ih, None, w_hh, None
    if fold:
        return w_ih, get("bias_ih") + get("bias_hh"), w_hh, None
    return w_ih, get("bias_ih"), w_hh, get("bias_hh")


def states(seed: int = 11) -> Tuple[Tensor, Tensor, Tensor]:
    torch.manual_seed(seed)
    return torch.randn(T, B, F, dtype=F64), torch.randn(2, B, H, dtype=F64), torch.randn(2, B, H, dtype=F64)


def torch_run(module: nn.RNNBase, x: Tensor, h0: Tensor, c0: Tensor, lengths: Optional[Tensor]
              ) -> Tuple[Tensor, Tensor, Tensor]:
    """``module`` on ``x`` in the kernel's output layout: ``out (T, B, 2, H)`` (zero at padded steps), ``h_n``,
    ``c_n`` (``h_n`` for a GRU)."""
    hx = (h0, c0) if isinstance(module, nn.LSTM) else h0
    if lengths is None:
        out, state = module(x, hx)
    else:
        packed, state = module(pack_padded_sequence(x, lengths, enforce_sorted=False), hx)
        out = pad_packed_sequence(packed, total_length=T)[0]
    h_n, c_n = state if isinstance(module, nn.LSTM) else (state, state)
    return out.view(T, B, 2, H), h_n, c_n


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("mode,fold,bias", [("LSTM", True, True), ("LSTM", False, True), ("LSTM", True, False),
                                            ("GRU", False, True), ("GRU", False, False)])
def test_the_layer_equals_torchs_module(mode: str, fold: bool, bias: bool, lengths: Optional[Tensor]) -> None:
    module = torch_module(mode, bias)
    x, h0, c0 = states()
    got = reference_layer(CODES[mode], x, *kernel_layout(module, fold), h0, c0, lengths)
    want = torch_run(module, x, h0, c0, lengths)
    for a, b in zip(got, want, strict=True):
        close(a, b)
    if mode == "GRU":
        assert torch.equal(got[2], got[1])  # c_n is h_n


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
def test_a_gru_given_only_b_hh_reads_b_ih_as_zero(lengths: Optional[Tensor]) -> None:
    module = torch_module("GRU")
    with torch.no_grad():
        module.bias_ih_l0.zero_()
        module.bias_ih_l0_reverse.zero_()
    x, h0, c0 = states()
    w_ih, _, w_hh, b_hh = kernel_layout(module, fold=False)
    got = reference_layer(CODES["GRU"], x, w_ih, None, w_hh, b_hh, h0, c0, lengths)
    for a, b in zip(got, torch_run(module, x, h0, c0, lengths), strict=True):
        close(a, b)


def reset_before_loop(x: Tensor, w_ih: Tensor, b: Optional[Tensor], w_hh: Tensor, h0: Tensor,
                      lengths: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
    """Keras's ``reset_after=False`` GRU, both directions, one row and one step at a time (gates r, z, n):
    ``n = tanh(W_in x + b_n + W_hn (r * h))``, ``h' = (1 - z) n + z h``. -> ``out (T, B, 2, H)``, ``h_n``."""
    out = torch.zeros(T, B, 2, H, dtype=F64)
    h_n = torch.zeros(2, B, H, dtype=F64)
    for d in range(2):
        for row in range(B):
            n_steps = T if lengths is None else int(lengths[row])
            h = h0[d, row]
            for t in (range(n_steps) if d == 0 else reversed(range(n_steps))):
                gi = w_ih[d] @ x[t, row] + (0 if b is None else b[d])
                w_r, w_z, w_n = w_hh[d].split(H)
                g_r, g_z, g_n = gi.split(H)
                r, z = torch.sigmoid(g_r + w_r @ h), torch.sigmoid(g_z + w_z @ h)
                h = (1 - z) * torch.tanh(g_n + w_n @ (r * h)) + z * h
                out[t, row, d] = h
            h_n[d, row] = h
    return out, h_n


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("bias", [True, False])
def test_the_reset_before_gru_is_its_time_loop(bias: bool, lengths: Optional[Tensor]) -> None:
    module = torch_module("GRU", bias)
    w_ih, b_ih, w_hh, _ = kernel_layout(module, fold=True)
    x, h0, c0 = states()
    out, h_n, c_n = reference_layer(CODES["GRU_RESET_BEFORE"], x, w_ih, b_ih, w_hh, None, h0, c0, lengths)
    want_out, want_h = reset_before_loop(x, w_ih, b_ih, w_hh, h0, lengths)
    close(out, want_out)
    close(h_n, want_h)
    assert c_n is h_n


def seeds(mode: str) -> Tuple[Tensor, Tensor, Tensor]:
    torch.manual_seed(5)
    return torch.randn(T, B, 2, H, dtype=F64), torch.randn(2, B, H, dtype=F64), torch.randn(2, B, H, dtype=F64)


@pytest.mark.parametrize("lengths", [None, LENGTHS], ids=["full", "lengths"])
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "GRU_RESET_BEFORE"])
def test_the_gradients_are_autograds_through_the_layer_with_a_graph(mode: str, lengths: Optional[Tensor]) -> None:
    module = torch_module("LSTM" if mode == "LSTM" else "GRU")
    x, h0, c0 = states()
    w_ih, b_ih, w_hh, b_hh = kernel_layout(module, fold=mode != "GRU")
    inputs = [t.detach().clone().requires_grad_() if t is not None else None
              for t in (x, w_ih, b_ih, w_hh, b_hh, h0, c0)]
    d_out, d_hn, d_cn = seeds(mode)
    grads = reference_gradients(CODES[mode], tuple(inputs), lengths, d_out, d_hn, d_cn, [True] * 7)  # type: ignore
    # autograd through the same layer: every output's seed, d_cn only where c_n is a state of its own (LSTM)
    out, h_n, c_n = reference_layer(CODES[mode], *inputs, lengths)  # type: ignore[arg-type]
    loss = (out * d_out).sum() + (h_n * d_hn).sum() + ((c_n * d_cn).sum() if mode == "LSTM" else 0)
    present = [t for t in inputs if t is not None]
    want = iter(torch.autograd.grad(loss, present, allow_unused=True))
    for i, (t, g) in enumerate(zip(inputs, grads, strict=True)):
        if t is None:
            assert g is None, i
            continue
        expected = next(want)
        if expected is None:  # c0 of a GRU: unused, a zero gradient (not None)
            assert mode != "LSTM" and i == 6
            assert g is not None and torch.equal(g, torch.zeros_like(t)), i
            continue
        assert g is not None and g.requires_grad, i  # a graph of the backward: differentiable again
        close(g, expected)


def test_only_the_needed_gradients_are_computed() -> None:
    module = torch_module("LSTM")
    x, h0, c0 = states()
    inputs: List[Optional[Tensor]] = [t.detach().clone().requires_grad_() if t is not None else None
                                      for t in (x, *kernel_layout(module, fold=True), h0, c0)]
    inputs[5] = inputs[5].detach()  # type: ignore[union-attr]  # h0 needs no gradient here
    needed = [False, True, True, True, True, True, True]
    grads = reference_gradients(0, tuple(inputs), None, *seeds("LSTM"), needed)  # type: ignore[arg-type]
    assert [g is not None for g in grads] == [False, True, True, True, False, False, True]


def test_the_gradients_can_be_differentiated_again() -> None:
    """The point of this module: a second derivative (``d/dw sum(dL/dx)``) equals autograd's through the layer."""
    module = torch_module("GRU")
    x, h0, c0 = states()
    inputs = [t.detach().clone().requires_grad_() if t is not None else None
              for t in (x, *kernel_layout(module, fold=False), h0, c0)]
    d_out, d_hn, d_cn = seeds("GRU")
    g_x = reference_gradients(1, tuple(inputs), LENGTHS, d_out, d_hn, d_cn, [True] * 7)[0]  # type: ignore
    assert g_x is not None
    second = torch.autograd.grad(g_x.pow(2).sum(), inputs[3])[0]
    out, h_n, _ = reference_layer(1, *inputs, LENGTHS)  # type: ignore[arg-type]
    first = torch.autograd.grad((out * d_out).sum() + (h_n * d_hn).sum(), inputs[0], create_graph=True)[0]
    close(second, torch.autograd.grad(first.pow(2).sum(), inputs[3])[0])


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_rows_all_shorter_than_the_input_keep_its_length(mode: str) -> None:
    """No row reaches the last step: the output keeps ``T`` steps, zero past each row's end."""
    module = torch_module(mode)
    x, h0, c0 = states()
    lengths = torch.tensor([2, 4, 3])
    got = reference_layer(CODES[mode], x, *kernel_layout(module, mode == "LSTM"), h0, c0, lengths)
    assert got[0].shape == (T, B, 2, H) and not got[0][4].any()
    for a, b in zip(got, torch_run(module, x, h0, c0, lengths), strict=True):
        close(a, b)
