"""``models/keras/convert.py``'s ``_group_state`` without Keras: where each layer kind's Keras arrays go in the
module's state dict (the names and layouts written out here: Keras's ``(in, out)`` kernels transposed to torch's
``(out, in)``, Conv1D's ``(k, in/g, out)`` to ``(out, in/g, k)``, normalization's arrays in Keras's order gamma,
beta, moving mean, moving variance). The survivors of issue 37's mutation run on ``convert.py``; exact equality
(the arrays are only moved)."""

import dataclasses
from typing import Dict, List

import numpy as np
import pytest

from models.keras.config import LayerSpec
from models.keras.convert import _direction, _group_state


def arrays(*shapes: tuple) -> List[np.ndarray]:
    rng = np.random.default_rng(len(shapes))
    return [rng.standard_normal(shape).astype(np.float32) for shape in shapes]


def state_of(specs: List[LayerSpec], values: List[List[np.ndarray]]) -> Dict[str, np.ndarray]:
    group = [dataclasses.asdict(spec) | {"_id": index} for index, spec in enumerate(specs)]
    state: Dict[str, np.ndarray] = {}
    _group_state("stage.", group, dict(enumerate(values)), state)
    return state


def assert_state(state: Dict[str, np.ndarray], expected: Dict[str, np.ndarray]) -> None:
    assert list(state) == list(expected)
    for key, value in expected.items():
        assert np.array_equal(state[key], value), key


def test_an_embeddings_table_is_its_weight_as_is() -> None:
    (table,) = arrays((11, 4))
    spec = LayerSpec("embedding", "Embedding", "e", "e", 0, {"input_dim": 11, "output_dim": 4})
    assert_state(state_of([spec], [[table]]), {"stage.embedding.weight": table})


@pytest.mark.parametrize("use_bias", [True, False])
def test_a_dense_kernel_is_transposed_and_its_bias_kept(use_bias: bool) -> None:
    values = arrays((6, 2), (2,))[:2 if use_bias else 1]
    spec = LayerSpec("dense", "Dense", "d", "d", 6, {"units": 2, "use_bias": use_bias})
    expected = {"stage.linear.weight": values[0].T} | ({"stage.linear.bias": values[1]} if use_bias else {})
    assert_state(state_of([spec], [values]), expected)


@pytest.mark.parametrize(("scale", "center", "batch", "names"), [
    (True, True, False, ["gamma", "beta"]),
    (False, True, False, ["beta"]),
    (True, False, False, ["gamma"]),
    (True, True, True, ["gamma", "beta", "moving_mean", "moving_variance"]),
    (False, False, True, ["moving_mean", "moving_variance"]),
])
def test_normalization_arrays_in_kerass_order(scale: bool, center: bool, batch: bool, names: List[str]) -> None:
    values = arrays(*[(6,)] * len(names))
    spec = LayerSpec("norm", "BatchNormalization" if batch else "LayerNormalization", "n", "n", 6,
                     {"scale": scale, "center": center, "batch": batch})
    expected = {f"stage.{name}": value for name, value in zip(names, values, strict=True)}
    assert_state(state_of([spec], [values]), expected)


@pytest.mark.parametrize("use_bias", [True, False])
def test_a_conv1d_kernel_becomes_out_in_k(use_bias: bool) -> None:
    values = arrays((3, 3, 4), (4,))[:2 if use_bias else 1]
    spec = LayerSpec("conv", "Conv1D", "c", "c", 6, {"kernel_size": 3, "groups": 2, "filters": 4, "use_bias": use_bias})
    kernel = values[0]
    want = np.stack([np.stack([kernel[:, i, o] for i in range(3)]) for o in range(4)])   # [out][in/g][k]
    expected = {"stage.conv.weight": want} | ({"stage.conv.bias": values[1]} if use_bias else {})
    assert_state(state_of([spec], [values]), expected)


def test_a_time_distributed_layer_is_its_inner_layer_under_inner() -> None:
    values = arrays((6, 2), (2,))
    inner = LayerSpec("dense", "Dense", "d", "d", 6, {"units": 2, "use_bias": True})
    spec = LayerSpec("timedistributed", "TimeDistributed", "t", "t", 6, {"inner": dataclasses.asdict(inner)})
    assert_state(state_of([spec], [values]),
                 {"stage.inner.linear.weight": values[0].T, "stage.inner.linear.bias": values[1]})


def test_recurrent_layers_are_numbered_per_layer_and_direction() -> None:
    options = {"cell": "LSTM", "units": 3, "use_bias": True, "bidirectional": True}
    specs = [LayerSpec("recurrent", "Bidirectional", "a", "a", 5, options),
             LayerSpec("recurrent", "Bidirectional", "b", "b", 6, options)]
    values = [arrays((5, 12), (3, 12), (12,), (5, 12), (3, 12), (12,)),
              arrays((6, 12), (3, 12), (12,), (6, 12), (3, 12), (12,))]
    expected = {}
    for layer, layer_values in enumerate(values):
        for direction, suffix in enumerate(["", "_reverse"]):
            chunk = _direction("LSTM", 3, layer_values[3 * direction:3 * direction + 3])
            for name, value in zip(["weight_ih", "weight_hh", "bias_ih", "bias_hh"], chunk, strict=True):
                expected[f"stage.block.{name}_l{layer}{suffix}"] = value
    assert_state(state_of(specs, values), expected)


def test_a_one_direction_recurrent_layer_goes_to_rnn() -> None:
    values = arrays((5, 9), (3, 9), (2, 9))
    spec = LayerSpec("recurrent", "GRU", "g", "g", 5, {"cell": "GRU", "units": 3, "use_bias": True,
                                                       "bidirectional": False})
    chunk = _direction("GRU", 3, values)
    expected = {f"stage.rnn.{name}_l0": value
                for name, value in zip(["weight_ih", "weight_hh", "bias_ih", "bias_hh"], chunk, strict=True)}
    assert_state(state_of([spec], [values]), expected)


def test_an_attention_layer_keeps_kerass_arrays_under_their_names() -> None:
    values = arrays((), ())
    spec = LayerSpec("attention", "Attention", "a", "a", 6, {"op": "Attention", "use_scale": True,
                                                          "score_mode": "concat"})
    assert_state(state_of([spec], [values]),
                 {"stage.scale": values[0], "stage.concat_score_weight": values[1]})
