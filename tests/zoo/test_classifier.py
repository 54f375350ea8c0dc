"""SequenceClassifier: argument checks, pooling semantics, padding invariance, empty rows, TorchScript."""

import pytest
import torch
from helpers.token_batches import padded_tokens

from models import SequenceClassifier
from models.merge import MERGE_MODES, merge_directions
from models.zoo.classifier import CELLS, POOLINGS

TOL = {"atol": 1e-5, "rtol": 1e-5}


VOCAB = 23
SMALL = {"embed_dim": 8, "hidden_size": 8, "num_classes": 3}


def tokens(batch: int, seq_len: int, lengths, left: bool = False) -> torch.Tensor:
    """Random ids in [1, VOCAB) with each row padded (id 0) after (or before, ``left``) its length."""
    assert len(lengths) == batch
    return padded_tokens(seq_len, lengths, VOCAB, left)


def left_to_right(ids: torch.Tensor) -> torch.Tensor:
    """The same rows with their non-padding ids moved to the front."""
    out = torch.zeros_like(ids)
    for row in range(ids.shape[0]):
        kept = ids[row][ids[row] != 0]
        out[row, : kept.numel()] = kept
    return out


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"vocab_size": VOCAB, "input_size": 4}, "exactly one"),
        ({}, "exactly one"),
        ({"vocab_size": VOCAB, "cell": "lstmm"}, "cell"),
        ({"vocab_size": VOCAB, "pooling": "sum"}, "pooling"),
        ({"vocab_size": VOCAB, "merge_mode": "avg"}, "merge_mode"),
        ({"vocab_size": VOCAB, "merge_mode": [None, "sum"]}, "merge_mode"),
        ({"vocab_size": VOCAB, "dropout": 1.5}, "dropout"),
        ({"vocab_size": VOCAB, "head_dropout": -0.1}, "head_dropout"),
        ({"vocab_size": VOCAB, "hidden_size": 0}, "hidden_size"),
        ({"vocab_size": VOCAB, "padding_idx": VOCAB}, "padding_idx"),
        ({"vocab_size": 0}, "vocab_size"),
        ({"input_size": 2.5}, "input_size"),
    ],
)
def test_invalid_arguments_name_the_argument(kwargs, word):
    with pytest.raises(ValueError, match=word):
        SequenceClassifier(3, **kwargs)


def test_invalid_inputs():
    model = SequenceClassifier(vocab_size=VOCAB, **SMALL)
    with pytest.raises(ValueError, match="token input"):
        model(torch.randn(2, 5, 3))
    with pytest.raises(ValueError, match="lengths"):
        model(tokens(2, 5, [5, 5]), torch.tensor([6, 1]))
    with pytest.raises(ValueError, match="lengths"):
        model(tokens(2, 5, [5, 5]), torch.tensor([5]))
    features = SequenceClassifier(input_size=4, **SMALL)
    with pytest.raises(ValueError, match="feature input"):
        features(torch.randn(2, 5))


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("pooling", POOLINGS)
def test_padding_anywhere_gives_the_same_logits(cell, pooling):
    torch.manual_seed(0)
    model = SequenceClassifier(vocab_size=VOCAB, cell=cell, pooling=pooling, merge_mode="sum", **SMALL).eval()
    lengths = [6, 2, 9, 1]
    left = tokens(4, 9, lengths, left=True)
    right = left_to_right(left)
    middle = right.clone()
    middle[0] = torch.tensor([right[0, 0], 0, 0, *right[0, 1:6].tolist(), 0])  # padding inside the row
    expected = model(right)
    assert expected.shape == (4, 3) and torch.isfinite(expected).all()
    torch.testing.assert_close(model(left), expected, **TOL)
    torch.testing.assert_close(model(middle), expected, **TOL)
    # Explicit lengths on right padding; extra trailing padding changes nothing.
    torch.testing.assert_close(model(right, torch.tensor(lengths)), expected, **TOL)
    torch.testing.assert_close(model(torch.nn.functional.pad(right, (0, 3))), expected, **TOL)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("pooling", POOLINGS)
def test_ids_without_padding_skip_the_compaction_with_the_same_logits(monkeypatch, cell, pooling):
    """Eager on CPU, a batch without padding ids runs the block without lengths (no compaction): the logits equal
    those of the lengths path (explicit full lengths) and of TorchScript (which always compacts)."""
    from models.zoo import classifier as classifier_module

    torch.manual_seed(2)
    model = SequenceClassifier(vocab_size=VOCAB, cell=cell, pooling=pooling, merge_mode="ave", **SMALL).eval()
    full = tokens(3, 7, [7, 7, 7])
    expected = model(full, torch.tensor([7, 7, 7]))
    scripted = torch.jit.script(model)
    compactions = []
    original = classifier_module.compact_valid_steps
    monkeypatch.setattr(classifier_module, "compact_valid_steps",
                        lambda *args: compactions.append(1) or original(*args))
    got = model(full)
    assert not compactions, "an unpadded batch was compacted"
    torch.testing.assert_close(got, expected, **TOL)
    torch.testing.assert_close(scripted(full), expected, **TOL)
    model(tokens(3, 7, [7, 4, 7]))
    assert compactions, "a padded batch was not compacted"


