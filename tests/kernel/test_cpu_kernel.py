"""The CPU kernel (models/blocks/cpu_kernel/csrc/birnn_cpu.cpp) against PyTorch's packed nn.LSTM/nn.GRU, float64 and
float32,
and its fallback. Fresh random inputs every run."""

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List, Optional, Tuple

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from models import BiGRU, BiLSTM
from models.blocks import cpu_kernel

ROOT = Path(__file__).resolve().parents[2]
needs_kernel = pytest.mark.skipif(not cpu_kernel.available(), reason="CPU kernel not built (see test_kernel_builds)")


def test_kernel_builds_where_a_compiler_and_mkl_exist() -> None:
    if shutil.which(os.environ.get("CXX", "c++")) is None or not torch.backends.mkl.is_available():
        pytest.skip("no C++ compiler or no MKL: the blocks run on PyTorch's fused kernels")
    assert cpu_kernel.available()


def packed_reference(mode: str, module: nn.Module, x: torch.Tensor, lengths: Optional[torch.Tensor],
                     h0: torch.Tensor, c0: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    hx = (h0, c0) if mode == "LSTM" else h0
    if lengths is None:
        out, state = module(x, hx)
    else:
        packed, state = module(pack_padded_sequence(x, lengths, enforce_sorted=False), hx)
        out, _ = pad_packed_sequence(packed, total_length=x.shape[0])
    h_n, c_n = state if mode == "LSTM" else (state, state)
    return out, h_n, c_n


@needs_kernel
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("with_lengths", [False, True])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
def test_layer_equals_packed_torch_module_with_states_and_gradients(
    mode: str, with_lengths: bool, bias: bool, dtype: torch.dtype, tol: float
) -> None:
    steps, batch, features, hidden = 9, 5, 4, 6
    module = getattr(nn, mode)(features, hidden, bias=bias, bidirectional=True).to(dtype)
    x = torch.randn(steps, batch, features, dtype=dtype, requires_grad=True)
    lengths = torch.randint(1, steps + 1, (batch,)) if with_lengths else None
    h0 = torch.randn(2, batch, hidden, dtype=dtype, requires_grad=True)
    c0 = torch.randn(2, batch, hidden, dtype=dtype, requires_grad=True)
    weights: List[torch.Tensor] = list(module._flat_weights)

    expected = packed_reference(mode, module, x, lengths, h0, c0)
    out, h_n, c_n = cpu_kernel.fused_layer(mode, x, h0, c0, lengths, weights, bias)
    got = (out.flatten(2), h_n, c_n)
    for name, a, b in zip(("output", "h_n", "c_n"), got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol, msg=name)

    upstream = [torch.randn_like(t) for t in expected]
    inputs = [x, h0, *([c0] if mode == "LSTM" else []), *weights]
    used = 3 if mode == "LSTM" else 2  # GRU: c_n is h_n
    want = torch.autograd.grad(sum((t * g).sum() for t, g in zip(expected[:used], upstream[:used], strict=True)),
                               inputs)
    have = torch.autograd.grad(sum((t * g).sum() for t, g in zip(got[:used], upstream[:used], strict=True)), inputs)
    for a, b in zip(have, want, strict=True):
        torch.testing.assert_close(a, b, atol=tol, rtol=tol)


@needs_kernel
def test_float32_activations_stay_at_float32_rounding_over_long_sequences() -> None:
    """exp/sigmoid/tanh are the kernel's own vectorised code: over 300 steps, against float64, the float32
    kernel is as close as PyTorch's float32 module."""
    for mode in ("LSTM", "GRU"):
        module = getattr(nn, mode)(8, 32, bidirectional=True).double()
        for p in module.parameters():
            torch.nn.init.uniform_(p, -0.6, 0.6)  # large weights: saturated and mid-range gates both occur
        x = torch.randn(300, 3, 8, dtype=torch.float64) * 3
        zero = torch.zeros(2, 3, 32, dtype=torch.float64)
        with torch.no_grad():
            truth = module(x)[0]
            ours = cpu_kernel.fused_layer(mode, x.float(), zero.float(), zero.float(), None,
                                          [w.float() for w in module._flat_weights], True)[0].flatten(2)
            theirs = module.float()(x.float())[0]
        ours_error = (ours.double() - truth).abs().max().item()
        theirs_error = (theirs.double() - truth).abs().max().item()
        assert ours_error < max(4 * theirs_error, 1e-5), (mode, ours_error, theirs_error)


@needs_kernel
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_float64_gradcheck_with_lengths_and_states(mode: str) -> None:
    module = getattr(nn, mode)(3, 2, bidirectional=True).double()
    weights = [w.detach().clone().requires_grad_() for w in module._flat_weights]
    x = torch.randn(5, 3, 3, dtype=torch.float64, requires_grad=True)
    h0 = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, 3, 2, dtype=torch.float64, requires_grad=True)
    lengths = torch.tensor([5, 2, 4])

    def run(x: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, *w: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        out, h_n, c_n = cpu_kernel.fused_layer(mode, x, h0, c0, lengths, list(w), True)
        return (out, h_n, c_n) if mode == "LSTM" else (out, h_n)

    assert torch.autograd.gradcheck(run, (x, h0, c0, *weights))


@needs_kernel
def test_one_thread_and_two_threads_give_identical_bits() -> None:
    """Each direction's loop is the same code on whichever thread runs it: no reduction order changes."""
    block = BiGRU(6, 8, num_layers=2, merge_mode="sum")
    x = torch.randn(20, 4, 6, requires_grad=True)
    lengths = torch.tensor([20, 3, 11, 7])
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            out, h_n = block(x, lengths=lengths)
            (grad,) = torch.autograd.grad(out.square().sum() + h_n.sum(), x)
            results.append((out, h_n, grad))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(*results, strict=True):
        assert torch.equal(a, b)


@needs_kernel
def test_blocks_use_the_kernel_on_cpu_and_fall_back_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = cpu_kernel.fused_layer
    monkeypatch.setattr(cpu_kernel, "fused_layer", lambda *args: calls.append(args[0]) or real(*args))
    block = BiLSTM(4, 5, num_layers=2, merge_mode="ave")
    x = torch.randn(6, 3, 4)
    # whatever the policy picks for this shape on this CPU (tests/kernel/test_cpu_kernel_policy.py)
    with cpu_kernel.forced():
        fast, _ = block(x)
    assert calls == ["LSTM", "LSTM"]
    with cpu_kernel.disabled():
        assert not cpu_kernel.applies(x, "LSTM")
        aten, _ = block(x)
    assert len(calls) == 2
    torch.testing.assert_close(fast, aten, atol=1e-5, rtol=1e-5)
    assert cpu_kernel.applies(x, "LSTM")
    assert not cpu_kernel.applies(x.bfloat16(), "LSTM")
    assert not cpu_kernel.applies(x, "RNN_TANH")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not cpu_kernel.applies(x, "LSTM")


def test_jit_trace_records_the_fallback_path() -> None:
    """A trace cannot see into the kernel's ctypes call: tracing uses PyTorch's kernels, so the trace is right."""
    block = BiGRU(3, 4, num_layers=2, merge_mode="mul")
    traced = torch.jit.trace(block, (torch.randn(5, 2, 3),), check_trace=False)
    x = torch.randn(5, 2, 3)
    torch.testing.assert_close(traced(x)[0], block(x)[0], atol=1e-5, rtol=1e-5)


def run_isolated(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_disabled_or_unbuildable_kernel_falls_back_with_a_warning(tmp_path: Path) -> None:
    code = ("import warnings, torch; warnings.simplefilter('always')\n"
            "from models import BiGRU\n"
            "from models.blocks import cpu_kernel\n"
            "out, _ = BiGRU(3, 4, merge_mode='sum')(torch.randn(5, 2, 3), lengths=torch.tensor([5, 2]))\n"
            "print('available', cpu_kernel.available(), tuple(out.shape))\n")
    disabled = run_isolated(code, BIRNN_ZOO_CPU_KERNEL="0", BIRNN_ZOO_KERNEL_CACHE=str(tmp_path / "a"))
    assert disabled.returncode == 0, disabled.stderr
    assert "available False (5, 2, 4)" in disabled.stdout
    assert "unavailable" not in disabled.stderr  # switched off on purpose: no warning
    broken = run_isolated(code, CXX="false", BIRNN_ZOO_KERNEL_CACHE=str(tmp_path / "b"))
    assert broken.returncode == 0, broken.stderr
    assert "available False (5, 2, 4)" in broken.stdout
    assert "CPU kernel unavailable" in broken.stderr
    assert not list((tmp_path / "b").glob("*.so"))  # a failed build leaves nothing to load later


@needs_kernel
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_custom_ops_pass_torch_library_opcheck(mode: str) -> None:
    """Schemas, fake (meta) implementations and autograd registration are consistent (what torch.compile uses)."""
    cell = 0 if mode == "LSTM" else 1
    gates, steps, batch, features, hidden = (4 if cell == 0 else 3) * 3, 4, 2, 5, 3
    x = torch.randn(steps, batch, features, dtype=torch.float64, requires_grad=True)
    w_ih = torch.randn(2, gates, features, dtype=torch.float64, requires_grad=True)
    w_hh = torch.randn(2, gates, hidden, dtype=torch.float64, requires_grad=True)
    b_ih = torch.randn(2, gates, dtype=torch.float64, requires_grad=True)
    b_hh = torch.randn(2, gates, dtype=torch.float64, requires_grad=True) if cell == 1 else None
    h0 = torch.randn(2, batch, hidden, dtype=torch.float64, requires_grad=True)
    c0 = torch.randn(2, batch, hidden, dtype=torch.float64, requires_grad=True)
    for lengths in (None, torch.tensor([4, 2])):
        torch.library.opcheck(torch.ops.birnn_zoo.bidirectional_layer,
                              (x, w_ih, b_ih, w_hh, b_hh, h0, c0, lengths, cell, True))


@needs_kernel
def test_export_keeps_pytorch_kernels_so_the_program_loads_without_the_project() -> None:
    block = BiGRU(3, 4, num_layers=2, merge_mode="sum").eval()
    x = torch.randn(5, 2, 3)
    program = torch.export.export(block, (x,))
    targets = {str(node.target) for node in program.graph.nodes if node.op == "call_function"}
    assert not any("birnn_zoo" in t for t in targets)
    assert any("gru" in t for t in targets)
    torch.testing.assert_close(program.module()(x)[0], block(x)[0], atol=1e-5, rtol=1e-5)


@needs_kernel
@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("batch", [3, 40, 300])  # chunks of 85, 6 and 1 steps (inference projects ~256 rows at once)
def test_inference_path_equals_packed_torch_module(mode: str, batch: int) -> None:
    """Without a gradient the kernel projects the input in chunks of steps (no stash); same results."""
    module = getattr(nn, mode)(5, 4, bidirectional=True)
    x = torch.randn(13, batch, 5)
    lengths = torch.randint(1, 14, (batch,))
    h0, c0 = torch.randn(2, batch, 4), torch.randn(2, batch, 4)
    with torch.inference_mode():
        expected = packed_reference(mode, module, x, lengths, h0, c0)
        out, h_n, c_n = cpu_kernel.fused_layer(mode, x, h0, c0, lengths, list(module._flat_weights), True)
    for a, b in zip((out.flatten(2), h_n, c_n), expected, strict=True):
        torch.testing.assert_close(a, b, atol=2e-5, rtol=2e-5)
