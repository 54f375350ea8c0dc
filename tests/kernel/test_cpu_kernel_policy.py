"""The one rule that picks the kernel or PyTorch's kernels: its documented cases and the cases just outside them, and
what the blocks follow."""

import itertools

import pytest
import torch
from helpers.kernel_aids import StackSpy

from models import BiGRU, BiLSTM
from models.blocks import cpu_kernel
from models.blocks.cpu_kernel import policy as cpu_kernel_policy

GRID = list(itertools.product(("LSTM", "GRU"), (1, 16, 64, 256), (64, 128, 256, 512), (64, 512), (False, True),
                              (1, 2, 4, 16), ("avx2", "avx512"), (False, True)))


# (cell, batch, hidden, steps, lengths, threads, capability, training) -> kernel?  The rule's documented cases and
# the cases just outside each of them (models/blocks/cpu_kernel/policy.py says why each is what it is).
DOCUMENTED = [
    # one-thread LSTM training without lengths at B >= 16 and H <= 128: PyTorch's kernels (oneDNN's backward GEMMs)
    (("LSTM", 16, 128, 64, False, 1, "avx2", True), False),
    (("LSTM", 16, 128, 64, False, 1, "avx512", True), False),     # on both capabilities
    (("LSTM", 256, 64, 512, False, 1, "avx2", True), False),
    (("LSTM", 15, 128, 64, False, 1, "avx2", True), True),        # B just under 16
    (("LSTM", 16, 129, 64, False, 1, "avx2", True), True),        # H just over 128
    (("LSTM", 16, 128, 64, False, 1, "avx2", False), True),       # inference
    (("LSTM", 16, 128, 64, False, 2, "avx2", True), True),        # two threads
    (("LSTM", 16, 128, 64, True, 1, "avx2", True), True),         # with lengths: the kernel, always
    # two-thread LSTM inference at H >= 512 with 1 < B < 64 on AVX2 only: PyTorch's kernels (oneDNN splits well)
    (("LSTM", 2, 512, 64, False, 2, "avx2", False), False),
    (("LSTM", 63, 1024, 64, False, 2, "avx2", False), False),
    (("LSTM", 2, 512, 64, False, 2, "avx512", False), True),      # not on AVX-512
    (("LSTM", 2, 511, 64, False, 2, "avx2", False), True),        # H just under 512
    (("LSTM", 1, 512, 64, False, 2, "avx2", False), True),        # B = 1
    (("LSTM", 64, 512, 64, False, 2, "avx2", False), True),       # B = 64
    (("LSTM", 2, 512, 64, False, 2, "avx2", True), True),         # training
    (("LSTM", 2, 512, 64, False, 1, "avx2", False), True),        # one thread
    (("LSTM", 2, 512, 64, True, 2, "avx2", False), True),         # with lengths (1.02x against PyTorch's 1.14x)
    # GRU: the kernel but for one-thread training at B >= 256 without lengths
    (("GRU", 256, 64, 64, False, 1, "avx2", True), False),
    (("GRU", 256, 128, 64, True, 1, "avx512", True), True),       # with lengths the kernel skips padded rows
    (("GRU", 255, 64, 64, False, 1, "avx2", True), True),         # B just under 256
    (("GRU", 256, 64, 64, False, 1, "avx2", False), True),        # inference
    (("GRU", 256, 64, 64, False, 2, "avx2", True), True),         # two threads
    # more than two threads: PyTorch's kernels (not measured on many cores), but Keras reset_after=False GRUs
    (("LSTM", 1, 64, 64, True, 3, "avx2", False), False),
    (("GRU", 1, 64, 64, True, 3, "avx512", False), False),
    (("GRU_RESET_BEFORE", 256, 64, 64, False, 16, "avx2", True), True),
    (("GRU_RESET_BEFORE", 1, 64, 64, False, 1, "avx512", False), True),
    # the plain cases either side of the exceptions
    (("LSTM", 1, 64, 64, False, 1, "avx2", True), True),
    (("LSTM", 64, 512, 64, False, 1, "avx512", False), True),
    (("LSTM", 64, 512, 64, False, 2, "avx512", True), True),
]


@pytest.mark.parametrize(("args", "kernel"), DOCUMENTED, ids=[" ".join(map(str, a)) for a, _ in DOCUMENTED])
def test_the_documented_cases_and_the_cases_just_outside_them(args: tuple, kernel: bool) -> None:
    assert cpu_kernel_policy.kernel_wins(*args) is kernel


