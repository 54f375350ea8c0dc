"""Bad model input is named: token ids outside [0, vocab_size), non-integer ids or lengths, wrong feature size or
dtype give a ValueError/TypeError naming the argument, the range found and the range expected (issue 19)."""

import os

import pytest
import torch

from models import create_model
from models.zoo.classifier import SequenceClassifier
from models.zoo.token_ids import check_token_ids

VOCAB = 11


def token_model() -> SequenceClassifier:
    return create_model("bilstm", vocab_size=VOCAB, num_classes=3, embed_dim=4, hidden_size=4)


def test_check_token_ids_accepts_the_valid_range_and_names_the_bad_one() -> None:
    check_token_ids(torch.randint(0, VOCAB, (3, 5)), VOCAB)
    check_token_ids(torch.empty(0, 5, dtype=torch.long), VOCAB)          # nothing to check
    with pytest.raises(ValueError, match=r"ids must lie in \[0, vocab_size\) = \[0, 11\), got values from 0 to 11"):
        check_token_ids(torch.tensor([[0, 11]]), VOCAB, "ids")
    with pytest.raises(ValueError, match=r"got values from -1 to 3"):
        check_token_ids(torch.tensor([-1, 3]), VOCAB)
    with pytest.raises(TypeError, match=r"token_ids must be an integer tensor.*got dtype torch.float32"):
        check_token_ids(torch.zeros(2, 3), VOCAB)


@pytest.mark.parametrize("scripted", [False, True])
@pytest.mark.parametrize("bad", [VOCAB, VOCAB + 100, -1])
def test_a_zoo_model_names_token_ids_outside_the_vocabulary(scripted: bool, bad: int) -> None:
    model = token_model().eval()
    forward = torch.jit.script(model) if scripted else model
    ids = torch.randint(1, VOCAB, (3, 6))
    forward(ids)                                                         # the valid ids run
    ids[1, 2] = bad
    expected = (torch.jit.Error, ValueError) if scripted else ValueError
    with pytest.raises(expected, match=rf"x \(token ids\) must lie in \[0, vocab_size\) = \[0, {VOCAB}\), got "
                                       rf"values from {int(ids.min())} to {int(ids.max())}"):
        forward(ids)


def test_a_zoo_model_names_float_token_ids_and_float_lengths() -> None:
    model = token_model()
    with pytest.raises(TypeError, match=r"x \(token ids\) must be an integer tensor.*got dtype torch.float32"):
        model(torch.ones(2, 4))
    with pytest.raises(TypeError, match=r"lengths must be an integer tensor.*got dtype torch.float32"):
        model(torch.ones(2, 4, dtype=torch.long), torch.tensor([4.0, 2.0]))
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, T\] = \[0, 4\], got values from 2 to 9"):
        model(torch.ones(2, 4, dtype=torch.long), torch.tensor([9, 2]))


def test_a_feature_model_names_the_feature_size_and_dtype() -> None:
    model = create_model("bigru", input_size=5, num_classes=2, embed_dim=4, hidden_size=4)
    model(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match=r"input_size=5, got shape \[2, 3, 7\]"):
        model(torch.randn(2, 3, 7))
    with pytest.raises(TypeError, match=r"floating-point tensor \(B, T, 5\), got dtype torch.int64"):
        model(torch.ones(2, 3, 5, dtype=torch.long))
    scripted = torch.jit.script(model)
    with pytest.raises((torch.jit.Error, ValueError), match=r"input_size=5, got shape \[2, 3, 7\]"):
        scripted(torch.randn(2, 3, 7))


def test_a_from_keras_model_names_token_ids_outside_the_vocabulary(tmp_path) -> None:
    os.environ.setdefault("KERAS_BACKEND", "torch")
    keras = pytest.importorskip("keras")
    from models.keras import from_keras

    model = keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(VOCAB, 4, mask_zero=True),
                              keras.layers.Bidirectional(keras.layers.GRU(3)), keras.layers.Dense(2)])
    model.save(tmp_path / "m.keras")
    module = from_keras(tmp_path / "m.keras")
    ids = torch.randint(1, VOCAB, (2, 5))
    module(ids)
    ids[0, 0] = VOCAB + 4
    with pytest.raises(ValueError, match=rf"must lie in \[0, vocab_size\) = \[0, {VOCAB}\), got values from "
                                         rf"{int(ids.min())} to {VOCAB + 4}"):
        module(ids)
    with pytest.raises((torch.jit.Error, ValueError), match=r"must lie in \[0, vocab_size\)"):
        torch.jit.script(module)(ids)
