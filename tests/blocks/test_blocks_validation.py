"""``models/blocks/validation.py`` on its own: each check's boundary (the last value accepted, the first refused)
and each message word for word, so a changed bound, a dropped condition or a garbled message fails here
(issue 37's mutation testing). The blocks' own error tests (``test_blocks_errors.py``) check the same messages
through ``forward``."""

import re

import pytest
import torch

from models.blocks.validation import (
    check_hidden,
    check_input,
    check_lengths,
    check_not_lengths,
    check_weights,
    dtype_name,
)


def raises(error: type, message: str):  # type: ignore[no-untyped-def]
    return pytest.raises(error, match="^" + re.escape(message) + "$")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.int64, torch.bool])
def test_a_dtype_is_named_as_torch_names_it(dtype: torch.dtype) -> None:
    assert dtype_name(dtype) == str(dtype)


@pytest.mark.parametrize("batch_first", [False, True])
@pytest.mark.parametrize("shape", [(1, 1, 4), (3, 2, 4), (1, 4), (5, 4), (2, 0, 4)])
def test_good_inputs_pass(shape: tuple, batch_first: bool) -> None:
    if batch_first and len(shape) == 3:
        shape = (shape[1], shape[0], 4)                 # (B, T, F); B = 0 is an empty batch
    check_input(torch.zeros(shape), 4, batch_first)


@pytest.mark.parametrize(("shape", "batch_first", "message"), [
    ((4,), False, "input must be a 3-D tensor (T, B, input_size) or an unbatched 2-D tensor (T, input_size) with "
                  "input_size=4, got a 1-D tensor of shape [4]"),
    ((1, 2, 3, 4), True, "input must be a 3-D tensor (B, T, input_size) or an unbatched 2-D tensor (T, input_size) "
                         "with input_size=4, got a 4-D tensor of shape [1, 2, 3, 4]"),
    ((2, 3, 5), False, "input has 5 features (shape [2, 3, 5]) but the block was built with input_size=4; expected "
                       "(T, B, input_size) or (T, input_size)"),
    ((2, 3, 3), True, "input has 3 features (shape [2, 3, 3]) but the block was built with input_size=4; expected "
                      "(B, T, input_size) or (T, input_size)"),
    ((0, 3, 4), False, "input of shape [0, 3, 4] has no time steps (T = 0); expected (T, B, input_size) with T >= 1 "
                       "(nn.LSTM refuses T = 0 too)"),
    ((3, 0, 4), True, "input of shape [3, 0, 4] has no time steps (T = 0); expected (B, T, input_size) with T >= 1 "
                      "(nn.LSTM refuses T = 0 too)"),
    ((0, 4), True, "input of shape [0, 4] has no time steps (T = 0); expected (B, T, input_size) with T >= 1 "
                   "(nn.LSTM refuses T = 0 too)"),
])
def test_bad_input_shapes_word_for_word(shape: tuple, batch_first: bool, message: str) -> None:
    with raises(ValueError, message):
        check_input(torch.zeros(shape), 4, batch_first)


def test_an_integer_input_is_a_type_error() -> None:
    with raises(TypeError, "input must be a floating-point tensor, got dtype torch.int32"):
        check_input(torch.zeros(2, 3, 4, dtype=torch.int32), 4, False)


def test_a_batch_first_input_with_an_empty_batch_passes() -> None:
    check_input(torch.zeros(0, 3, 4), 4, True)          # B = 0 (batch first), T = 3
    with raises(ValueError, "input of shape [0, 3, 4] has no time steps (T = 0); expected (T, B, input_size) with "
                            "T >= 1 (nn.LSTM refuses T = 0 too)"):
        check_input(torch.zeros(0, 3, 4), 4, False)


def test_weights_of_another_dtype_are_refused_naming_both() -> None:
    check_weights(torch.zeros(2, 3), torch.zeros(4, 3))
    with raises(ValueError, "input dtype (torch.float64) does not match the block's weight dtype (torch.float32); "
                            "convert the input, input.to(torch.float32), or the block, block.to(torch.float64)"):
        check_weights(torch.zeros(2, 3, dtype=torch.float64), torch.zeros(4, 3))


def test_weights_on_another_device_are_refused_naming_both() -> None:
    with raises(ValueError, "input is on device meta but the block's weights are on cpu; move one of them "
                            "(input.to(cpu) or block.to(meta))"):
        check_weights(torch.zeros(2, 3, device="meta"), torch.zeros(4, 3))


@pytest.mark.parametrize("state", [None, torch.zeros(3), torch.zeros(2, 3, dtype=torch.long),
                                   torch.zeros(3, dtype=torch.complex64), torch.zeros(4, 3, 2)])
