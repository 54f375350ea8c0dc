"""The registry and every registered model x every merge mode (eager and TorchScript)."""

import pytest
import torch
from helpers.token_batches import mixed_lengths, padded_tokens

import models
from models import SequenceClassifier, create_model, describe_models, list_models, register_model
from models.zoo import registry as registry_module

TOL = {"atol": 1e-5, "rtol": 1e-5}
VOCAB = 31
TINY = {"vocab_size": VOCAB, "embed_dim": 8, "hidden_size": 8, "num_classes": 3, "attention_size": 8}
PRESETS = list(list_models())          # every registered model, so a new preset is tested without editing this file
BUILT_IN = ["bilstm", "bigru", "birnn", "bilstm_attn", "bigru_attn", "bilstm_deep"]
MERGES = ["concat", "sum", "mul", "ave"]


def padded_batch(batch: int = 4, seq_len: int = 9) -> torch.Tensor:
    """Random ids, rows of lengths seq_len, 1, and others, right padded with 0."""
    return padded_tokens(seq_len, mixed_lengths(batch, seq_len), VOCAB)


def test_list_models_shows_the_zoo_with_descriptions():
    names = list_models()
    assert names == sorted(names)
    assert set(BUILT_IN) <= set(names)
    assert all(isinstance(name, str) for name in names)
    text = repr(names)
    for name, description in describe_models().items():
        assert description and "\n" not in description
        assert f"'{name}'" in text and description in text
    assert list_models("bilstm*") == ["bilstm", "bilstm_attn", "bilstm_deep"]
    assert list(describe_models("bigru")) == ["bigru"]
    assert models.list_models is list_models


def test_create_model_example_from_the_issue():
    model = create_model("bilstm", vocab_size=20000, num_classes=6, merge_mode="sum")
    assert isinstance(model, SequenceClassifier)
    logits = model(torch.randint(0, 20000, (2, 7)))
    assert logits.shape == (2, 6)


def test_preset_settings():
    assert create_model("bilstm").num_layers == 2 and create_model("bilstm").pooling == "last"
    assert create_model("bilstm").merge_modes == ["concat", "concat"]
    assert create_model("bilstm", **TINY).hidden_size == 8
    assert create_model("bilstm_deep", **TINY).num_layers == 4
    assert create_model("bilstm_attn", **TINY).pooling == "attention"
    assert create_model("bigru", **TINY).cell == "gru" and create_model("birnn", **TINY).cell == "rnn"
    assert create_model("birnn", cell="rnn_relu", **TINY).cell == "rnn_relu"     # both Elman RNNs are a birnn
    features = create_model("bigru_attn", input_size=5, embed_dim=8, hidden_size=8)
    assert features.vocab_size is None and features.input_size == 5
    assert features(torch.randn(2, 4, 5)).shape == (2, 2)


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown model 'bilstmm'") as info:
        create_model("bilstmm")
    for name in BUILT_IN:
        assert name in str(info.value)


@pytest.mark.parametrize(("name", "override", "hint"), [
    ("bilstm", {"cell": "gru"}, "use 'bigru'"),
    ("bigru", {"cell": "lstm"}, "use 'bilstm' or 'bilstm_deep'"),
    ("bilstm_attn", {"cell": "gru"}, "use 'bigru_attn'"),
    ("bigru_attn", {"pooling": "last"}, "use 'bigru'"),
    ("birnn", {"cell": "gru"}, "use 'bigru'"),
])
def test_a_preset_refuses_to_become_another_model(name, override, hint):
    """create_model("bilstm", cell="gru") returned a BiGRU once: a preset pins what its name says."""
    ((key, value),) = override.items()
    with pytest.raises(ValueError, match=f"{key}={value!r} would change what preset {name!r} is") as info:
        create_model(name, **override, **TINY)
    assert info.value.args[0].endswith(hint)


def test_unknown_override_is_named():
    with pytest.raises(TypeError, match="hiden_size") as info:
        create_model("bilstm", hiden_size=8)
    assert "hidden_size" in str(info.value) and "merge_mode" in str(info.value)
    with pytest.raises(ValueError, match="pooling"):
        create_model("bilstm", pooling="avg")


def test_register_model_needs_a_unique_name_and_a_docstring():
    with pytest.raises(ValueError, match="already registered"):
        register_model(models.zoo.presets.bilstm)

    def undocumented(**kwargs) -> SequenceClassifier:
        return SequenceClassifier(**kwargs)

    with pytest.raises(ValueError, match="docstring"):
        register_model(undocumented)

    def tiny_test_model(**kwargs) -> SequenceClassifier:
        """A test-only model."""
        return SequenceClassifier(**{**TINY, **kwargs})

    try:
        register_model(tiny_test_model)
        assert "tiny_test_model" in list_models()
        assert describe_models()["tiny_test_model"] == "A test-only model."
        assert create_model("tiny_test_model", num_classes=4)(padded_batch()).shape == (4, 4)
        with pytest.raises(TypeError, match="bogus"):
            create_model("tiny_test_model", bogus=1)
    finally:
        for table in (registry_module._ENTRYPOINTS, registry_module._DESCRIPTIONS, registry_module._ALLOWED):
            table.pop("tiny_test_model", None)


@pytest.mark.parametrize("merge_mode", MERGES)
@pytest.mark.parametrize("name", PRESETS)
def test_every_model_and_merge_mode(name, merge_mode):
    """Shape, finite values, gradients to every parameter, eager == TorchScript, batch of one, padding."""
    torch.manual_seed(10 * PRESETS.index(name) + MERGES.index(merge_mode))
    model = create_model(name, merge_mode=merge_mode, **TINY)
    ids = padded_batch()

    # Gradients reach every parameter (training mode, dropout of the deep preset on).
    model.train()
    logits = model(ids)
    (logits * torch.randn_like(logits)).sum().backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, pname

    model.eval()
    with torch.no_grad():
        logits = model(ids)
        assert logits.shape == (4, 3) and torch.isfinite(logits).all()
        # Eager == TorchScript, at this T and at another.
        scripted = torch.jit.script(model)
        torch.testing.assert_close(scripted(ids), logits, **TOL)
        other = padded_batch(3, 5)
        torch.testing.assert_close(scripted(other), model(other), **TOL)
        # A batch of one equals the same row in the larger batch.
        for row in (0, 1, 3):
            torch.testing.assert_close(model(ids[row:row + 1]), logits[row:row + 1], **TOL)
        # Left padding (Keras pad_sequences' default) gives the same logits as right padding.
        left = torch.stack([torch.cat([r[r == 0], r[r != 0]]) for r in ids])
        torch.testing.assert_close(model(left), logits, **TOL)
