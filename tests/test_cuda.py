"""The blocks and the zoo on CUDA: the same results as on the CPU (and as ``nn.LSTM``/``nn.GRU`` on CUDA), every
merge mode, with ``lengths`` and states, gradients included. Skipped where no GPU is visible (CI has none); run on
a lent GPU machine by ``benchmarks/device_session.sh``. Fresh random inputs every run; float32 on the GPU against
float32 on the CPU: tolerance 2e-5 (cuDNN and the CPU sum in different orders)."""

from typing import Tuple

import pytest
import torch
from torch import nn

from models import BiGRU, BiLSTM, create_model
from models.merge import MERGE_MODES

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
TOL = 2e-5


def _pair(cell: str, merge_mode: object) -> Tuple[nn.Module, nn.Module]:
    block_type = BiLSTM if cell == "LSTM" else BiGRU
    cpu = block_type(5, 8, num_layers=2, batch_first=True, merge_mode=merge_mode)
    gpu = block_type(5, 8, num_layers=2, batch_first=True, merge_mode=merge_mode).cuda()
    gpu.load_state_dict(cpu.state_dict())
    return cpu, gpu


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
@pytest.mark.parametrize("merge_mode", [m for m in MERGE_MODES if m is not None])
@pytest.mark.parametrize("with_lengths", [False, True])
def test_block_on_cuda_equals_the_block_on_cpu_with_gradients(cell: str, merge_mode: str, with_lengths: bool) -> None:
    cpu, gpu = _pair(cell, merge_mode)
    x = torch.randn(4, 7, 5)
    lengths = torch.tensor([7, 2, 5, 1]) if with_lengths else None
    h0 = torch.randn(4, 4, 8)
    hx = (h0, torch.randn(4, 4, 8)) if cell == "LSTM" else h0
    hx_gpu = tuple(t.cuda() for t in hx) if cell == "LSTM" else h0.cuda()
    xc, xg = x.clone().requires_grad_(), x.cuda().requires_grad_()
    out_c, state_c = cpu(xc, hx, lengths=lengths)
    out_g, state_g = gpu(xg, hx_gpu, lengths=None if lengths is None else lengths.cuda())
    assert out_g.device.type == "cuda"
    torch.testing.assert_close(out_g.cpu(), out_c, atol=TOL, rtol=TOL)
    states_c = state_c if cell == "LSTM" else (state_c,)
    states_g = state_g if cell == "LSTM" else (state_g,)
    for a, b in zip(states_g, states_c, strict=True):
        torch.testing.assert_close(a.cpu(), b, atol=TOL, rtol=TOL)
    (grad_c,) = torch.autograd.grad(out_c.square().sum(), xc)
    (grad_g,) = torch.autograd.grad(out_g.square().sum(), xg)
    torch.testing.assert_close(grad_g.cpu(), grad_c, atol=TOL, rtol=TOL)
    for name, p_g in gpu.named_parameters():
        assert p_g.device.type == "cuda", name


@pytest.mark.parametrize("cell", ["LSTM", "GRU"])
def test_concat_block_on_cuda_is_nn_module_on_cuda(cell: str) -> None:
    block = (BiLSTM if cell == "LSTM" else BiGRU)(5, 8, num_layers=2).cuda()
    reference = getattr(nn, cell)(5, 8, num_layers=2, bidirectional=True).cuda()
    reference.load_state_dict(block.state_dict())
    x = torch.randn(6, 3, 5, device="cuda")
    for got, want in zip(block(x), reference(x), strict=True):
        if isinstance(got, tuple):
            for g, w in zip(got, want, strict=True):
                torch.testing.assert_close(g, w, atol=TOL, rtol=TOL)
        else:
            torch.testing.assert_close(got, want, atol=TOL, rtol=TOL)


def test_zoo_model_trains_a_step_on_cuda_like_on_cpu() -> None:
    torch.manual_seed(0)
    cpu = create_model("bilstm", vocab_size=50, num_classes=3)
    gpu = create_model("bilstm", vocab_size=50, num_classes=3).cuda()
    gpu.load_state_dict(cpu.state_dict())
    tokens = torch.randint(1, 50, (4, 9))
    labels = torch.tensor([0, 2, 1, 0])
    losses = []
    for model, device in ((cpu, "cpu"), (gpu, "cuda")):
        model.train(False)  # no dropout: the two devices must agree
        loss = nn.functional.cross_entropy(model(tokens.to(device)), labels.to(device))
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(losses[1], abs=1e-5)
    for (name, p_c), p_g in zip(cpu.named_parameters(), gpu.parameters(), strict=True):
        torch.testing.assert_close(p_g.grad.cpu(), p_c.grad, atol=1e-4, rtol=1e-4, msg=name)
