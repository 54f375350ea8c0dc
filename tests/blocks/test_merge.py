"""``models/merge.py`` on its own: each merge formula against its definition, bit for bit, on tensors whose
directions differ everywhere; the layout of ``None`` and ``concat``; the expansion of ``merge_mode`` and each
error message word for word (issue 37: every mutant of this module is killed by these tests)."""

import re

import pytest
import torch

from models.merge import MERGE_MODES, merge_directions, merge_stacked, merged_size, resolve_merge_modes

EXACT = {"rtol": 0, "atol": 0}
CHOICES = "['concat', 'sum', 'mul', 'ave']"


def directions(*leading: int, hidden: int = 3) -> tuple:
    """Two direction outputs ``(..., H)`` with no value in common (so no formula can confuse them)."""
    generator = torch.Generator().manual_seed(0)
    forward = torch.rand(*leading, hidden, generator=generator) + 1.0          # in [1, 2)
    backward = -torch.rand(*leading, hidden, generator=generator) - 3.0        # in (-4, -3]
    return forward, backward


def test_the_modes_in_order() -> None:
    assert MERGE_MODES == ("concat", "sum", "mul", "ave")


@pytest.mark.parametrize("leading", [(), (5,), (4, 2), (3, 2, 2)])
def test_each_formula_on_any_rank(leading: tuple) -> None:
    forward, backward = directions(*leading)
    torch.testing.assert_close(merge_directions(forward, backward, "sum"), forward + backward, **EXACT)
    torch.testing.assert_close(merge_directions(forward, backward, "mul"), forward * backward, **EXACT)
    torch.testing.assert_close(merge_directions(forward, backward, "ave"), (forward + backward) * 0.5, **EXACT)
    both = merge_directions(forward, backward, "concat")
    assert both.shape == (*leading, 6)
    torch.testing.assert_close(both[..., :3], forward, **EXACT)
    torch.testing.assert_close(both[..., 3:], backward, **EXACT)
    stacked = merge_directions(forward, backward, None)
    assert stacked.shape == (*leading, 2, 3)
    torch.testing.assert_close(stacked[..., 0, :], forward, **EXACT)
    torch.testing.assert_close(stacked[..., 1, :], backward, **EXACT)


@pytest.mark.parametrize("mode", ["max", "", "Concat", "none"])
def test_an_unknown_mode_is_refused_naming_it(mode: str) -> None:
    forward, backward = directions(2)
    message = "merge mode must be one of 'concat', 'sum', 'mul', 'ave' or None, got " + mode
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        merge_directions(forward, backward, mode)
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        merge_stacked(torch.cat([forward, backward], -1), mode, 3)


@pytest.mark.parametrize("leading", [(), (5,), (4, 2)])
@pytest.mark.parametrize("mode", ["sum", "mul", "ave", None])
def test_a_stacked_output_merges_like_its_two_halves(leading: tuple, mode: object) -> None:
    forward, backward = directions(*leading)
    both = torch.cat([forward, backward], -1)
    torch.testing.assert_close(merge_stacked(both, mode, 3), merge_directions(forward, backward, mode), **EXACT)


def test_a_stacked_concat_output_is_handed_back_as_it_is() -> None:
    both = torch.cat(directions(4, 2), -1)
    assert merge_stacked(both, "concat", 3) is both


def test_a_stacked_none_output_is_a_view() -> None:
    both = torch.cat(directions(4, 2), -1)
    stacked = merge_stacked(both, None, 3)
    assert stacked.shape == (4, 2, 2, 3) and stacked.data_ptr() == both.data_ptr()


@pytest.mark.parametrize(("mode", "size"), [("concat", 14), (None, 14), ("sum", 7), ("mul", 7), ("ave", 7)])
def test_the_merged_size(mode: object, size: int) -> None:
    assert merged_size(mode, 7) == size
    forward, backward = directions(2, hidden=7)
    assert merge_directions(forward, backward, mode).flatten(1).shape[-1] == size


@pytest.mark.parametrize(
    ("merge_mode", "layers", "expanded"),
    [
        ("sum", 3, ["sum", "sum", "sum"]),
        ("concat", 1, ["concat"]),
        (None, 1, [None]),
        (["mul", "ave", None], 3, ["mul", "ave", None]),
        (("sum", "concat"), 2, ["sum", "concat"]),
    ],
)
def test_one_mode_or_one_per_layer_expands_to_a_list(merge_mode: object, layers: int, expanded: list) -> None:
    modes = resolve_merge_modes(merge_mode, layers)  # type: ignore[arg-type]
    assert modes == expanded and isinstance(modes, list)


def test_any_iterable_of_modes_is_a_list_of_modes() -> None:
    assert resolve_merge_modes(iter(["ave", "mul"]), 2) == ["ave", "mul"]  # type: ignore[arg-type]
    assert resolve_merge_modes((m for m in ["sum"]), 1) == ["sum"]  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("merge_mode", "layers", "error", "message"),
    [
        ("avg", 2, ValueError, f"merge_mode='avg' is not a merge mode; choose one of {CHOICES} or None"),
        (["sum", 3], 2, ValueError, f"merge_mode[1]=3 is not a merge mode; choose one of {CHOICES} or None"),
        (["sum", "concat"], 3, ValueError,
         f"merge_mode=['sum', 'concat'] has 2 entries but num_layers=3; give one mode per layer or a single mode "
         f"from {CHOICES}"),
        (("sum", "concat", "ave"), 2, ValueError,
         f"merge_mode=['sum', 'concat', 'ave'] has 3 entries but num_layers=2; give one mode per layer or a single "
         f"mode from {CHOICES}"),
        (None, 3, ValueError,
         f"merge_mode=None is only allowed for the last layer (layer 2); layer 0 feeds the next layer, so choose "
         f"one of {CHOICES}"),
        (["sum", None, "ave"], 3, ValueError,
         f"merge_mode[1]=None is only allowed for the last layer (layer 2); layer 1 feeds the next layer, so "
         f"choose one of {CHOICES}"),
        (3, 2, TypeError, "merge_mode must be a string, None or a list of them, got int: 3"),
        (2.5, 1, TypeError, "merge_mode must be a string, None or a list of them, got float: 2.5"),
    ],
)
def test_bad_merge_modes_word_for_word(merge_mode: object, layers: int, error: type, message: str) -> None:
    with pytest.raises(error, match="^" + re.escape(message) + "$"):
        resolve_merge_modes(merge_mode, layers)  # type: ignore[arg-type]
