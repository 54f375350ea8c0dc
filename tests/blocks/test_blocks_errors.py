"""Bad input to the blocks fails before any compute with a message naming argument, value and expectation."""

import re

import pytest
import torch

from models import BiGRU, BiLSTM, BiRNN


@pytest.mark.parametrize(
    ("merge_mode", "message"),
    [
        ("avg", "merge_mode='avg' is not a merge mode; choose one of ['concat', 'sum', 'mul', 'ave'] or None"),
        (["sum", "concat"], "merge_mode=['sum', 'concat'] has 2 entries but num_layers=3"),
        (None, "merge_mode=None is only allowed for the last layer (layer 2)"),
        (["sum", None, "ave"], "merge_mode[1]=None is only allowed for the last layer"),
        (["sum", "ave", "max"], "merge_mode[2]='max' is not a merge mode"),
        (3, "merge_mode must be a string, None or a list of them, got int"),
    ],
)
def test_bad_merge_modes(merge_mode: object, message: str) -> None:
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        BiLSTM(4, 5, num_layers=3, merge_mode=merge_mode)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"hidden_size": 0}, "hidden_size must be a positive int, got 0"),
        ({"num_layers": 1.5}, "num_layers must be a positive int, got 1.5"),
        ({"dropout": 1.5}, "dropout must be a float in [0, 1], got 1.5"),
    ],
)
def test_bad_constructor_arguments(kwargs: dict, message: str) -> None:
    arguments = {"input_size": 4, "hidden_size": 5, "num_layers": 2, **kwargs}
    with pytest.raises(ValueError, match=re.escape(message)):
        BiGRU(**arguments)
    with pytest.raises(ValueError, match="nonlinearity must be 'tanh' or 'relu', got 'gelu'"):
        BiRNN(4, 5, nonlinearity="gelu")


BLOCK = BiLSTM(4, 5, num_layers=2, merge_mode="sum")
X = torch.randn(6, 3, 4)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: BLOCK(torch.randn(6)), ValueError,
         "input must be a 3-D tensor (T, B, input_size) or an unbatched 2-D tensor (T, input_size) with input_size=4, "
         "got a 1-D"),
        (lambda: BLOCK(torch.randn(2, 6, 3, 4)), ValueError, "got a 4-D tensor of shape [2, 6, 3, 4]"),
        (lambda: BLOCK(torch.randn(6, 3, 7)), ValueError,
         "input has 7 features (shape [6, 3, 7]) but the block was built with input_size=4"),
        (lambda: BLOCK(torch.ones(6, 3, 4, dtype=torch.long)), TypeError,
         "input must be a floating-point tensor, got dtype torch.int64"),
        (lambda: BLOCK(torch.randn(0, 3, 4)), ValueError, "input of shape [0, 3, 4] has no time steps (T = 0)"),
        (lambda: BLOCK(torch.randn(0, 4)), ValueError, "input of shape [0, 4] has no time steps (T = 0)"),
        (lambda: BLOCK(X, lengths=torch.tensor([6, 2])), ValueError,
         "lengths must have shape (B,) = (3,), got shape [2]"),
        (lambda: BLOCK(X, lengths=torch.tensor([[6, 2, 1]])), ValueError,
         "lengths must have shape (B,) = (3,), got shape [1, 3]"),
        (lambda: BLOCK(X, lengths=torch.tensor([6.0, 2.0, 1.0])), TypeError,
         "lengths must be an integer tensor (int64), got dtype torch.float32"),
        (lambda: BLOCK(X, lengths=torch.tensor([6, 0, 1])), ValueError,
         "lengths must lie in [1, T] = [1, 6], got values from 0 to 6"),
        (lambda: BLOCK(X, lengths=torch.tensor([7, 2, 1])), ValueError,
         "lengths must lie in [1, T] = [1, 6], got values from 1 to 7"),
        (lambda: BLOCK(X, hx=(torch.zeros(2, 3, 5), torch.zeros(4, 3, 5))), ValueError,
         "hx[0] must have shape (2 * num_layers, B, hidden_size) = [4, 3, 5], got [2, 3, 5]"),
        (lambda: BLOCK(X, hx=(torch.zeros(4, 3, 5), torch.zeros(4, 2, 5))), ValueError,
         "hx[1] must have shape (2 * num_layers, B, hidden_size) = [4, 3, 5], got [4, 2, 5]"),
        (lambda: BiGRU(4, 5)(X, hx=torch.zeros(2, 3, 5, dtype=torch.float64)), TypeError,
         "hx has dtype torch.float64 but input has dtype torch.float32"),
    ],
)
def test_bad_forward_input(call, error: type, message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        call()


def test_batch_first_error_names_the_batch_first_layout() -> None:
    with pytest.raises(ValueError, match=re.escape("expected (B, T, input_size)")):
        BiGRU(4, 5, batch_first=True)(torch.randn(3, 6, 2))