def test_more_than_two_threads_keeps_pytorchs_kernels() -> None:
    assert not any(cpu_kernel_policy.kernel_wins(*args) for args in GRID if args[5] > 2)


@pytest.mark.parametrize("threads", [1, 2])
def test_gru_and_lengths_take_the_kernel_up_to_two_threads(threads: int) -> None:
    """Measured: nn.GRU is 1.1-30x slower than the kernel (but for big one-thread training steps); PyTorch's lengths
    path 1.0-1.55x nn.LSTM."""
    for cell, batch, hidden, steps, lengths, _, capability, training in GRID:
        big_training_step = threads == 1 and training and batch >= 256 and not lengths
        if (cell == "GRU" and not big_training_step) or (cell == "LSTM" and lengths):
            assert cpu_kernel_policy.kernel_wins(cell, batch, hidden, steps, lengths, threads, capability, training)


def test_blocks_follow_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    if not cpu_kernel.available():
        pytest.skip("CPU kernel not built")
    calls = []
    real = cpu_kernel.fused_layer
    monkeypatch.setattr(cpu_kernel, "fused_layer", lambda *args: calls.append(args[0]) or real(*args))
    seen = []
    monkeypatch.setattr(cpu_kernel, "kernel_wins", lambda *args: seen.append(args) or False)
    x = torch.randn(6, 3, 4)
    block = BiLSTM(4, 5, merge_mode="sum")
    with torch.no_grad():
        block(x)
    assert calls == [] and seen[-1] == ("LSTM", 3, 5, 6, False, torch.get_num_threads(), cpu_kernel.capability(),
                                        False)
    block(x)  # parameters need gradients: a training step
    assert calls == [] and seen[-1][7] is True
    monkeypatch.setattr(cpu_kernel, "kernel_wins", lambda *args: seen.append(args) or True)
    BiGRU(4, 5)(x.requires_grad_(), lengths=torch.tensor([6, 2, 3]))
    assert calls == ["GRU"] and seen[-1][4] is True and seen[-1][7] is True


def test_small_inference_calls_run_on_one_thread() -> None:
    """Under SPLIT_MIN_MFLOP of work an inference call stays on the calling thread: waking a sleeping second thread
    costs more than it saves there (measured: models/blocks/cpu_kernel/policy.py)."""
    rule = cpu_kernel_policy.inference_threads
    assert rule(37, 1, 128, 512, [128, 256], 2) == 1  # the longest TREC request, LSTM H = 128, 2 layers: 49 MFLOP
    assert rule(64, 1, 128, 512, [128, 256], 2) == 2  # the ONNX Runtime matrix's smallest LSTM row: 84 MFLOP
    assert rule(64, 1, 128, 384, [128, 256], 2) == 2  # its GRU twin: 63 MFLOP
    assert rule(64, 1, 128, 512, [128, 256], 1) == 1
    assert rule(1000, 64, 256, 1024, [256], 8) == 8
    # flop = 2 * 2 * T * B * G * (F + H): 80,000 a step here, so 60 MFLOP is reached at T = 750
    assert cpu_kernel_policy.SPLIT_MIN_MFLOP == 60.0
    assert rule(750, 1, 100, 100, [100], 2) == 2 and rule(749, 1, 100, 100, [100], 2) == 1


def test_blocks_pass_the_rules_thread_count_to_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    if not cpu_kernel.available():
        pytest.skip("CPU kernel not built")
    from models.blocks.cpu_kernel import inference

    seen: list = []
    spy = StackSpy(cpu_kernel._kernel(), lambda name, args: seen.append(args.threads))  # each all-layers call's
    monkeypatch.setattr(inference.cpu_kernel, "_kernel", lambda: spy)
    block = BiLSTM(64, 64, num_layers=2).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with torch.inference_mode(), cpu_kernel.forced():
            small, _ = block(torch.randn(8, 1, 64))    # 4 * 8 * 256 * (128 + 192) = 2.6 MFLOP
            large, _ = block(torch.randn(64, 16, 64))  # 4 * 64 * 16 * 256 * (128 + 192) = 336 MFLOP
    finally:
        torch.set_num_threads(threads)
    assert seen == [1, 2]
    assert small.shape == (8, 1, 128) and large.shape == (64, 16, 128)
