"""``save_pretrained`` / ``from_pretrained`` of an int8 model (``models.quantize``): ``config.json`` says
``"quantization": "int8"``, the round trip is bit for bit (int8 weights, scales, logits), and a config whose
quantization does not match its weights is refused."""

import json
from pathlib import Path

import pytest
import torch
from helpers.optional import optional_import

import models
from models.blocks.quantized import QuantizedBiRNN

_, needs_safetensors = optional_import("safetensors", "the hub extra (safetensors)")
pytestmark = needs_safetensors


def small(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return models.create_model(name, vocab_size=40, num_classes=3, embed_dim=8, hidden_size=8,
                               merge_mode=["sum", "concat"], dropout=0.1)


@pytest.mark.parametrize("name", ["bilstm", "bigru"])
def test_an_int8_model_round_trips_bit_for_bit(name: str, tmp_path: Path) -> None:
    quantized = models.quantize(small(name))
    models.save_pretrained(quantized, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["quantization"] == "int8"
    loaded = models.from_pretrained(tmp_path).model
    assert isinstance(loaded.rnn, QuantizedBiRNN) and not loaded.training
    want, got = quantized.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    for key in want:
        assert want[key].dtype == got[key].dtype and torch.equal(want[key], got[key]), key
    assert loaded.rnn.weight_hh_l0.dtype == torch.int8
    x = torch.randint(1, 40, (4, 9))
    with torch.inference_mode():
        assert torch.equal(loaded(x), quantized(x))


def test_a_float_model_says_it_is_not_quantized(tmp_path: Path) -> None:
    models.save_pretrained(small("bilstm"), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["quantization"] is None
    assert not isinstance(models.from_pretrained(tmp_path).model.rnn, QuantizedBiRNN)


@pytest.mark.parametrize(("quantized", "claim", "match"), [
    (False, "int8", r"model\.safetensors does not match"),      # float weights under an int8 claim
    (True, None, r"model\.safetensors does not match"),         # int8 weights under a float32 claim
    (False, "int4", r"quantization='int4', expected one of \(None, 'int8'\)"),
], ids=["float-as-int8", "int8-as-float", "unknown"])
def test_a_quantization_that_does_not_match_is_refused(quantized: bool, claim, match: str, tmp_path: Path) -> None:
    model = small("bilstm")
    models.save_pretrained(models.quantize(model) if quantized else model, tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization"] = claim
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=match):
        models.from_pretrained(tmp_path)


def test_an_int8_keras_text_model_serves_raw_strings_and_round_trips(tmp_path: Path) -> None:
    """An imported Keras text model (its block called through ``block.run``) quantizes like a zoo model: within the
    int8 error of its float32 probabilities (2e-3 here: LSTM int8 error is documented at ~1e-3), bit for bit through
    ``save_pretrained``."""
    pytest.importorskip("h5py", reason="Keras files need h5py (pip install -e '.[dev]')")
    from models.deploy.predictor import Predictor
    from models.keras import keras_text_predictor

    fixture = Path(__file__).resolve().parents[1] / "keras" / "fixtures" / "keras_text" / "tv_sequential.keras"
    float_predictor = keras_text_predictor(fixture)
    quantized = Predictor(models.quantize(float_predictor.model), float_predictor.preprocessing)
    assert any(isinstance(module, QuantizedBiRNN) for module in quantized.model.modules())
    texts = ["The cat sat on the mat.", "Dogs DON'T like cats!!!", "", "ünïcode wörds"]
    want = quantized(texts).probabilities
    torch.testing.assert_close(want, float_predictor(texts).probabilities, atol=2e-3, rtol=0)
    models.save_pretrained(quantized, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["quantization"] == "int8"
    assert torch.equal(models.from_pretrained(tmp_path)(texts).probabilities, want)


def test_run_is_the_float_blocks_run() -> None:
    torch.manual_seed(0)
    float_block = models.BiGRU(5, 6, num_layers=2, merge_mode="ave", batch_first=True)
    block = models.quantize(float_block)
    x, lengths = torch.randn(3, 7, 5), torch.tensor([7, 2, 5])
    out, h_n, c_n = block.run(x, lengths=lengths)
    want_out, want_h = block(x, lengths=lengths)
    assert torch.equal(out, want_out) and torch.equal(h_n, want_h) and torch.equal(c_n, h_n)
    with pytest.raises(ValueError, match=r"c0 is the LSTM's cell state"):
        block.run(x, c0=torch.zeros(4, 3, 6))
