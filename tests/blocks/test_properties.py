"""Invariants that hold for every input, checked on inputs hypothesis draws (issue 37): ``concat`` is ``nn.LSTM``;
``sum`` is the sum of a one-layer ``concat``'s two halves and ``ave`` half of ``sum``; with ``lengths`` the valid
steps do not depend on what the padding holds. A few examples in the default suite, more under ``-m slow``."""

import pytest
import torch
from helpers.optional import optional_import
from torch import nn

hypothesis, needs_hypothesis = optional_import("hypothesis",
                                               "the property tests need hypothesis (pip install -e '.[dev]')")
st, _ = optional_import("hypothesis.strategies", "the property tests need hypothesis (pip install -e '.[dev]')")
pytestmark = needs_hypothesis
given, settings = hypothesis.given, hypothesis.settings

from models import BiGRU, BiLSTM  # noqa: E402
from models.blocks import cpu_kernel  # noqa: E402

TOL = {"atol": 2e-5, "rtol": 2e-5}
FAST = settings(max_examples=10, deadline=None, derandomize=True)
SLOW = settings(max_examples=200, deadline=None)


@st.composite
def shapes(draw: st.DrawFn) -> dict:
    """A block's sizes and an input: T, B, F, H, layers, a seed for the values, batch_first, the CPU path."""
    return {"steps": draw(st.integers(1, 7)), "batch": draw(st.integers(1, 5)), "features": draw(st.integers(1, 6)),
            "hidden": draw(st.integers(1, 6)), "layers": draw(st.integers(1, 3)), "seed": draw(st.integers(0, 2**31)),
            "batch_first": draw(st.booleans()), "kernel": draw(st.booleans()), "gru": draw(st.booleans())}


def path(kernel: bool):
    return cpu_kernel.forced() if kernel and cpu_kernel.available() else cpu_kernel.disabled()


def block_and_input(s: dict, mode: object, layers: int) -> tuple:
    torch.manual_seed(s["seed"])
    block = (BiGRU if s["gru"] else BiLSTM)(s["features"], s["hidden"], num_layers=layers, merge_mode=mode,
                                            batch_first=s["batch_first"])
    size = (s["batch"], s["steps"]) if s["batch_first"] else (s["steps"], s["batch"])
    return block, torch.randn(*size, s["features"])


def check_concat_is_the_torch_module(s: dict) -> None:
    block, x = block_and_input(s, "concat", s["layers"])
    reference = (nn.GRU if s["gru"] else nn.LSTM)(s["features"], s["hidden"], num_layers=s["layers"],
                                                  bidirectional=True, batch_first=s["batch_first"])
    reference.load_state_dict(block.state_dict())
    with path(s["kernel"]), torch.no_grad():
        ours, theirs = block(x), reference(x)
    torch.testing.assert_close(ours[0], theirs[0], **TOL)
    for a, b in zip(ours[1] if not s["gru"] else (ours[1],), theirs[1] if not s["gru"] else (theirs[1],),
                    strict=True):
        torch.testing.assert_close(a, b, **TOL)


def check_sum_and_ave_are_the_halves_of_concat(s: dict) -> None:
    concat, x = block_and_input(s, "concat", 1)
    summed, _ = block_and_input(s, "sum", 1)
    averaged, _ = block_and_input(s, "ave", 1)
    summed.load_state_dict(concat.state_dict())
    averaged.load_state_dict(concat.state_dict())
    with path(s["kernel"]), torch.no_grad():
        both, state = concat(x)
        total, total_state = summed(x)
        mean, _ = averaged(x)
    h = s["hidden"]
    torch.testing.assert_close(total, both[..., :h] + both[..., h:], **TOL)
    torch.testing.assert_close(mean, total / 2, **TOL)
    torch.testing.assert_close(total_state[0] if not s["gru"] else total_state, state[0] if not s["gru"] else state)


def check_valid_steps_ignore_the_padding(s: dict, mode: str, lengths_seed: int) -> None:
    block, x = block_and_input(s, mode, s["layers"])
    generator = torch.Generator().manual_seed(lengths_seed)
    lengths = torch.randint(1, s["steps"] + 1, (s["batch"],), generator=generator)
    steps = torch.arange(s["steps"]).view(*([1, -1] if s["batch_first"] else [-1, 1]))
    valid = (steps < lengths.view(*([-1, 1] if s["batch_first"] else [1, -1]))).unsqueeze(-1)
    other = torch.where(valid, x, torch.randn(x.shape, generator=generator) * 100)
    with path(s["kernel"]), torch.no_grad():
        a, state_a = block(x, lengths=lengths)
        b, state_b = block(other, lengths=lengths)
    torch.testing.assert_close(a * valid, b * valid, **TOL)
    for u, v in zip(state_a if not s["gru"] else (state_a,), state_b if not s["gru"] else (state_b,), strict=True):
        torch.testing.assert_close(u, v, **TOL)


@FAST
@given(shapes())
def test_concat_equals_the_torch_module(s: dict) -> None:
    check_concat_is_the_torch_module(s)


@FAST
@given(shapes())
def test_sum_is_the_sum_of_a_one_layer_concats_halves_and_ave_half_of_it(s: dict) -> None:
    check_sum_and_ave_are_the_halves_of_concat(s)


@FAST
@given(shapes(), st.sampled_from(["concat", "sum", "mul", "ave"]), st.integers(0, 2**31))
def test_outputs_at_valid_steps_do_not_depend_on_the_padding(s: dict, mode: str, lengths_seed: int) -> None:
    check_valid_steps_ignore_the_padding(s, mode, lengths_seed)


@pytest.mark.slow
@SLOW
@given(shapes())
def test_concat_equals_the_torch_module_many_examples(s: dict) -> None:
    check_concat_is_the_torch_module(s)


@pytest.mark.slow
@SLOW
@given(shapes())
def test_sum_and_ave_many_examples(s: dict) -> None:
    check_sum_and_ave_are_the_halves_of_concat(s)


@pytest.mark.slow
@SLOW
@given(shapes(), st.sampled_from(["concat", "sum", "mul", "ave"]), st.integers(0, 2**31))
def test_valid_steps_many_examples(s: dict, mode: str, lengths_seed: int) -> None:
    check_valid_steps_ignore_the_padding(s, mode, lengths_seed)


@FAST
@given(st.lists(st.integers(1, 4), min_size=1, max_size=3), st.integers(1, 5))
def test_merging_two_directions_of_any_rank(leading: list, hidden: int) -> None:
    """``merge_directions`` on ``(..., H)`` of any rank: None stacks on axis -2, concat on the last axis; and
    ``merge_stacked`` hands a concat output back as it is (no copy)."""
    from models.merge import merge_directions, merge_stacked

    forward, backward = torch.randn(*leading, hidden), torch.randn(*leading, hidden)
    stacked = merge_directions(forward, backward, None)
    assert stacked.shape == (*leading, 2, hidden)
    torch.testing.assert_close(stacked[..., 0, :], forward, rtol=0, atol=0)
    torch.testing.assert_close(merge_directions(forward, backward, "concat"), torch.cat([forward, backward], -1))
    both = torch.cat([forward, backward], -1)
    assert merge_stacked(both, "concat", hidden) is both
    torch.testing.assert_close(merge_stacked(both, None, hidden), stacked, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"^merge mode must be one of 'concat', 'sum', 'mul', 'ave' or None, got max$"):
        merge_directions(forward, backward, "max")
