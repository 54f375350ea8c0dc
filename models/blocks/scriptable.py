"""TorchScript twins of the blocks (see ``_BiRNNBase.__prepare_scriptable__``).

TorchScript has no keyword-only arguments and no ``PackedSequence``: ``torch.jit.script(block)`` compiles a twin
whose ``forward(input, hx, lengths)`` takes plain tensors and shares the block's ``__dict__``.
"""

from typing import Optional, Tuple

import torch
from torch import Tensor

from .base import _SCRIPTABLE, _BiRNNBase
from .modules import BiGRU, BiLSTM, BiRNN


# TorchScript twins (see _BiRNNBase.__prepare_scriptable__): the same module, forward(input, hx, lengths) on
# tensors when scripted. torch.jit.script(parent) leaves the twin in parent._modules (models.deploy.compile.script
# puts the block back); called eagerly it acts as the public block (PackedSequence included), and its repr keeps the
# public name.
class _ScriptableBiLSTM(BiLSTM):
    def forward(  # type: ignore[override]
        self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]] = None, lengths: Optional[Tensor] = None
    ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        if not torch.jit.is_scripting():
            return self._eager_forward(input, hx, lengths)
        h0: Optional[Tensor] = None
        c0: Optional[Tensor] = None
        if hx is not None:
            h0, c0 = hx
        out, h_n, c_n = self._run(input, h0, c0, lengths, self.batch_first, "hx[0]", "hx[1]")
        return out, (h_n, c_n)

    @torch.jit.unused
    def _eager_forward(
        self, input: Tensor, hx: Optional[Tuple[Tensor, Tensor]], lengths: Optional[Tensor]
    ) -> Tuple[Tensor, Tuple[Tensor, Tensor]]:
        return BiLSTM.forward(self, input, hx, lengths=lengths)  # type: ignore[return-value]

    def _get_name(self) -> str:
        return "BiLSTM"


class _OneStateTwin(_BiRNNBase):
    """The TorchScript forward of ``BiGRU`` and ``BiRNN`` (one state tensor); mixed in before the public class."""

    def forward(  # type: ignore[override]
        self, input: Tensor, hx: Optional[Tensor] = None, lengths: Optional[Tensor] = None
    ) -> Tuple[Tensor, Tensor]:
        if not torch.jit.is_scripting():
            return self._eager_forward(input, hx, lengths)
        out, h_n, _ = self._run(input, hx, None, lengths, self.batch_first, "hx", "hx")
        return out, h_n

    @torch.jit.unused
    def _eager_forward(self, input: Tensor, hx: Optional[Tensor], lengths: Optional[Tensor]) -> Tuple[Tensor, Tensor]:
        return self._public().forward(self, input, hx, lengths=lengths)  # type: ignore[return-value]

    @classmethod
    def _public(cls) -> type:
        """The public block this twin stands for (``BiGRU`` or ``BiRNN``)."""
        return next(base for base in cls.__mro__ if base in _SCRIPTABLE)

    def _get_name(self) -> str:
        return self._public().__name__


class _ScriptableBiGRU(_OneStateTwin, BiGRU):
    pass


class _ScriptableBiRNN(_OneStateTwin, BiRNN):
    pass


_SCRIPTABLE.update({BiLSTM: _ScriptableBiLSTM, BiGRU: _ScriptableBiGRU, BiRNN: _ScriptableBiRNN})
