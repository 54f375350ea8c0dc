"""Function-level tests of models/blocks/cpu_kernel/bf16.py written for mutation testing (docs/contributing.md,
"Mutation testing"): what the CUDA-only lines of ``run`` do, checked on the CPU with a stand-in. Skipped, with the
reason, on CPUs without AVX512_BF16 (or a kernel built for AVX2)."""

from typing import Any, List, Tuple

import pytest
import torch
from torch import Tensor

from models import BiLSTM
from models.blocks import cpu_kernel
from models.blocks.cpu_kernel import bf16


class LengthsOnAnotherDevice:
    """Stands for ``lengths`` on another device (a GPU): records what ``.to`` is asked and answers the host copy
    only when asked for the host; any other answer is a meta tensor, whose values cannot be read (as a GPU's cannot
    be read by the C kernel)."""

    def __init__(self, values: Tensor) -> None:
        self.values: Tensor = values
        self.asked: List[Tuple[Tuple[Any, ...], dict]] = []

    def to(self, *args: Any, **kwargs: Any) -> Tensor:
        self.asked.append((args, kwargs))
        device = kwargs.get("device", args[0] if args else None)
        dtype = kwargs.get("dtype", torch.int64)
        return self.values.to(dtype) if device in ("cpu", torch.device("cpu")) else self.values.to("meta")


def test_run_copies_lengths_to_the_host_before_the_kernel_reads_them() -> None:
    """``run`` hands the C kernel the address of host int64 lengths: ``lengths`` on a GPU must be copied with
    ``.to(device="cpu", dtype=torch.int64)``. The outputs are the ones of the same call with host lengths, exactly
    (the same kernel, the same bytes)."""
    if not bf16.supported():
        pytest.skip(f"no bf16 kernel here (CPU kernel capability {cpu_kernel.capability()}, AVX512_BF16 needed)")
    torch.manual_seed(0)
    block = BiLSTM(5, 8, 1).eval().to(torch.bfloat16)
    steps, batch = 6, 3
    x = torch.randn(steps, batch, 5).bfloat16()
    h0 = torch.zeros(2, batch, 8, dtype=torch.bfloat16)
    host = torch.tensor([6, 2, 4], dtype=torch.int32)
    lengths = LengthsOnAnotherDevice(host)

    def call(given: Any) -> Tuple[Tensor, Tensor, Tensor]:
        with torch.no_grad():
            return bf16.run(block, "LSTM", x, given, h0, h0, block._weights_now(), True, block.merge_modes, 8)

    got = call(lengths)
    assert lengths.asked == [((), {"device": "cpu", "dtype": torch.int64})]
    want = call(host.to(torch.int64))
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, atol=0.0, rtol=0.0)
    # the lengths were read: rows shorter than the input have zero outputs after their end
    assert bool((got[0][2:, 1] == 0).all()) and bool((got[0][4:, 2] == 0).all())
