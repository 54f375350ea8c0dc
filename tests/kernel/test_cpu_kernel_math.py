"""The kernel is exact where PyTorch is: its sigmoid/tanh against ATen, NaN and Inf propagation through a layer,
precision of small states, and refusal of inputs it would misread. Run on every capability the CPU has."""

from typing import Tuple

import pytest
import torch
from torch import nn

from models import BiGRU, BiLSTM
from models.blocks import cpu_kernel

BLOCKS = {"LSTM": (BiLSTM, nn.LSTM), "GRU": (BiGRU, nn.GRU)}


def special_values() -> torch.Tensor:
    """Magnitudes from 1e-30 to 200 of both signs, zeros, infinities, NaN and denormals, in an order that puts
    some of each into vector lanes and some into the scalar tail."""
    grid = torch.logspace(-30, 2.3, 4001, dtype=torch.float64)
    odd = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan"), 1e-40, -1e-40, 0.5625, -0.5625,
                        88.0, -88.0, -95.0, -104.5, 1e5, -1e5], dtype=torch.float64)
    values = torch.cat([grid, -grid, odd, odd[torch.randperm(len(odd))]])
    return values[torch.randperm(len(values))].float()


@pytest.mark.parametrize("name", ["sigmoid", "tanh"])
def test_activations_match_aten_to_float32_rounding_with_nan_and_inf(capability: str, name: str) -> None:
    x = special_values()
    got = x.clone()
    getattr(cpu_kernel._library, f"birnn_{name}_f32")(got.data_ptr(), got.numel())
    reference = getattr(torch, name)(x.double())
    assert torch.equal(got.isnan(), x.isnan())                        # NaN exactly where the input is NaN
    finite = ~x.isnan()
    assert torch.equal(got[finite & x.isinf()], getattr(torch, name)(x[finite & x.isinf()]))  # 0/1, -1/1
    normal = reference.abs() > 1.2e-38
    relative = ((got.double() - reference).abs() / reference.abs())[normal & finite]
    assert relative.max() < 3e-7, f"max relative error {relative.max():.2e}"
    tiny = ~normal & finite                                            # denormal results: absolute
    assert (got.double()[tiny] - reference[tiny]).abs().max() < 1e-44
    assert torch.equal(torch.signbit(got[x == 0]), torch.signbit(getattr(torch, name)(x[x == 0])))


def module_pair(mode: str, hidden: int, **kwargs: object) -> Tuple[nn.Module, nn.Module]:
    block_cls, reference_cls = BLOCKS[mode]
    reference = reference_cls(5, hidden, bidirectional=True, **kwargs)
    block = block_cls(5, hidden, **kwargs)
    block.load_state_dict(reference.state_dict())
    return block, reference


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("hidden", [16, 17])  # all vector lanes; a scalar tail too
def test_nan_at_one_input_step_spreads_exactly_as_in_torch(capability: str, mode: str, hidden: int) -> None:
    block, reference = module_pair(mode, hidden)
    x = torch.randn(7, 3, 5)
    x[3, 1, 2] = float("nan")
    ours, ref = block(x)[0], reference(x)[0]
    assert ref.isnan().sum() > 0
    assert torch.equal(ours.isnan(), ref.isnan())
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5, equal_nan=True)


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weight_gives_what_torch_gives(capability: str, mode: str, value: float) -> None:
    block, reference = module_pair(mode, 8)
    with torch.no_grad():
        block.weight_hh_l0[5, 2] = value
        reference.weight_hh_l0[5, 2] = value
    x = torch.randn(6, 2, 5)
    ours, ref = block(x)[0], reference(x)[0]
    assert torch.equal(ours.isnan(), ref.isnan()) and torch.equal(ours.isinf(), ref.isinf())
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-5, equal_nan=True)
    assert block(x)[0].sum().isfinite() == reference(x)[0].sum().isfinite()


@pytest.mark.parametrize("mode", ["LSTM", "GRU"])
def test_small_states_keep_float32_relative_precision(capability: str, mode: str) -> None:
    """States of ~1e-5..1e-4 (tiny weights and inputs): relative error at float32's level, not tanh's absolute
    error (2 sigmoid(2x) - 1 gave a median of 5e-4 here)."""
    block, reference = module_pair(mode, 32)
    with torch.no_grad():
        for weight in list(block.parameters()) + list(reference.parameters()):
            weight.mul_(1e-3)
    x = torch.randn(10, 4, 5) * 1e-1
    ours = block(x)[0].double()
    exact = reference.double()(x.double())[0]
    assert exact.abs().median() < 1e-3
    relative = (ours - exact).abs() / exact.abs().clamp_min(1e-30)
    assert relative.median() < 2e-7 and relative.quantile(0.99) < 2e-6, (relative.median(), relative.max())


def layer_inputs(dtype: torch.dtype = torch.float32, cell: int = 0) -> list:
    gates = (4 if cell == 0 else 3) * 3
    return [torch.randn(4, 2, 5, dtype=dtype), torch.randn(2, gates, 5), torch.randn(2, gates), torch.randn(2, gates,
                                                                                                            3),
            None, torch.randn(2, 2, 3), torch.randn(2, 2, 3), None, cell, False]


@pytest.mark.parametrize("position,bad,error,match", [
    (0, torch.randn(4, 2, 5, dtype=torch.float64), TypeError, "w_ih is torch.float32.*x is torch.float64"),
    (1, torch.randn(2, 12, 6), ValueError, r"w_ih must have shape \[2, 12, 5\]"),
    (3, torch.randn(2, 11, 3), ValueError, r"w_hh must have shape \[2, 12, 3\]"),
    (5, torch.randn(2, 3, 3), ValueError, r"h0 must have shape \[2, 2, 3\]"),
    (6, torch.randn(2, 2, 3, dtype=torch.float64), TypeError, "c0 is torch.float64"),
    (2, torch.randn(12), ValueError, r"b_ih must have shape \[2, 12\]"),
    (7, torch.tensor([4, 2], dtype=torch.int32), TypeError, "lengths must be a CPU int64"),
    (7, torch.tensor([5, 2]), ValueError, r"lengths must lie in \[0, 4\]"),
    (0, torch.randn(4, 2, 5).half(), TypeError, "x must be float32 or float64"),
])
def test_kernel_entry_refuses_what_it_would_misread(position: int, bad: torch.Tensor, error: type,
                                                    match: str) -> None:
    if not cpu_kernel.available():
        pytest.skip("CPU kernel not built")
    args = layer_inputs()
    args[position] = bad
    with pytest.raises(error, match=match):
        torch.ops.birnn_zoo.bidirectional_layer(*args)


def test_float64_input_to_a_float32_block_is_refused_not_misread() -> None:
    if not cpu_kernel.available():
        pytest.skip("CPU kernel not built")
    with cpu_kernel.forced(), pytest.raises((TypeError, ValueError, RuntimeError), match=r"float64|Double|dtype"):
        BiLSTM(5, 4)(torch.randn(6, 2, 5, dtype=torch.float64))
