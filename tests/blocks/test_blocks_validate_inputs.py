"""``validate_inputs``: the switch for the input checks that read tensor values (the range of ``lengths``).

With it on (the default) a block reads ``lengths`` back once per call, in one copy (one sync on CUDA); inside
``validate_inputs(False)`` it reads nothing and the free checks (shapes, dtypes) still raise. The counts are taken
on the CPU with ``helpers.host_reads`` on PyTorch's fused path (``cpu_kernel.disabled()``), the path CUDA takes
for ``reset_after=False``; on CUDA's packed path the block copies ``lengths`` to the host for cuDNN anyway and
checks them there."""

import threading
from typing import List

import pytest
import torch
from helpers.host_reads import counting_host_reads

from models import BiGRU, BiLSTM, validate_inputs
from models.blocks import cpu_kernel
from models.blocks.validation import checking_values, host_bounds


def test_checks_are_on_by_default_and_the_switch_nests_and_restores() -> None:
    assert validate_inputs.is_enabled() and checking_values()
    with validate_inputs(False):
        assert not validate_inputs.is_enabled() and not checking_values()
        with validate_inputs(True):
            assert checking_values()
        assert not checking_values()
    assert checking_values()


def test_the_switch_is_restored_after_an_error() -> None:
    with pytest.raises(RuntimeError, match="boom"), validate_inputs(False):
        raise RuntimeError("boom")
    assert checking_values()


def test_the_switch_belongs_to_one_thread() -> None:
    seen: List[bool] = []
    with validate_inputs(False):
        thread = threading.Thread(target=lambda: seen.append(checking_values()))
        thread.start()
        thread.join()
    assert seen == [True]


def test_the_switch_takes_a_bool() -> None:
    with pytest.raises(TypeError, match=r"^validate_inputs\(mode\) takes a bool, got int: 0$"):
        validate_inputs(0)  # type: ignore[arg-type]


def test_host_bounds_reads_every_bound_in_one_copy() -> None:
    with counting_host_reads() as reads:
        bounds = host_bounds([torch.tensor([3, -2, 7]), torch.tensor([5, 1], dtype=torch.int32)])
    assert bounds == [-2, 7, 1, 5]
    assert reads.ops == ["Tensor.tolist"]


@pytest.mark.parametrize("make", [lambda: BiLSTM(4, 5, num_layers=2, merge_mode="sum"),
                                  lambda: BiGRU(4, 5, num_layers=2, merge_mode="ave", reset_after=False)])
def test_a_training_call_with_lengths_reads_them_once_or_not_at_all(make) -> None:  # type: ignore[no-untyped-def]
    block = make().train()
    x = torch.randn(6, 3, 4, requires_grad=True)
    lengths = torch.tensor([6, 2, 4])
    counts = {}
    with cpu_kernel.disabled():
        for mode in (True, False):
            with validate_inputs(mode), counting_host_reads() as reads:
                out, _ = block(x, lengths=lengths)
                out.sum().backward()
            counts[mode] = reads.ops
    assert counts == {True: ["Tensor.tolist"], False: []}


def test_bad_lengths_raise_with_validation_on_and_free_checks_raise_with_it_off() -> None:
    block = BiLSTM(4, 5)
    x = torch.randn(6, 3, 4)
    with pytest.raises(ValueError, match=r"^lengths must lie in \[1, T\] = \[1, 6\], got values from 0 to 7$"):
        block(x, lengths=torch.tensor([7, 0, 3]))
    with validate_inputs(False):
        with pytest.raises(ValueError, match=r"^lengths must have shape \(B,\) = \(3,\), got shape \[2\]$"):
            block(x, lengths=torch.tensor([1, 2]))
        with pytest.raises(TypeError, match=r"^lengths must be an integer tensor"):
            block(x, lengths=torch.tensor([1.0, 2.0, 3.0]))


def test_a_scripted_block_checks_whatever_the_switch() -> None:
    scripted = torch.jit.script(BiLSTM(4, 5))
    with validate_inputs(False), pytest.raises(torch.jit.Error, match=r"lengths must lie in \[1, T\]"):
        scripted(torch.randn(6, 3, 4), None, torch.tensor([7, 1, 3]))
