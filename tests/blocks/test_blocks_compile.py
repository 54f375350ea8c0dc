"""The blocks give their eager outputs under torch.jit.script, torch.compile and torch.export."""

import pytest
import torch
import torch._dynamo

from models import BiGRU, BiLSTM, BiRNN
from models.blocks import cpu_kernel

TOL = {"atol": 1e-5, "rtol": 1e-5}
CASES = [
    (BiLSTM, "concat"), (BiLSTM, ["sum", "mul", None]), (BiGRU, "ave"), (BiRNN, ["concat", "sum", "mul"]),
]


def outputs(result: tuple) -> list:
    out, state = result
    return [out, *state] if isinstance(state, tuple) else [out, state]


@pytest.mark.parametrize(("cls", "mode"), CASES)
def test_script_equals_eager_with_and_without_lengths(cls: type, mode: object) -> None:
    block = cls(3, 4, num_layers=3, merge_mode=mode, batch_first=True)
    scripted = torch.jit.script(block)
    for x, lengths in ((torch.randn(5, 7, 3), None), (torch.randn(4, 6, 3), torch.tensor([6, 1, 3, 5]))):
        for ours, eager in zip(outputs(scripted(x, None, lengths)), outputs(block(x, lengths=lengths)), strict=True):
            torch.testing.assert_close(ours, eager, **TOL)


@pytest.mark.parametrize("path", ["cpu-kernel", "aten"])
@pytest.mark.parametrize(
    ("cls", "mode", "with_lengths", "aten_graph_breaks"),
    [(BiLSTM, "concat", False, 0), (BiLSTM, "sum", False, 1), (BiLSTM, "sum", True, 5), (BiGRU, "mul", True, 5)],
)
def test_compile_graph_breaks_are_pinned_and_outputs_match(cls: type, mode: str, with_lengths: bool,
                                                           aten_graph_breaks: int, path: str,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """CPU kernel: one graph, the kernel a custom op inside it. PyTorch's fused kernels: each fused call is left
    to eager PyTorch (torch.compiler.disable), the merges, gathers and masks around it compiled. The counts are
    what torch._dynamo.explain reports on torch 2.13."""
    if path == "aten":
        monkeypatch.setattr(cpu_kernel, "applies", lambda *args, **kwargs: False)
        graph_breaks = aten_graph_breaks
    elif not cpu_kernel.available():
        pytest.skip("CPU kernel not built (tests/kernel/test_cpu_kernel.py says why)")
    else:  # the kernel wherever it can run, whatever the policy picks for this shape on this CPU
        monkeypatch.setattr(cpu_kernel, "kernel_wins", lambda *args: True)
        graph_breaks = 0
    block = cls(3, 4, num_layers=2, merge_mode=mode)
    x = torch.randn(5, 2, 3)
    lengths = torch.tensor([5, 3]) if with_lengths else None
    torch._dynamo.reset()
    explained = torch._dynamo.explain(block)(x, lengths=lengths)
    assert explained.graph_break_count == graph_breaks
    assert all("compiler.disable" in str(reason.reason) for reason in explained.break_reasons)
    torch._dynamo.reset()
    compiled = torch.compile(block, backend="aot_eager", dynamic=True)
    for seq_len, batch in ((5, 2), (9, 3)):     # a second shape reuses the dynamic graph
        x = torch.randn(seq_len, batch, 3, requires_grad=True)
        lengths = torch.randint(1, seq_len + 1, (batch,)) if with_lengths else None
        got, want = outputs(compiled(x, lengths=lengths)), outputs(block(x, lengths=lengths))
        for ours, eager in zip(got, want, strict=True):
            torch.testing.assert_close(ours, eager, **TOL)
        grad = torch.autograd.grad(got[0].sum(), x)[0]
        torch.testing.assert_close(grad, torch.autograd.grad(want[0].sum(), x)[0], **TOL)


@pytest.mark.parametrize(("cls", "mode"), [(BiLSTM, ["ave", "sum"]), (BiGRU, "concat")])
def test_export_with_dynamic_batch_equals_eager(cls: type, mode: object) -> None:
    """torch 2.13 specialises the time axis of aten.lstm/gru during export: T is static, the batch dynamic."""
    block = cls(3, 4, num_layers=2, merge_mode=mode, batch_first=True).eval()
    x, lengths = torch.randn(2, 6, 3), torch.tensor([6, 2])
    batch = torch.export.Dim("batch", min=1, max=1024)
    program = torch.export.export(block, (x,), {"lengths": lengths},
                                  dynamic_shapes={"input": {0: batch}, "lengths": {0: batch}})
    x, lengths = torch.randn(5, 6, 3), torch.tensor([1, 6, 3, 4, 2])
    for ours, eager in zip(outputs(program.module()(x, lengths=lengths)), outputs(block(x, lengths=lengths)),
                           strict=True):
        torch.testing.assert_close(ours, eager, **TOL)
