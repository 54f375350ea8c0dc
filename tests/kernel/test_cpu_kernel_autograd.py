"""Autograd beyond first order on the kernel path, as nn.LSTM/nn.GRU give it: double backward (create_graph),
gradgradcheck, Hessian-vector products, and torch.func's grad / vmap / jvp."""

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vmap

from models import BiGRU, BiLSTM
from models.blocks import cpu_kernel

BLOCKS = {"LSTM": (BiLSTM, nn.LSTM), "GRU": (BiGRU, nn.GRU)}


def pair(mode: str, dtype: torch.dtype = torch.float64) -> tuple:
    block_cls, reference_cls = BLOCKS[mode]
    reference = reference_cls(3, 4, bidirectional=True).to(dtype)
    block = block_cls(3, 4).to(dtype)
    block.load_state_dict(reference.state_dict())
    return block, reference


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_double_backward_equals_torch(capability: str, mode: str, with_lengths: bool) -> None:
    block, reference = pair(mode)
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 2, 4]) if with_lengths else None

    def second_order(module: nn.Module, run_block: bool) -> list:
        if run_block:
            out = module(x, lengths=lengths)[0] if with_lengths else module(x)[0]
        else:
            if with_lengths:
                packed = nn.utils.rnn.pack_padded_sequence(x, lengths, enforce_sorted=False)
                out = nn.utils.rnn.pad_packed_sequence(module(packed)[0], total_length=5)[0]
            else:
                out = module(x)[0]
        weight = module.weight_hh_l0
        g_x, g_w = torch.autograd.grad(out.pow(2).sum(), (x, weight), create_graph=True)
        return list(torch.autograd.grad(g_x.pow(2).sum() + g_w.sum(), (x, weight, module.bias_ih_l0_reverse)))

    ours = second_order(block, True)
    for a, b in zip(ours, second_order(reference, False), strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_gradgradcheck_and_hvp(capability: str, mode: str) -> None:
    block, reference = pair(mode)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)
    if mode == "LSTM":
        c0 = torch.randn(2, 2, 4, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradgradcheck(lambda a, b, c: block(a, hx=(b, c))[0], (x, h0, c0))
    else:
        assert torch.autograd.gradgradcheck(lambda a, b: block(a, hx=b)[0], (x, h0))
    vector = torch.randn_like(x)
    ours = torch.autograd.functional.hvp(lambda a: block(a)[0].tanh().sum(), x.detach(), vector)[1]
    theirs = torch.autograd.functional.hvp(lambda a: reference(a)[0].tanh().sum(), x.detach(), vector)[1]
    torch.testing.assert_close(ours, theirs, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_torch_func_grad_of_functional_call_equals_torch(capability: str, mode: str) -> None:
    block, reference = pair(mode, torch.float32)
    x = torch.randn(6, 2, 3)
    params = {name: torch.randn_like(p) for name, p in reference.named_parameters()}  # not the modules' own

    def loss(module: nn.Module):
        return lambda p, a: functional_call(module, p, (a,))[0].square().sum()

    ours, theirs = grad(loss(block))(params, x), grad(loss(reference))(params, x)
    for name in params:
        torch.testing.assert_close(ours[name], theirs[name], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_torch_func_grad_vmap_jvp_equal_torch(capability: str, mode: str) -> None:
    """Every transform nn.* supports gives nn.*'s values; where nn.* has no rule (torch 2.13: no batching rule for
    aten::lstm/gru, no forward AD for the CPU LSTM) the block raises the same error. The values are compared
    with references that always run: a loop over the batch for vmap, a double-backward jvp for jvp."""
    block, reference = pair(mode, torch.float32)
    x = torch.randn(6, 2, 3)
    torch.testing.assert_close(grad(lambda a: block(a)[0].square().sum())(x),
                               grad(lambda a: reference(a)[0].square().sum())(x), atol=1e-5, rtol=1e-5)
    batch = torch.randn(3, 6, 2, 3)
    looped = torch.stack([reference(a)[0] for a in batch])
    try:
        vmap(lambda a: reference(a)[0])(batch)
    except RuntimeError as error:  # torch 2.13: "Batching rule not implemented for aten::lstm.input"
        with pytest.raises(RuntimeError, match="Batching rule") as ours:
            vmap(lambda a: block(a)[0])(batch)
        assert str(ours.value).split(".")[0] == str(error).split(".")[0], "the same missing rule as nn.*"
    else:
        torch.testing.assert_close(vmap(lambda a: block(a)[0])(batch), looped, atol=1e-5, rtol=1e-5)
    tangent = torch.randn_like(x)
    # jvp by double backward: needs only the (second-order) backward both modules have
    expected = torch.autograd.functional.jvp(lambda a: reference(a)[0], x, tangent)
    ours_double_backward = torch.autograd.functional.jvp(lambda a: block(a)[0], x, tangent)
    for a, b in zip(ours_double_backward, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    try:
        jvp(lambda a: reference(a)[0], (x,), (tangent,))
    except NotImplementedError:  # torch 2.13: no forward AD for the CPU LSTM (oneDNN); the block says the same
        with pytest.raises(NotImplementedError, match="forward AD"):
            jvp(lambda a: block(a)[0], (x,), (tangent,))
        assert mode == "LSTM", "nn.GRU has forward AD: its comparison must run"
        return
    for a, b in zip(jvp(lambda a: block(a)[0], (x,), (tangent,)), expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_functorch_transforms_never_reach_the_kernel(capability: str, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = cpu_kernel.fused_layer
    monkeypatch.setattr(cpu_kernel, "fused_layer", lambda *args: calls.append(1) or real(*args))
    block = BiLSTM(3, 4)
    block(torch.randn(5, 2, 3))
    assert calls == [1]
    grad(lambda a: block(a)[0].sum())(torch.randn(5, 2, 3))
    gru = BiGRU(3, 4)
    jvp(lambda a: gru(a)[0], (torch.randn(5, 2, 3),), (torch.randn(5, 2, 3),))
    assert calls == [1]


def test_gradgradcheck_reset_before_gru(capability: str) -> None:
    """Keras reset_after=False on the kernel: second order recomputed on its exact time loop."""
    block = BiGRU(3, 2, reset_after=False).double()
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([4, 2])
    assert torch.autograd.gradgradcheck(lambda a: block(a, lengths=lengths)[0], (x,))
