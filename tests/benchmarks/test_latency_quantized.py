"""``benchmarks/latency_quantized.py``: the int8 variants of ``benchmarks.latency`` run the quantized copies of the
model and encoder it is given, and refuse copies that disagree with their float32 models."""

import pytest
import torch

import models
from benchmarks import latency, latency_quantized


def small_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return models.SequenceClassifier(3, vocab_size=40, embed_dim=8, hidden_size=6, num_layers=2).eval()


def test_variants_run_the_int8_copies():
    model = small_model()
    encoder = next(m for m in model.modules() if isinstance(m, models.BiLSTM))
    tokens = [torch.randint(1, 40, (1, n)) for n in (5, 9)]
    features = [torch.randn(1, n, 8) for n in (5, 9)]
    quantized_model, quantized_encoder, errors = latency_quantized.quantized_pair(model, encoder, tokens[0],
                                                                                  features[0])
    assert 0 < errors["block"] < 0.02 and 0 < errors["zoo"] < 0.02      # int8, not the float32 model itself
    calls = latency_quantized.latency_variants(quantized_model, quantized_encoder, tokens, features)
    assert set(calls) == set(latency_quantized.VARIANTS.values())
    with torch.inference_mode():
        assert torch.equal(calls["block int8"](1)[0], quantized_encoder(features[1])[0])
        assert torch.equal(calls["zoo int8"](1), quantized_model(tokens[1]))
    batches = [(torch.randint(1, 40, (4, 7)), torch.randint(1, 40, (4, 10)))]
    throughput = latency_quantized.throughput_variants(quantized_model, batches)
    with torch.inference_mode():
        assert torch.equal(throughput["zoo int8"](0), quantized_model(batches[0][0]))
    assert set(latency_quantized.VARIANTS.items()) <= set(latency.VARIANTS.items())   # --variants offers them


def test_a_copy_that_disagrees_is_refused(monkeypatch):
    model = small_model()
    encoder = next(m for m in model.modules() if isinstance(m, models.BiLSTM))
    monkeypatch.setattr(latency_quantized, "AGREEMENT", 0.0)
    with pytest.raises(AssertionError, match="int8 block differs"):
        latency_quantized.quantized_pair(model, encoder, torch.randint(1, 40, (1, 5)), torch.randn(1, 5, 8))
