"""``dtype_name``'s fallback under TorchScript, word for word (issue 37's mutation testing of
``models/blocks/validation.py``; the other checks are covered by ``test_blocks_validation.py``)."""

import torch

from models.blocks.validation import dtype_name


def test_under_torchscript_a_dtype_outside_the_table_is_named_by_its_number() -> None:
    scripted = torch.jit.script(dtype_name)
    # TorchScript holds a dtype as its ScalarType number: uint8 is 0, int8 1, complex64 9.
    assert scripted(torch.uint8) == "dtype number 0"
    assert scripted(torch.int8) == "dtype number 1"
    assert scripted(torch.complex64) == "dtype number 9"
    assert dtype_name(torch.uint8) == "torch.uint8"
