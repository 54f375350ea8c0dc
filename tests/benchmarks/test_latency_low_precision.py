"""``benchmarks/latency_low_precision.py``: the int8 and bf16 variants of ``benchmarks.latency`` run the quantized
copies (int8) or the autocast-wrapped modules (bf16) of the model and encoder they are given, and refuse copies that
disagree with their float32 models."""

import pytest
import torch

import models
from benchmarks import latency, latency_low_precision


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.SequenceClassifier(3, vocab_size=40, embed_dim=8, hidden_size=6, num_layers=2).eval()


def test_variants_run_the_int8_copies():
    model = small_model()
    encoder = next(m for m in model.modules() if isinstance(m, models.BiLSTM))
    tokens = [torch.randint(1, 40, (1, n)) for n in (5, 9)]
    features = [torch.randn(1, n, 8) for n in (5, 9)]
    quantized_model, quantized_encoder, errors = latency_low_precision.pair("int8", model, encoder, tokens[0],
                                                                            features[0])
    assert 0 < errors["block"] < 0.02 and 0 < errors["zoo"] < 0.02      # int8, not the float32 model itself
    calls = latency_low_precision.latency_variants("int8", quantized_model, quantized_encoder, tokens, features)
    assert set(calls) == {"block int8", "zoo int8"}
    with torch.inference_mode():
        assert torch.equal(calls["block int8"](1)[0], quantized_encoder(features[1])[0])
        assert torch.equal(calls["zoo int8"](1), quantized_model(tokens[1]))
    batches = [(torch.randint(1, 40, (4, 7)), torch.randint(1, 40, (4, 10)))]
    throughput = latency_low_precision.throughput_variants("int8", quantized_model, batches)
    with torch.inference_mode():
        assert torch.equal(throughput["zoo int8"](0), quantized_model(batches[0][0]))
    assert set(latency_low_precision.VARIANTS.items()) <= set(latency.VARIANTS.items())   # --variants offers them


def test_a_copy_that_disagrees_is_refused(monkeypatch):
    model = small_model()
    encoder = next(m for m in model.modules() if isinstance(m, models.BiLSTM))
    monkeypatch.setattr(latency_low_precision, "AGREEMENT", 0.0)
    for precision in latency_low_precision.PRECISIONS:
        with pytest.raises(AssertionError, match=f"{precision} block differs"):
            latency_low_precision.pair(precision, model, encoder, torch.randint(1, 40, (1, 5)), torch.randn(1, 5, 8))


def test_bf16_variants_run_the_modules_under_autocast() -> None:
    """The bf16 variants are the float32 modules under bf16 autocast: their outputs are the autocast outputs (not the
    float32 ones: they differ, within bf16 rounding)."""
    model = small_model()
    encoder = next(m for m in model.modules() if isinstance(m, models.BiLSTM))
    tokens = [torch.randint(1, 40, (1, n)) for n in (5, 9)]
    features = [torch.randn(1, n, 8) for n in (5, 9)]
    low_model, low_encoder, errors = latency_low_precision.pair("bf16", model, encoder, tokens[0], features[0])
    assert 0 < errors["block"] < 0.05 and 0 < errors["zoo"] < 0.05
    calls = latency_low_precision.latency_variants("bf16", low_model, low_encoder, tokens, features)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        want_block, want_zoo = encoder(features[1])[0], model(tokens[1])
    with torch.inference_mode():
        assert torch.equal(calls["block bf16"](1)[0], want_block)
        assert torch.equal(calls["zoo bf16"](1), want_zoo)
        assert calls["zoo bf16"](1).dtype == torch.bfloat16           # the head ran under autocast
    assert latency_low_precision.wanted(["block", "zoo-bf16"]) == ["bf16"]
    assert latency_low_precision.wanted(["block-int8", "block-bf16"]) == ["int8", "bf16"]
    with pytest.raises(ValueError, match="precision='fp8'"):
        latency_low_precision.pair("fp8", model, encoder, tokens[0], features[0])