@pytest.mark.parametrize("merge_mode", [*MERGE_MODES, None])
def test_last_pooling_is_keras_return_sequences_false(merge_mode):
    """Forward state at the true end merged with the backward state at step 0 (the merge of the last layer)."""
    torch.manual_seed(1)
    modes = ["sum", merge_mode]
    model = SequenceClassifier(vocab_size=VOCAB, merge_mode=modes, pooling="last", **SMALL).eval()
    ids = tokens(1, 7, [5])
    h = model.embed(ids[:, :5])                                   # the valid steps only
    model.rnn.merge_modes[-1] = None                              # read both directions unmerged
    out, _ = model.rnn(h)
    model.rnn.merge_modes[-1] = merge_mode
    pooled = merge_directions(out[:, -1, 0], out[:, 0, 1], merge_mode).reshape(1, -1)
    torch.testing.assert_close(model(ids), model.head(pooled), **TOL)


@pytest.mark.parametrize("pooling", ["mean", "max", "attention"])
def test_sequence_poolings_read_valid_steps_only(pooling):
    torch.manual_seed(2)
    model = SequenceClassifier(input_size=4, pooling=pooling, **SMALL).eval()
    features = torch.randn(2, 6, 4)
    padded = torch.cat([features, torch.full((2, 3, 4), float("nan"))], 1)   # garbage in the padding
    lengths = torch.tensor([6, 6])
    torch.testing.assert_close(model(padded, lengths), model(features), **TOL)
    out, _ = model.rnn(model.embed(features))
    if pooling == "mean":
        pooled = out.mean(1)
    elif pooling == "max":
        pooled = out.amax(1)
    else:
        weights = torch.softmax(model.attention.score(torch.tanh(model.attention.project(out))), 1)
        pooled = (weights * out).sum(1)
    torch.testing.assert_close(model(features), model.head(pooled), **TOL)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_all_padding_row_gives_head_bias_without_nan(pooling):
    torch.manual_seed(3)
    model = SequenceClassifier(vocab_size=VOCAB, pooling=pooling, merge_mode=["concat", None], **SMALL).eval()
    ids = tokens(3, 5, [4, 0, 5])
    logits = model(ids)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits[1], model.head.bias, **TOL)
    torch.testing.assert_close(logits[[0, 2]], model(ids[[0, 2]]), **TOL)
    # Gradients stay finite too.
    model.train()
    model(ids).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    # Feature rows with lengths 0 behave the same way.
    features = SequenceClassifier(input_size=4, pooling=pooling, **SMALL).eval()
    out = features(torch.randn(2, 5, 4), torch.tensor([0, 3]))
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out[0], features.head.bias, **TOL)


def test_feature_input_and_torchscript():
    torch.manual_seed(4)
    model = SequenceClassifier(input_size=4, cell="gru", pooling="attention", merge_mode="ave", **SMALL).eval()
    x = torch.randn(3, 7, 4)
    lengths = torch.tensor([7, 2, 5])
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), model(x), **TOL)
    torch.testing.assert_close(scripted(x, lengths), model(x, lengths), **TOL)
    torch.testing.assert_close(model(x, torch.tensor([7, 7, 7])), model(x), **TOL)
    # Right padding with lengths: row 1 alone with its 2 steps gives the same logits.
    torch.testing.assert_close(model(x, lengths)[1:2], model(x[1:2, :2]), **TOL)


def test_dropout_is_active_in_training_only():
    torch.manual_seed(5)
    model = SequenceClassifier(vocab_size=VOCAB, num_layers=3, dropout=0.5, embed_dropout=0.5, head_dropout=0.5,
                               **SMALL)
    ids = tokens(4, 6, [6, 3, 5, 2])
    assert not torch.equal(model(ids), model(ids))
    model.eval()
    torch.testing.assert_close(model(ids), model(ids), atol=0.0, rtol=0.0)


def test_repr_mentions_configuration():
    text = repr(SequenceClassifier(vocab_size=VOCAB, merge_mode=["sum", None], pooling="max", **SMALL))
    assert "pooling='max'" in text and "None" in text and "BiLSTM" in text


def test_word_dropout_zeroes_whole_steps_in_training_only():
    """Each step's embedding is kept whole (scaled by 1 / (1 - p)) or zeroed whole, at rate p; eval is untouched."""
    torch.manual_seed(6)
    p = 0.25
    model = SequenceClassifier(vocab_size=VOCAB, word_dropout=p, **SMALL)
    seen = {}
    model.rnn.register_forward_pre_hook(lambda module, args, kwargs: seen.update(x=args[0]), with_kwargs=True)
    ids = torch.randint(1, VOCAB, (64, 50))
    model(ids)
    embedded = model.embed(ids)                                                   # (B, T, E), before dropout
    zeroed = seen["x"].abs().sum(-1) == 0                                         # (B, T): whole steps zeroed
    assert abs(zeroed.float().mean().item() - p) < 0.03                           # 3,200 steps: std 0.008
    torch.testing.assert_close(seen["x"][~zeroed], embedded[~zeroed] / (1 - p), atol=1e-6, rtol=1e-6)
    model.eval()
    plain = SequenceClassifier(vocab_size=VOCAB, **SMALL).eval()
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(ids), plain(ids), atol=0.0, rtol=0.0)
    unhooked = SequenceClassifier(vocab_size=VOCAB, word_dropout=p, **SMALL).eval()        # hooks do not script
    unhooked.load_state_dict(model.state_dict())
    torch.testing.assert_close(torch.jit.script(unhooked)(ids), plain(ids), **TOL)
    for bad in (1.0, -0.1, True, "0.1"):
        with pytest.raises(ValueError, match="word_dropout"):
            SequenceClassifier(vocab_size=VOCAB, word_dropout=bad, **SMALL)
