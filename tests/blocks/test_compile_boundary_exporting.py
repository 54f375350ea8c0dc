"""``compile_boundary.exporting()``: True inside ``torch.export`` and False under ``torch.compile``, on every
supported torch. torch 2.11's Dynamo folds ``torch.compiler.is_exporting()`` to True under every
``torch.compile`` trace, which took compiled blocks off the CPU kernel (and CUDA ones off the packed path) and made
a compiled int8 block refuse to run."""

import torch
from torch import nn

from models.blocks.compile_boundary import exporting


class _Marks(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1.0 if exporting() else x


def test_eager_is_not_exporting() -> None:
    assert exporting() is False


def test_torch_compile_is_not_exporting() -> None:
    torch._dynamo.reset()
    compiled = torch.compile(_Marks(), backend="eager", fullgraph=True)
    assert torch.equal(compiled(torch.zeros(3)), torch.zeros(3))


def test_torch_export_is_exporting() -> None:
    exported = torch.export.export(_Marks(), (torch.zeros(3),))
    assert torch.equal(exported.module()(torch.zeros(3)), torch.ones(3))
