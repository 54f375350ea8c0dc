"""The int8 variants of ``benchmarks.latency`` (issue 35): the zoo model and its recurrent encoder after
``models.quantize``, timed on the same requests as the float32 variants, interleaved with them.

- ``block int8``: ``models.quantize(encoder)`` on the ``(1, L, E)`` features of ``block`` (the kernel's fastest
  int8 product on this CPU: AVX-512 VNNI where present, AVX2 otherwise);
- ``zoo int8``: ``models.quantize(model)(token_ids)`` (the encoder int8; embedding, attention and head float32), and
  its B = 64 throughput beside ``zoo eager``'s.

Kept apart from ``latency.py``'s float32 and export variants: that file only asks here for these callables.
"""

from typing import Any, Callable, Dict, List, Tuple

import torch
from torch import Tensor, nn

import models

# --variants names -> the table's variant names (merged into benchmarks/latency.py's VARIANTS)
VARIANTS = {"block-int8": "block int8", "zoo-int8": "zoo int8"}
# What an int8 copy may differ from its float32 model by on the check request before any timing: far above the
# documented int8 error (docs/zoo-and-deployment.md, max 0.004-0.04 for the blocks), far below a wrong model.
AGREEMENT = 0.1


def quantized_pair(model: nn.Module, encoder: nn.Module, tokens: Tensor, features: Tensor
                   ) -> Tuple[nn.Module, nn.Module, Dict[str, float]]:
    """``models.quantize`` of ``model`` and of ``encoder``, and their max abs differences from the float32 ones on
    one request (``tokens (1, L)``, ``features (1, L, E)``); raises ``AssertionError`` beyond ``AGREEMENT``."""
    quantized_model, quantized_encoder = models.quantize(model), models.quantize(encoder)
    with torch.inference_mode():
        errors = {"block": float((quantized_encoder(features)[0] - encoder(features)[0]).abs().max()),
                  "zoo": float((quantized_model(tokens) - model(tokens)).abs().max())}
    for name, error in errors.items():
        if error > AGREEMENT:
            raise AssertionError(f"the int8 {name} differs from its float32 one by {error} (> {AGREEMENT})")
    return quantized_model, quantized_encoder, errors


def latency_variants(quantized_model: nn.Module, quantized_encoder: nn.Module, tokens: List[Tensor],
                     features: List[Tensor]) -> Dict[str, Callable[[int], Any]]:
    """Request ``i`` -> one call of each int8 variant (no gradients, as the float32 variants)."""

    def block(i: int) -> Any:
        with torch.inference_mode():
            return quantized_encoder(features[i])

    def zoo(i: int) -> Any:
        with torch.inference_mode():
            return quantized_model(tokens[i])

    return {"block int8": block, "zoo int8": zoo}


def throughput_variants(quantized_model: nn.Module, batches: List[Tuple[Tensor, Tensor]]
                        ) -> Dict[str, Callable[[int], Any]]:
    """Batch ``k`` (``batches[k][0]``: ``(64, longest)`` token ids, as ``zoo eager``'s) -> one call of ``zoo int8``."""

    def zoo(k: int) -> Any:
        with torch.inference_mode():
            return quantized_model(batches[k][0])

    return {"zoo int8": zoo}
