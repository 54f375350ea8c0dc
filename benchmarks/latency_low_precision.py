"""The int8 and bf16 variants of ``benchmarks.latency`` (issue 35): the zoo model and its recurrent encoder at a lower
precision, timed on the same requests as the float32 variants, interleaved with them.

- ``block int8`` / ``zoo int8``: ``models.quantize`` of the encoder (on the ``(1, L, E)`` features of ``block``) and
  of the model (``zoo eager``'s token ids): the kernel's fastest int8 product on this CPU (AVX-512 VNNI where
  present, AVX2 otherwise); embedding, attention and head stay float32;
- ``block bf16`` / ``zoo bf16``: the same float32 modules called under ``torch.autocast("cpu", torch.bfloat16)``:
  the kernel's bf16 path on CPUs with AVX512_BF16 (``models.blocks.cpu_kernel.bf16``), PyTorch's autocast
  elsewhere; the head's ``Linear`` runs in bf16 too;
- ``zoo int8`` / ``zoo bf16`` also get a B = 64 throughput row beside ``zoo eager``'s.

Kept apart from ``latency.py``'s float32 and export variants: that file only asks here for these callables.
"""

from typing import Any, Callable, Dict, List, Tuple

import torch
from torch import Tensor, nn

import models

PRECISIONS = ("int8", "bf16")
# --variants names -> the table's variant names (merged into benchmarks/latency.py's VARIANTS)
VARIANTS = {f"{part}-{precision}": f"{part} {precision}" for precision in PRECISIONS for part in ("block", "zoo")}
# What a lower-precision copy may differ from its float32 model by on the check request before any timing: far above
# the documented errors (int8: max 0.004-0.04 for the blocks, docs/zoo-and-deployment.md; bf16: about 1e-3,
# docs/blocks.md), far below a wrong model.
AGREEMENT = 0.1


class Bf16Autocast(nn.Module):
    """``module`` called under ``torch.autocast("cpu", dtype=torch.bfloat16)``: how a caller serves in bf16."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any) -> Any:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.module(*args)


def wanted(variants: List[str]) -> List[str]:
    """The precisions that ``--variants`` asks for, in ``PRECISIONS`` order."""
    return [p for p in PRECISIONS if {f"block-{p}", f"zoo-{p}"} & set(variants)]


def pair(precision: str, model: nn.Module, encoder: nn.Module, tokens: Tensor, features: Tensor
         ) -> Tuple[nn.Module, nn.Module, Dict[str, float]]:
    """``model`` and ``encoder`` at ``precision`` (``"int8"``: ``models.quantize`` copies; ``"bf16"``: the same
    modules under autocast), and their max abs differences from the float32 ones on one request (``tokens (1, L)``,
    ``features (1, L, E)``); raises ``AssertionError`` beyond ``AGREEMENT``."""
    if precision == "int8":
        low_model, low_encoder = models.quantize(model), models.quantize(encoder)
    elif precision == "bf16":
        low_model, low_encoder = Bf16Autocast(model), Bf16Autocast(encoder)
    else:
        raise ValueError(f"precision={precision!r}: expected one of {PRECISIONS}")
    with torch.inference_mode():
        errors = {"block": float((low_encoder(features)[0].float() - encoder(features)[0]).abs().max()),
                  "zoo": float((low_model(tokens).float() - model(tokens)).abs().max())}
    for name, error in errors.items():
        if error > AGREEMENT:
            raise AssertionError(f"the {precision} {name} differs from its float32 one by {error} (> {AGREEMENT})")
    return low_model, low_encoder, errors


def latency_variants(precision: str, low_model: nn.Module, low_encoder: nn.Module, tokens: List[Tensor],
                     features: List[Tensor]) -> Dict[str, Callable[[int], Any]]:
    """Request ``i`` -> one call of each variant at ``precision`` (no gradients, as the float32 variants)."""

    def block(i: int) -> Any:
        with torch.inference_mode():
            return low_encoder(features[i])

    def zoo(i: int) -> Any:
        with torch.inference_mode():
            return low_model(tokens[i])

    return {f"block {precision}": block, f"zoo {precision}": zoo}


def throughput_variants(precision: str, low_model: nn.Module, batches: List[Tuple[Tensor, Tensor]]
                        ) -> Dict[str, Callable[[int], Any]]:
    """Batch ``k`` (``batches[k][0]``: ``(64, longest)`` token ids, as ``zoo eager``'s) -> one call of the zoo model
    at ``precision``."""

    def zoo(k: int) -> Any:
        with torch.inference_mode():
            return low_model(batches[k][0])

    return {f"zoo {precision}": zoo}
