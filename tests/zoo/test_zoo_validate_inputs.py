"""The classifier's input checks under ``validate_inputs``: token ids and ``lengths`` are range-checked in one
read back to the host per forward (one sync per batch on CUDA), none inside ``validate_inputs(False)``; the block
inside is handed lengths valid by construction and reads nothing. Reads are counted on the CPU
(``helpers.host_reads``); the one CPU-only read (``bool(valid.all())``, the shortcut for token input without
``lengths`` and without padding, skipped on CUDA) is why that case is compared as "one more with validation on"."""

import re

import pytest
import torch
from helpers.host_reads import counting_host_reads

from models import SequenceClassifier, validate_inputs
from models.keras.module import EmbeddingStage


def _forward_backward(model: SequenceClassifier, mode: bool, *args: torch.Tensor) -> list:
    with validate_inputs(mode), counting_host_reads() as reads:
        model(*args).sum().backward()
    return reads.ops


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("token_input", [True, False])
def test_a_training_forward_with_lengths_reads_once_with_validation_and_never_without(
        cell: str, token_input: bool) -> None:
    torch.manual_seed(0)
    kind = {"vocab_size": 20} if token_input else {"input_size": 5}
    model = SequenceClassifier(3, embed_dim=8, hidden_size=8, cell=cell, **kind).train()
    x = torch.randint(1, 20, (4, 6)) if token_input else torch.randn(4, 6, 5)
    lengths = torch.tensor([6, 3, 2, 1])
    assert _forward_backward(model, True, x, lengths) == ["Tensor.tolist"]
    assert _forward_backward(model, False, x, lengths) == []


def test_padded_token_ids_without_lengths_cost_one_read_more_with_validation() -> None:
    model = SequenceClassifier(3, vocab_size=20, embed_dim=8, hidden_size=8).train()
    x = torch.tensor([[0, 0, 4, 5], [3, 4, 5, 6]])
    on, off = _forward_backward(model, True, x), _forward_backward(model, False, x)
    assert on == ["Tensor.tolist"] + off


@pytest.mark.parametrize(("x", "lengths", "message"), [
    (torch.tensor([[1, 20]]), None, "x (token ids) must lie in [0, vocab_size) = [0, 20), got values from 1 to 20"),
    (torch.tensor([[-1, 2]]), None, "x (token ids) must lie in [0, vocab_size) = [0, 20), got values from -1 to 2"),
    (torch.tensor([[1, 2]]), torch.tensor([3]), "lengths must lie in [0, T] = [0, 2], got values from 3 to 3"),
    (torch.tensor([[1, 2], [3, 4]]), torch.tensor([-1, 2]),
     "lengths must lie in [0, T] = [0, 2], got values from -1 to 2"),
    # Both wrong: the ids are named first, as they come first in the call.
    (torch.tensor([[1, 25]]), torch.tensor([3]),
     "x (token ids) must lie in [0, vocab_size) = [0, 20), got values from 1 to 25"),
])
def test_bad_values_raise_the_same_clear_errors(x: torch.Tensor, lengths, message: str) -> None:  # type: ignore[no-untyped-def]
    model = SequenceClassifier(3, vocab_size=20, embed_dim=8, hidden_size=8).eval()
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        model(x, lengths)
    scripted = torch.jit.script(model)
    with validate_inputs(False), pytest.raises(torch.jit.Error, match=re.escape(message)):
        scripted(x, lengths)        # TorchScript cannot see the switch: it always checks


def test_with_validation_off_nothing_is_guaranteed_but_the_free_checks_still_run() -> None:
    model = SequenceClassifier(3, vocab_size=20, embed_dim=8, hidden_size=8).eval()
    with validate_inputs(False):
        # An out-of-range id reaches nn.Embedding, whose error names neither the argument nor the range.
        with pytest.raises(IndexError):
            model(torch.tensor([[1, 20]]))
        with pytest.raises(TypeError, match="must be an integer tensor of token ids"):
            model(torch.tensor([[1.0, 2.0]]))
        with pytest.raises(ValueError, match=r"^lengths must have shape \(B,\) = \(1,\), got \[2\]$"):
            model(torch.tensor([[1, 2]]), torch.tensor([1, 2]))


def test_the_keras_embedding_stage_follows_the_switch() -> None:
    stage = EmbeddingStage(10, 4, mask_zero=False)
    ids = torch.tensor([[1, 9, 3]])
    with counting_host_reads() as reads:
        stage(ids, None)
    assert reads.ops == ["Tensor.tolist"]
    with pytest.raises(ValueError, match=re.escape("got values from 2 to 10")):
        stage(ids + 1, None)
    with validate_inputs(False), counting_host_reads() as reads:
        stage(ids, None)
    assert reads.ops == []