def test_states_that_cannot_be_lengths_pass(state: object) -> None:
    check_not_lengths(state, "hx")  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_a_one_d_integer_state_is_taken_for_lengths(dtype: torch.dtype) -> None:
    with raises(TypeError, f"hx[0] got a 1-D integer tensor (dtype {dtype}, shape [3]), which looks like lengths: the "
                           "second positional argument is hx, as in nn.LSTM/nn.GRU/nn.RNN; pass lengths by keyword, "
                           "block(input, lengths=lengths)"):
        check_not_lengths(torch.ones(3, dtype=dtype), "hx[0]")


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16, torch.uint8])
def test_lengths_at_both_bounds_pass_as_int64(dtype: torch.dtype) -> None:
    lengths = torch.tensor([1, 5, 3], dtype=dtype)
    checked = check_lengths(lengths, 3, 5)
    assert checked.dtype == torch.int64 and checked.tolist() == [1, 5, 3]


def test_lengths_of_an_empty_batch_pass() -> None:
    assert check_lengths(torch.zeros(0, dtype=torch.long), 0, 4).shape == (0,)


def test_lengths_on_the_meta_device_are_not_read() -> None:
    assert check_lengths(torch.zeros(3, dtype=torch.long, device="meta"), 3, 4).device.type == "meta"


@pytest.mark.parametrize(("lengths", "message"), [
    ([1, 6, 2], "lengths must lie in [1, T] = [1, 5], got values from 1 to 6"),
    ([0, 5, 2], "lengths must lie in [1, T] = [1, 5], got values from 0 to 5"),
    ([3, -1, 9], "lengths must lie in [1, T] = [1, 5], got values from -1 to 9"),
])
def test_lengths_outside_one_to_t_are_refused(lengths: list, message: str) -> None:
    with raises(ValueError, message):
        check_lengths(torch.tensor(lengths), 3, 5)


@pytest.mark.parametrize(("shape", "message"), [
    ((2,), "lengths must have shape (B,) = (3,), got shape [2]"),
    ((1, 3), "lengths must have shape (B,) = (3,), got shape [1, 3]"),
    ((), "lengths must have shape (B,) = (3,), got shape []"),
])
def test_lengths_of_another_shape_are_refused(shape: tuple, message: str) -> None:
    with raises(ValueError, message):
        check_lengths(torch.ones(shape, dtype=torch.long), 3, 5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.complex64, torch.bool])
def test_lengths_that_are_not_integers_are_refused(dtype: torch.dtype) -> None:
    with raises(TypeError, f"lengths must be an integer tensor (int64), got dtype {dtype}"):
        check_lengths(torch.ones(3, dtype=dtype), 3, 5)


def test_a_state_of_the_right_shape_dtype_and_device_passes() -> None:
    check_hidden(torch.zeros(4, 3, 5), [4, 3, 5], "h0", torch.zeros(6, 3, 2))


@pytest.mark.parametrize(("shape", "expected", "message"), [
    ((4, 2, 5), [4, 3, 5], "h0 must have shape (2 * num_layers, B, hidden_size) = [4, 3, 5], got [4, 2, 5]"),
    ((4, 5, 1), [4, 5], "h0 must have shape (2 * num_layers, hidden_size) for unbatched input = [4, 5], got [4, 5, 1]"),
])
def test_a_state_of_another_shape_is_refused(shape: tuple, expected: list, message: str) -> None:
    with raises(ValueError, message):
        check_hidden(torch.zeros(shape), expected, "h0", torch.zeros(6, 3, 2))


def test_a_state_of_another_dtype_or_device_is_refused() -> None:
    with raises(TypeError, "c0 has dtype torch.float64 but input has dtype torch.float32"):
        check_hidden(torch.zeros(2, 3, 5, dtype=torch.float64), [2, 3, 5], "c0", torch.zeros(6, 3, 2))
    with raises(ValueError, "c0 is on device meta but input is on device cpu"):
        check_hidden(torch.zeros(2, 3, 5, device="meta"), [2, 3, 5], "c0", torch.zeros(6, 3, 2))


def test_under_torchscript_each_dtype_is_named_as_in_eager_code() -> None:
    """TorchScript holds a dtype as a number: the scripted checks name each dtype through their own table."""
    scripted = torch.jit.script(dtype_name)
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16, torch.int64, torch.int32, torch.bool):
        assert scripted(dtype) == str(dtype)
    assert scripted(torch.uint8).startswith("dtype number ")


@pytest.mark.parametrize(("length", "low", "high"), [(0, 0, 0), (6, 6, 6)])
def test_the_length_of_a_single_sequence_is_checked_too(length: int, low: int, high: int) -> None:
    with raises(ValueError, f"lengths must lie in [1, T] = [1, 5], got values from {low} to {high}"):
        check_lengths(torch.tensor([length]), 1, 5)
