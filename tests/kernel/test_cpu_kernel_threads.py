"""The CPU kernel on more than two threads: the batch's rows are split into groups (a direction and a row group per
thread), the weight gradients into slices of gate rows. Results must equal those on two threads to float rounding
(BLAS may block a product of fewer rows differently), and a repeated run with the same thread count must give the
same bits (bit-exact resume). Fresh random inputs every run; on a
2-core machine the 4 and 8 thread teams simply share the cores."""

import os
import subprocess
import sys
from typing import Dict, List, Tuple

import pytest
import torch
from torch import nn

from models import BiLSTM
from models.blocks import cpu_kernel

needs_kernel = pytest.mark.skipif(not cpu_kernel.available(), reason="CPU kernel not built (see test_kernel_builds)")


def run_layer(mode: str, threads: int, inputs: Dict[str, torch.Tensor], weights: List[torch.Tensor]
              ) -> Tuple[torch.Tensor, ...]:
    """Output, h_n, c_n and the gradients of x, h0, c0 and every weight, on ``threads`` threads."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        x, h0, c0 = (inputs[k].detach().clone().requires_grad_() for k in ("x", "h0", "c0"))
        w = [t.detach().clone().requires_grad_() for t in weights]
        out, h_n, c_n = cpu_kernel.fused_layer(mode, x, h0, c0, inputs["lengths"], w, True)
        used = [out, h_n] + ([c_n] if mode == "LSTM" else [])
        upstream = (inputs["g_out"], inputs["g_h"], inputs["g_c"])[:len(used)]
        loss = sum((t * g).sum() for t, g in zip(used, upstream, strict=True))
        grads = torch.autograd.grad(loss, [x, h0, *([c0] if mode == "LSTM" else []), *w])
    finally:
        torch.set_num_threads(previous)
    return (out.detach(), h_n.detach(), c_n.detach(), *grads)


@needs_kernel
@pytest.mark.parametrize("mode", ["LSTM", "GRU", "GRU_RESET_BEFORE"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-5), (torch.float64, 1e-12)])
def test_more_threads_split_the_batch_without_changing_results(mode: str, dtype: torch.dtype, tol: float) -> None:
    steps, batch, features, hidden = 13, 37, 5, 10  # 37 rows: 2 groups of 18-19 at 4 threads, 4 of 9-10 at 8
    module = (nn.LSTM if mode == "LSTM" else nn.GRU)(features, hidden, bidirectional=True).to(dtype)
    weights = list(module._flat_weights)
    inputs = {
        "x": torch.randn(steps, batch, features, dtype=dtype),
        "h0": torch.randn(2, batch, hidden, dtype=dtype),
        "c0": torch.randn(2, batch, hidden, dtype=dtype),
        "lengths": torch.randint(1, steps + 1, (batch,)),
        "g_out": torch.randn(steps, batch, 2, hidden, dtype=dtype),
        "g_h": torch.randn(2, batch, hidden, dtype=dtype),
        "g_c": torch.randn(2, batch, hidden, dtype=dtype),
    }
    two = run_layer(mode, 2, inputs, weights)
    for threads in (4, 8):
        many = run_layer(mode, threads, inputs, weights)
        names = ["output", "h_n", "c_n"] + [f"gradient {i}" for i in range(len(many) - 3)]
        for name, a, b in zip(names, many, two, strict=True):
            torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=f"{threads} threads, {name}")
        again = run_layer(mode, threads, inputs, weights)
        for a, b in zip(again, many, strict=True):
            assert torch.equal(a, b), f"{threads} threads: a repeated run differs"


@needs_kernel
def test_forced_block_on_four_threads_equals_nn_lstm() -> None:
    """A block on the kernel (forced: the policy keeps PyTorch's kernels above two threads) at 4 threads, against
    ``nn.LSTM``: outputs, states and the input gradient, batch split into two row groups."""
    reference = nn.LSTM(6, 16, num_layers=2, bidirectional=True, batch_first=True)
    block = BiLSTM(6, 16, num_layers=2, batch_first=True)
    block.load_state_dict(reference.state_dict())
    x = torch.randn(20, 11, 6)
    previous = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        with cpu_kernel.forced():
            xa = x.clone().requires_grad_()
            out, (h_n, c_n) = block(xa)
            (grad,) = torch.autograd.grad(out.square().sum() + h_n.sum() + c_n.sum(), xa)
    finally:
        torch.set_num_threads(previous)
    xb = x.clone().requires_grad_()
    want, (want_h, want_c) = reference(xb)
    (want_grad,) = torch.autograd.grad(want.square().sum() + want_h.sum() + want_c.sum(), xb)
    for a, b in ((out, want), (h_n, want_h), (c_n, want_c), (grad, want_grad)):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)


_SMALLER_TEAM = """
import torch
from models import BiLSTM
from models.blocks import cpu_kernel
torch.manual_seed(0)
block = BiLSTM(6, 9, num_layers=3, merge_mode=["sum", "concat", "ave"]).eval()
x = torch.randn(11, 20, 6)
results = []
with torch.inference_mode(), cpu_kernel.forced():
    for threads in (1, 4):
        torch.set_num_threads(threads)
        results.append(block(x))
(a, (ha, ca)), (b, (hb, cb)) = results
assert torch.equal(a, b) and torch.equal(ha, hb) and torch.equal(ca, cb)
print("ok")
"""


@needs_kernel
def test_a_team_smaller_than_asked_falls_back_to_openmps_barrier() -> None:
    """OMP_THREAD_LIMIT=1 gives the inference call's parallel region one thread where it asked for four: the kernel's
    spin barrier (sized for the team it asked for) must not wait for threads that never come (a hang here)."""
    env = {**os.environ, "OMP_THREAD_LIMIT": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([sys.executable, "-c", _SMALLER_TEAM], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr
