"""The PyTorch side of an imported Keras functional graph: nodes run in a fixed order over a list of values.

Every node maps ``(xs, masks) -> (outputs, output masks)`` (lists, so TorchScript sees one signature): a
``LayerNode`` calls one stage of ``module.py`` (a shared Keras layer is one stage called by several nodes), a
``MergeNode`` merges its inputs as Keras's merge layers do. ``x`` is batch-first, ``mask (B, T)`` bool (True at
valid steps) or ``None``.
"""

import json
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .module import stage_for_group


class LayerNode(nn.Module):
    """One call of a layer stage; a ``Bidirectional(merge_mode=None)`` stage gives two outputs (forward,
    backward), as Keras returns a list."""

    __constants__ = ["pair"]

    def __init__(self, stage: nn.Module, pair: bool) -> None:
        super().__init__()
        self.stage = stage
        self.pair = pair

    def forward(self, xs: List[Tensor], masks: List[Optional[Tensor]]) -> Tuple[List[Tensor], List[Optional[Tensor]]]:
        y, mask = self.stage(xs[0], masks[0])
        if self.pair:
            return [y.select(-2, 0), y.select(-2, 1)], [mask, mask]
        return [y], [mask]


def _combine(masks: List[Optional[Tensor]], like: List[Tensor], use_or: bool, none_if_any: bool) -> Optional[Tensor]:
    """Keras's merge mask: ``None`` when no input (``none_if_any``: any input) has one; else the masks OR-ed or
    AND-ed, an input without a mask counting as all valid."""
    present = 0
    for m in masks:
        if m is not None:
            present += 1
    if present == 0 or (none_if_any and present != len(masks)):
        return None
    out: Optional[Tensor] = None
    for i in range(len(masks)):
        m, x = masks[i], like[i]
        full = m if m is not None else torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
        if out is None:
            out = full
        else:
            out = (out | full) if use_or else (out & full)
    return out


def _one(mask: Optional[Tensor]) -> List[Optional[Tensor]]:
    return [mask]


def _normalize(x: Tensor, dim: int, keras2: bool) -> Tensor:
    """Keras 3 ``ops.normalize`` (``x * min(rsqrt(sum x^2), 1 / 1e-7)``) or Keras 2 ``l2_normalize``
    (``x * rsqrt(max(sum x^2, 1e-12))``)."""
    square_sum = x.square().sum(dim, keepdim=True)
    if keras2:
        return x * torch.rsqrt(square_sum.clamp(min=1e-12))
    return x * torch.rsqrt(square_sum).clamp(max=1e7)


def batch_dot(x: Tensor, y: Tensor, ax: int, ay: int) -> Tensor:
    """Keras ``batch_dot`` over axis ``ax`` of ``x`` and ``ay`` of ``y`` (both >= 1): the remaining axes of ``x``
    then of ``y``; two rank-2 inputs give ``(B, 1)``."""
    xm = x.movedim(ax, -1)
    ym = y.movedim(ay, 1)
    out = torch.matmul(xm.reshape(x.shape[0], -1, xm.shape[-1]), ym.reshape(y.shape[0], ym.shape[1], -1))
    shape = list(xm.shape[1:-1]) + list(ym.shape[2:])
    if len(shape) == 0:
        return out.reshape(x.shape[0], 1)
    return out.reshape([x.shape[0]] + shape)


class MergeNode(nn.Module):
    """Keras ``Concatenate``/``Add``/``Subtract``/``Multiply``/``Average``/``Maximum``/``Minimum``/``Dot``."""

    __constants__ = ["op", "axis", "ax", "ay", "normalize", "keras2"]

    def __init__(self, op: str, axis: int = -1, axes: Optional[List[int]] = None, normalize: bool = False,
                 keras2: bool = False) -> None:
        super().__init__()
        self.op = op
        self.axis = axis
        self.ax, self.ay = (axes or [1, 1])[0], (axes or [1, 1])[1]
        self.normalize = normalize
        self.keras2 = keras2

    def extra_repr(self) -> str:
        return self.op

    def forward(self, xs: List[Tensor], masks: List[Optional[Tensor]]) -> Tuple[List[Tensor], List[Optional[Tensor]]]:
        no_mask: List[Optional[Tensor]] = [None]
        if self.op == "Dot":
            x, y = xs[0], xs[1]
            if self.normalize:
                x, y = _normalize(x, self.ax, self.keras2), _normalize(y, self.ay, self.keras2)
            return [batch_dot(x, y, self.ax, self.ay)], no_mask
        if self.op == "Concatenate":
            out = torch.cat(xs, self.axis)
            if out.dim() < 3:
                return [out], no_mask
            if self.axis == 1:
                if all(m is None for m in masks):
                    return [out], no_mask
                parts: List[Tensor] = []
                for i in range(len(xs)):
                    m, x = masks[i], xs[i]
                    parts.append(m if m is not None else torch.ones(x.shape[:2], dtype=torch.bool, device=x.device))
                return [out], _one(torch.cat(parts, 1))
            return [out], _one(_combine(masks, xs, not self.keras2, False))
        out = xs[0]
        for x in xs[1:]:
            if self.op == "Add" or self.op == "Average":
                out = out + x
            elif self.op == "Subtract":
                out = out - x
            elif self.op == "Multiply":
                out = out * x
            elif self.op == "Maximum":
                out = torch.maximum(out, x)
            else:
                out = torch.minimum(out, x)
        if self.op == "Average":
            out = out / len(xs)
        if out.dim() < 3:
            return [out], no_mask
        return [out], _one(_combine(masks, xs, not self.keras2, not self.keras2))


