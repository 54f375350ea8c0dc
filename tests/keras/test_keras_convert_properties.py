"""The Keras conversion (``models/keras/convert.py``) is the inverse of a reference export (issue 37), for every
block hypothesis draws: cell (LSTM, GRU with ``reset_after`` true and false, SimpleRNN with tanh and relu), sizes,
layers, a merge mode per layer, ``bias``, and the group names. The export is written here from Keras's documented
layout, independently of the importer: per direction ``kernel (in, G*H)``, ``recurrent_kernel (H, G*H)`` and
``bias``; LSTM gates ``i, f, c, o`` (PyTorch's order), GRU gates ``z, r, h`` (PyTorch's ``r, z, n`` reordered),
a ``reset_after`` GRU's bias ``(2, 3H)`` (input row, recurrent row), every other cell's one bias ``(G*H,)``; in
a ``.weights.h5`` file at ``layers/<name>/{forward,backward}_layer/cell/vars/{0,1,2}``. Loading that file back
must give every parameter bit for bit. Keras holds one bias where PyTorch holds two (except the reset_after GRU):
the block's ``bias_hh`` is exported added to ``bias_ih`` and comes back as zero, with ``bias_ih`` that sum.
A few examples in the default suite, more under ``-m slow``."""

import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("h5py", reason="the Keras conversion reads HDF5 files (pip install -e '.[dev]')")
pytest.importorskip("hypothesis", reason="the property tests need hypothesis (pip install -e '.[dev]')")
import h5py
from hypothesis import given, settings
from hypothesis import strategies as st

from models import BiGRU, BiLSTM, BiRNN
from models.keras import load_keras_weights

FAST = settings(max_examples=12, deadline=None, derandomize=True)
SLOW = settings(max_examples=150, deadline=None)
CELLS = ["LSTM", "GRU", "GRU_reset_before", "SimpleRNN_tanh", "SimpleRNN_relu"]


def build(cell: str, features: int, hidden: int, layers: int, modes: list, bias: bool) -> torch.nn.Module:
    kwargs = {"num_layers": layers, "merge_mode": modes, "bias": bias}
    if cell == "LSTM":
        return BiLSTM(features, hidden, **kwargs)
    if cell.startswith("GRU"):
        return BiGRU(features, hidden, reset_after=cell == "GRU", **kwargs)
    return BiRNN(features, hidden, nonlinearity=cell.split("_")[1], **kwargs)


def z_r_h(torch_rows: np.ndarray, hidden: int) -> np.ndarray:
    """PyTorch's GRU blocks ``r, z, n`` on axis 0 -> Keras's ``z, r, h``."""
    r, z, n = torch_rows[:hidden], torch_rows[hidden:2 * hidden], torch_rows[2 * hidden:]
    return np.concatenate([z, r, n], 0)


def keras_direction(block: torch.nn.Module, cell: str, layer: int, suffix: str) -> list:
    """One direction of one layer in Keras's layout: ``[kernel, recurrent_kernel(, bias)]``."""
    hidden = block.hidden_size
    w_ih = getattr(block, f"weight_ih_l{layer}{suffix}").detach().numpy()
    w_hh = getattr(block, f"weight_hh_l{layer}{suffix}").detach().numpy()
    gru = cell.startswith("GRU")
    if gru:
        w_ih, w_hh = z_r_h(w_ih, hidden), z_r_h(w_hh, hidden)
    arrays = [np.ascontiguousarray(w_ih.T), np.ascontiguousarray(w_hh.T)]
    if block.bias:
        b_ih = getattr(block, f"bias_ih_l{layer}{suffix}").detach().numpy()
        b_hh = getattr(block, f"bias_hh_l{layer}{suffix}").detach().numpy()
        if cell == "GRU":
            arrays.append(np.stack([z_r_h(b_ih, hidden), z_r_h(b_hh, hidden)]))
        else:
            arrays.append(z_r_h(b_ih + b_hh, hidden) if gru else b_ih + b_hh)
    return arrays


def export(block: torch.nn.Module, cell: str, names: list, path: Path) -> None:
    """The reference export: a Keras 3 ``.weights.h5`` file with one ``Bidirectional`` group per layer."""
    with h5py.File(path, "w") as h5:
        for layer, name in enumerate(names):
            group = h5.create_group(f"layers/{name}")
            group.create_group("vars")                                   # Bidirectional holds no variable itself
            for side, suffix in (("forward_layer", ""), ("backward_layer", "_reverse")):
                variables = group.create_group(f"{side}/cell/vars")
                for index, array in enumerate(keras_direction(block, cell, layer, suffix)):
                    variables.create_dataset(str(index), data=array.astype("<f4"))


def expected_state(block: torch.nn.Module, cell: str) -> dict:
    """What a round trip gives: the block's parameters, with one bias (``bias_ih + bias_hh``) where Keras keeps one."""
    state = {key: value.clone() for key, value in block.state_dict().items()}
    if block.bias and cell != "GRU":
        for key in [k for k in state if k.startswith("bias_ih")]:
            partner = key.replace("bias_ih", "bias_hh")
            state[key] = torch.from_numpy(state[key].numpy() + state[partner].numpy())
            state[partner] = torch.zeros_like(state[partner])
    return state


@st.composite
def blocks(draw: st.DrawFn) -> dict:
    layers = draw(st.integers(1, 3))
    last = draw(st.sampled_from(["concat", "sum", "mul", "ave", None]))
    modes = [draw(st.sampled_from(["concat", "sum", "mul", "ave"])) for _ in range(layers - 1)] + [last]
    return {"cell": draw(st.sampled_from(CELLS)), "features": draw(st.integers(1, 5)),
            "hidden": draw(st.integers(1, 4)), "layers": layers, "modes": modes, "bias": draw(st.booleans()),
            "seed": draw(st.integers(0, 2**31)), "own_names": draw(st.booleans())}


def check_round_trip(s: dict) -> None:
    torch.manual_seed(s["seed"])
    block = build(s["cell"], s["features"], s["hidden"], s["layers"], s["modes"], s["bias"])
    with torch.no_grad():
        for parameter in block.parameters():                        # every value distinct and far from zero
            parameter.copy_(torch.randn(parameter.shape) + torch.sign(torch.randn(parameter.shape)))
    default = ["bidirectional" + (f"_{i}" if i else "") for i in range(s["layers"])]
    names = [f"rnn_{i}" for i in range(s["layers"])] if s["own_names"] else default
    target = build(s["cell"], s["features"], s["hidden"], s["layers"], s["modes"], s["bias"])
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.weights.h5"
        export(block, s["cell"], names, path)
        loaded = load_keras_weights(target, str(path), layers=names if s["own_names"] else None)
    assert loaded is target
    expected, got = expected_state(block, s["cell"]), target.state_dict()
    assert list(got) == list(expected)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=0, msg=lambda m, key=key: f"{key}: {m}")


@FAST
@given(blocks())
def test_loading_a_reference_export_gives_the_parameters_back(s: dict) -> None:
    check_round_trip(s)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("bias", [True, False])
def test_every_cell_round_trips(cell: str, bias: bool) -> None:
    """Each cell and bias setting at least once, whatever hypothesis draws: two layers, sum then None."""
    check_round_trip({"cell": cell, "features": 3, "hidden": 2, "layers": 2, "modes": ["sum", None], "bias": bias,
                      "seed": 7, "own_names": False})


@pytest.mark.slow
@SLOW
@given(blocks())
def test_loading_a_reference_export_many_examples(s: dict) -> None:
    check_round_trip(s)
