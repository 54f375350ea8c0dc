"""The kernel matrix's report (benchmarks/kernel_matrix.py) reads each row under the policy recorded with it (the
calibration the run used), falls back to the fixed table for rows that record none, and lists every cell above
the 1.02x limit with the other path's cost beside it."""

from typing import Any, Dict, List, Optional

import pytest

from benchmarks.kernel_matrix import LIMIT, report, under_policy


def row(kernel: float, kernel_len: float, aten_len: float, policy: Optional[Dict[str, Any]], batch: int = 16,
        hidden: int = 64) -> Dict[str, Any]:
    out = {"cell": "LSTM", "threads": 1, "mode": "train", "B": batch, "H": hidden, "T": 64, "clock": "process",
           "seconds": {"nn": 1.0}, "kernel/nn": kernel, "kernel_len/nn": kernel_len, "aten_len/nn": aten_len}
    if policy is not None:
        out["policy"] = policy
    return out


def test_the_recorded_policy_decides_and_the_table_only_without_one() -> None:
    recorded = row(1.10, 0.95, 1.20, {"source": "calibration", "kernel": True, "kernel_len": False})
    assert under_policy(recorded, "avx2") == {"no lengths": (1.10, 1.0), "lengths": (1.20, 0.95)}
    # the table: one-thread LSTM training at B >= 16, H <= 128 on PyTorch's kernels; with lengths the kernel
    assert under_policy(row(1.10, 0.95, 1.20, None), "avx2") == {"no lengths": (1.0, 1.10),
                                                                  "lengths": (0.95, 1.20)}


def test_the_report_lists_every_cell_above_the_limit() -> None:
    document = {"machine": {"lscpu": "AMD EPYC", "capability": "avx512", "torch": "2.13"},
                "rows": [row(1.10, 0.95, 1.20, {"source": "calibration", "kernel": True, "kernel_len": False}),
                         row(0.90, 0.90, 1.30, {"source": "calibration", "kernel": True, "kernel_len": True},
                             hidden=128),
                         {"cell": "LSTM", "threads": 1, "mode": "train", "B": 256, "H": 512, "T": 512,
                          "skipped": "too large"}]}
    text = report(document)
    assert LIMIT == 1.02
    assert "policy: calibration." in text
    assert "| 64 | 16 | 1.10k · 1.20p (k 0.95) | 0.90k · 0.90k |" in text
    assert f"Cells above {LIMIT:.2f}x `nn.*` under the policy: 2 of 4:" in text
    assert "- LSTM train 1 thread(s) T=64 B=16 H=64 no lengths: 1.10 (the other path 1.00)" in text
    assert "- LSTM train 1 thread(s) T=64 B=16 H=64 lengths: 1.20 (the other path 0.95)" in text


def test_the_report_names_pytorchs_instruction_sets_and_an_input_gradient() -> None:
    marked = row(0.90, 0.90, 1.30, {"source": "table", "kernel": True, "kernel_len": True})
    marked["input_grad"] = True
    document = {"machine": {"lscpu": "Xeon", "capability": "avx2", "torch": "2.13",
                            "reference_isa": {"aten": "AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}}, "rows": [marked]}
    text = report(document)
    assert "capability `avx2`, PyTorch's kernels aten=AVX2, ONEDNN_MAX_CPU_ISA=AVX2, torch 2.13" in text
    assert "**LSTM training step with the input's gradient, 1 thread(s)**" in text
    del marked["input_grad"], document["machine"]["reference_isa"]
    text = report(document)
    assert "**LSTM training step, 1 thread(s)**" in text and "PyTorch's kernels" not in text


def test_a_training_step_with_input_grad_computes_the_inputs_gradient(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from benchmarks import kernel_matrix

    made: List[torch.Tensor] = []
    randn = torch.randn
    monkeypatch.setattr(torch, "randn", lambda *args, **kwargs: made.append(randn(*args, **kwargs)) or made[-1])
    for input_grad in (False, True):
        made.clear()
        calls = kernel_matrix.variants("GRU", 2, 8, 3, train=True, input_grad=input_grad)
        x = made[0]
        assert x.shape == (3, 2, 8)
        for name in ("nn", "kernel", "kernel_len", "aten_len"):
            calls[name]()
        assert (x.grad is not None) == input_grad
        if input_grad:
            assert x.grad.abs().sum() > 0
