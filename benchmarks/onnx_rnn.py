"""ONNX Runtime twins of the blocks: a multi-layer bidirectional ``nn.LSTM``/``nn.GRU`` (``concat``) written as
ONNX's fused ``LSTM``/``GRU`` operators, the ops ``torch.onnx.export(nn.LSTM(...), dynamo=False)`` produces.

Why build the graph here instead of exporting: the exporter has no way to pass ``lengths``, while the ONNX
operators take ``sequence_lens`` (ONNX Runtime skips padded steps and zeroes their outputs, as the blocks do),
so one builder gives the matrix's rows with and without ``lengths`` the same graph. Layout: batch-first input
``x (B, T, F)`` (and ``lengths (B,)`` int32 when asked), transposed to time-major, per layer one bidirectional op
whose ``Y (T, 2, B, H)`` is transposed and reshaped to ``(T, B, 2H)``; outputs ``y (B, T, 2H)``, ``h_n`` and
(LSTM) ``c_n`` ``(2L, B, H)`` like the blocks'.
"""

from typing import Any, List, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn


def _gates(weight: torch.Tensor, cell: str) -> np.ndarray:
    """PyTorch's gate blocks reordered to ONNX's: LSTM i f g o -> i o f c; GRU r z n -> z r h."""
    chunks = weight.detach().float().numpy().reshape(4 if cell == "LSTM" else 3, -1, *weight.shape[1:])
    order = (0, 3, 1, 2) if cell == "LSTM" else (1, 0, 2)
    return np.concatenate([chunks[i] for i in order], axis=0)


def build(module: nn.Module, with_lengths: bool, merges: Optional[Sequence[str]] = None) -> bytes:
    """The serialised ONNX model of ``module`` (``nn.LSTM``/``nn.GRU``, or a ``BiLSTM``/``BiGRU`` block with the same
    parameter names; bidirectional, batch-first, biases). ``merges``: one of ``concat``, ``sum``, ``mul``, ``ave``
    per layer (default: all ``concat``), applied to each layer's two directions as the blocks' merge modes (ONNX
    ``Add``/``Mul``/``Div`` on the halves of ``Y``); ``y`` is then ``(B, T, H)`` after a last non-concat merge."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    cell = "LSTM" if isinstance(module, nn.LSTM) or getattr(module, "mode", None) == "LSTM" else "GRU"
    merges = list(merges) if merges is not None else ["concat"] * module.num_layers
    if len(merges) != module.num_layers or any(m not in ("concat", "sum", "mul", "ave") for m in merges):
        raise ValueError(f"merges must hold one of concat, sum, mul, ave per layer ({module.num_layers}), got {merges}")
    hidden, layers = module.hidden_size, module.num_layers
    nodes: List[Any] = []
    inits: List[Any] = []
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", "T", module.input_size])]
    if with_lengths:
        inputs.append(helper.make_tensor_value_info("lengths", TensorProto.INT32, ["B"]))
    nodes.append(helper.make_node("Transpose", ["x"], ["x_tm"], perm=[1, 0, 2]))
    inits.append(numpy_helper.from_array(np.array([0, 0, 2 * hidden], dtype=np.int64), "flat_shape"))
    inits.append(numpy_helper.from_array(np.array([1, 1], dtype=np.int64), "halves"))
    inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "direction_axis"))
    inits.append(numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two"))
    current, h_names, c_names = "x_tm", [], []
    for layer in range(layers):
        ws, rs, bs = [], [], []
        for suffix in ("", "_reverse"):
            ws.append(_gates(getattr(module, f"weight_ih_l{layer}{suffix}"), cell))
            rs.append(_gates(getattr(module, f"weight_hh_l{layer}{suffix}"), cell))
            bs.append(np.concatenate([_gates(getattr(module, f"bias_ih_l{layer}{suffix}"), cell),
                                      _gates(getattr(module, f"bias_hh_l{layer}{suffix}"), cell)]))
        for name, value in (("W", ws), ("R", rs), ("B", bs)):
            inits.append(numpy_helper.from_array(np.stack(value).astype(np.float32), f"{name}{layer}"))
        outs = [f"y{layer}", f"h{layer}"] + ([f"c{layer}"] if cell == "LSTM" else [])
        attrs = {"direction": "bidirectional", "hidden_size": hidden}
        if cell == "GRU":
            attrs["linear_before_reset"] = 1  # PyTorch's GRU: r gates (W_hn h + b_hn)
        nodes.append(helper.make_node(cell, [current, f"W{layer}", f"R{layer}", f"B{layer}",
                                             "lengths" if with_lengths else ""], outs, **attrs))
        if merges[layer] == "concat":
            nodes.append(helper.make_node("Transpose", [f"y{layer}"], [f"y{layer}_tb"], perm=[0, 2, 1, 3]))
            nodes.append(helper.make_node("Reshape", [f"y{layer}_tb", "flat_shape"], [f"y{layer}_flat"]))
            current = f"y{layer}_flat"
        else:  # Y (T, 2, B, H): the directions' halves merged into (T, B, H)
            f, b, m = f"y{layer}_f", f"y{layer}_b", f"y{layer}_m"
            nodes.append(helper.make_node("Split", [f"y{layer}", "halves"], [f, b], axis=1))
            nodes.append(helper.make_node("Mul" if merges[layer] == "mul" else "Add", [f, b], [m]))
            if merges[layer] == "ave":
                nodes.append(helper.make_node("Div", [m, "two"], [m + "_ave"]))
                m += "_ave"
            nodes.append(helper.make_node("Squeeze", [m, "direction_axis"], [f"y{layer}_merged"]))
            current = f"y{layer}_merged"
        h_names.append(f"h{layer}")
        c_names.append(f"c{layer}")
    nodes.append(helper.make_node("Transpose", [current], ["y"], perm=[1, 0, 2]))
    nodes.append(helper.make_node("Concat", h_names, ["h_n"], axis=0))
    width = 2 * hidden if merges[-1] == "concat" else hidden
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", "T", width]),
               helper.make_tensor_value_info("h_n", TensorProto.FLOAT, [2 * layers, "B", hidden])]
    if cell == "LSTM":
        nodes.append(helper.make_node("Concat", c_names, ["c_n"], axis=0))
        outputs.append(helper.make_tensor_value_info("c_n", TensorProto.FLOAT, [2 * layers, "B", hidden]))
    used = {name for node in nodes for name in node.input}
    inits = [init for init in inits if init.name in used]  # the merge constants only where a merge uses them
    graph = helper.make_graph(nodes, f"bi{cell.lower()}", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model.SerializeToString()


def session(model: Union[bytes, str], threads: int) -> Any:
    """An ONNX Runtime CPU session of ``model`` (serialised bytes or an ``.onnx`` path) with ``threads`` intra-op
    threads (ONNX Runtime's defaults otherwise, spinning included: what a deployment gets; with one thread it runs
    on the calling thread)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