class MultiInputNode(nn.Module):
    """One call of a layer stage that reads several inputs (the attention layers): ``stage(xs, masks)``."""

    def __init__(self, stage: nn.Module) -> None:
        super().__init__()
        self.stage = stage

    def forward(self, xs: List[Tensor], masks: List[Optional[Tensor]]) -> Tuple[List[Tensor], List[Optional[Tensor]]]:
        y, mask = self.stage(xs, masks)
        return [y], [mask]


class KerasGraphModel(nn.Module):
    """An imported Keras functional graph with one input and one output: ``x`` -> what Keras returns.
    ``keras_specs`` (JSON text) rebuilds it: ``module_from_specs(keras_specs)``."""

    def __init__(self, nodes: List[nn.Module], wiring: List[List[int]], outputs: List[int], num_inputs: int,
                 specs_json: str) -> None:
        super().__init__()
        self.nodes = nn.ModuleList(nodes)
        self.wiring = wiring
        self.output_values = outputs
        self.num_inputs = num_inputs
        self.keras_specs = specs_json

    def run(self, inputs: List[Tensor]) -> List[Tensor]:
        """All model inputs (in the Keras model's input order) -> all its outputs."""
        if len(inputs) != self.num_inputs:
            raise ValueError(f"the model takes {self.num_inputs} inputs, got {len(inputs)}")
        values: List[Tensor] = list(inputs)
        masks: List[Optional[Tensor]] = [None for _ in inputs]
        for index, node in enumerate(self.nodes):
            sources = self.wiring[index]
            xs: List[Tensor] = []
            xs_masks: List[Optional[Tensor]] = []
            for i in sources:
                xs.append(values[i])
                xs_masks.append(masks[i])
            outs, out_masks = node(xs, xs_masks)
            values.extend(outs)
            masks.extend(out_masks)
        return [values[i] for i in self.output_values]

    def forward(self, x: Tensor) -> Tensor:
        return self.run([x])[0]


class KerasMultiInputModel(KerasGraphModel):
    """Several inputs (a list, in the Keras model's input order), one output."""

    def forward(self, inputs: List[Tensor]) -> Tensor:  # type: ignore[override]
        return self.run(inputs)[0]


class KerasMultiOutputModel(KerasGraphModel):
    """One input, several outputs (a list, as Keras returns)."""

    def forward(self, x: Tensor) -> List[Tensor]:  # type: ignore[override]
        return self.run([x])


class KerasMultiInputOutputModel(KerasGraphModel):
    """Several inputs, several outputs (lists)."""

    def forward(self, inputs: List[Tensor]) -> List[Tensor]:  # type: ignore[override]
        return self.run(inputs)


def graph_module_from_dict(plan: Dict[str, Any], specs_json: str) -> KerasGraphModel:
    """Build the (randomly initialised) module of a graph plan (``GraphPlan.to_json_dict``)."""
    specs = {spec["name"]: spec for spec in plan["layers"]}
    stages: Dict[str, nn.Module] = {}
    nodes: List[nn.Module] = []
    for node in plan["nodes"]:
        group = [specs[name] for name in node["layers"]]
        first = group[0]
        if first["kind"] == "merge":
            o = first["options"]
            nodes.append(MergeNode(o["op"], o.get("axis", -1), o.get("axes"), o.get("normalize", False),
                                   o.get("keras2", False)))
            continue
        if first["kind"] == "attention":
            from .attention import attention_stage
            if first["name"] not in stages:
                stages[first["name"]] = attention_stage(first)
            nodes.append(MultiInputNode(stages[first["name"]]))
            continue
        if node["layers"][0] not in stages:
            stages[node["layers"][0]] = stage_for_group(group)
        nodes.append(LayerNode(stages[node["layers"][0]], len(node["outputs"]) == 2))
    several_in, several_out = len(plan["input_kinds"]) > 1, len(plan["outputs"]) > 1
    cls = {(False, False): KerasGraphModel, (True, False): KerasMultiInputModel,
           (False, True): KerasMultiOutputModel, (True, True): KerasMultiInputOutputModel}[(several_in, several_out)]
    return cls(nodes, [list(node["inputs"]) for node in plan["nodes"]], list(plan["outputs"]),
               len(plan["input_kinds"]), specs_json)


def is_graph_specs(specs: Any) -> bool:
    return isinstance(specs, dict) and specs.get("format") == "graph"


def dumps(plan: Dict[str, Any]) -> str:
    return json.dumps(plan)
