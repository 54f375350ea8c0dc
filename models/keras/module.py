"""The PyTorch side of an imported Keras model: a chain of stages built from the zoo's blocks.

Every stage maps ``(x, mask) -> (x, mask)`` with ``x`` batch-first and ``mask (B, T)`` bool (True at valid
steps) or ``None``, the way Keras passes a mask from layer to layer. Consecutive ``Bidirectional`` layers
of one cell type and size that return sequences become one multi-layer ``BiLSTM``/``BiGRU``/``BiRNN`` with a
merge mode per layer. Masks work at any position (left padding, gaps): the valid steps are compacted to
right padding (``compact_valid_steps``), the blocks run with ``lengths``, and sequence outputs are put back
on Keras's time axis (zero at masked steps for ``Bidirectional``; the last valid output carried forward for
an unwrapped layer with ``zero_output_for_mask=False``, as Keras does).
"""

from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..blocks.factory import block_for_cell
from ..blocks.gru_reset_before import GRUResetBefore
from ..cells import from_keras_layer
from ..zoo.pooling import compact_valid_steps, last_state
from ..zoo.token_ids import check_token_ids
from .errors import KerasImportError
from .spec_check import parse_specs

_UNIDIRECTIONAL = {"LSTM": nn.LSTM, "GRU": nn.GRU, "SimpleRNN": nn.RNN}


def _like(flags: Tensor, target: Tensor) -> Tensor:
    """``flags (B,)`` or ``(B, T)`` -> unsqueezed on the right to ``target.dim()`` dims (for broadcasting)."""
    while flags.dim() < target.dim():
        flags = flags.unsqueeze(-1)
    return flags


def scatter_back(out: Tensor, mask: Tensor, zero_masked: bool) -> Tensor:
    """Compacted ``out (B, T, ...)`` (valid steps first) -> Keras's time axis under ``mask (B, T)``.

    Valid step ``t`` gets compacted step ``(number of valid steps up to t) - 1``. Masked steps get zeros
    (``zero_masked``) or the previous valid output (zeros before the first one), as Keras's RNN loop does.
    """
    count = mask.to(torch.int64).cumsum(1)                                    # (B, T)
    index = _like((count - 1).clamp(min=0), out).expand(out.shape)
    keep = mask if zero_masked else count > 0
    return out.gather(1, index).masked_fill(~_like(keep, out), 0.0)


class EmbeddingStage(nn.Module):
    """``ids (B, T)`` int -> ``(B, T, D)``; with ``mask_zero`` the mask is ``ids != 0``."""

    __constants__ = ["mask_zero"]

    def __init__(self, input_dim: int, output_dim: int, mask_zero: bool) -> None:
        super().__init__()
        self.embedding = nn.Embedding(input_dim, output_dim)
        self.mask_zero = mask_zero

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        check_token_ids(x, self.embedding.num_embeddings, "x (token ids)")
        if self.mask_zero:
            mask = x != 0
        return self.embedding(x), mask


class MaskingStage(nn.Module):
    """Keras ``Masking``: mask = any feature differs from ``mask_value``; masked steps are zeroed."""

    __constants__ = ["mask_value"]

    def __init__(self, mask_value: float) -> None:
        super().__init__()
        self.mask_value = mask_value

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        new_mask = (x != self.mask_value).any(-1)
        return x.masked_fill(~new_mask.unsqueeze(-1), 0.0), new_mask


class BidirectionalStage(nn.Module):
    """One or more fused Keras ``Bidirectional`` layers: ``(B, T, F)`` -> ``(B, T, D)`` or ``(B, D)`` (last step),
    with ``D`` per the last merge mode (``(..., 2, H)`` for ``None``)."""

    __constants__ = ["return_sequences", "last_merge"]

    def __init__(self, cell: str, input_size: int, units: int, merge_modes: List[Optional[str]],
                 return_sequences: bool, bias: bool, activation: str, reset_after: bool = True) -> None:
        super().__init__()
        self.block = block_for_cell(from_keras_layer(cell, activation).name, input_size, units, len(merge_modes),
                                    reset_after=reset_after, bias=bias, batch_first=True, merge_mode=merge_modes)
        self.return_sequences = return_sequences
        self.last_merge: Optional[str] = merge_modes[-1]

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        lengths: Optional[Tensor] = None
        if mask is not None:
            x, lengths = compact_valid_steps(x, mask)
        out, h_n, _ = self.block.run(x, lengths=lengths)
        if self.return_sequences:
            if mask is None:
                return out, None
            return scatter_back(out, mask, True), mask
        return last_state(h_n, self.last_merge, None if mask is None else mask.any(1)), None


class RecurrentStage(nn.Module):
    """An unwrapped Keras ``LSTM``/``GRU``/``SimpleRNN`` on ``nn.LSTM``/``nn.GRU``/``nn.RNN`` (a ``reset_after=False``
    GRU on ``GRUResetBefore``, same parameter names)."""

    __constants__ = ["return_sequences", "zero_output_for_mask"]

    def __init__(self, cell: str, input_size: int, units: int, return_sequences: bool, bias: bool,
                 activation: str, zero_output_for_mask: bool, reset_after: bool = True) -> None:
        super().__init__()
        if cell == "GRU" and not reset_after:
            self.rnn = GRUResetBefore(input_size, units, bias=bias, batch_first=True)
        elif cell == "SimpleRNN":
            self.rnn = nn.RNN(input_size, units, nonlinearity=activation, bias=bias, batch_first=True)
        else:
            self.rnn = _UNIDIRECTIONAL[cell](input_size, units, bias=bias, batch_first=True)
        self.return_sequences = return_sequences
        self.zero_output_for_mask = zero_output_for_mask

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        if mask is None:
            out = self.rnn(x)[0]
            return (out, None) if self.return_sequences else (out[:, -1], None)
        compact, lengths = compact_valid_steps(x, mask)
        out = self.rnn(compact)[0]                      # trailing padding cannot reach the valid steps
        if self.return_sequences:
            return scatter_back(out, mask, self.zero_output_for_mask), mask
        index = (lengths - 1).view(-1, 1, 1).expand(out.shape[0], 1, out.shape[2])
        last = out.gather(1, index).squeeze(1)
        valid = mask[:, -1] if self.zero_output_for_mask else mask.any(1)
        return last.masked_fill(~valid.unsqueeze(-1), 0.0), None


def apply_activation(y: Tensor, name: str) -> Tensor:
    """A Keras built-in activation by name (``softmax`` over the last axis; ``linear`` is the identity)."""
    if name == "relu":
        y = torch.relu(y)
    elif name == "sigmoid":
        y = torch.sigmoid(y)
    elif name == "tanh":
        y = torch.tanh(y)
    elif name == "softmax":
        y = torch.softmax(y, -1)
    elif name == "softplus":
        y = nn.functional.softplus(y)
    elif name == "softsign":
        y = nn.functional.softsign(y)
    elif name == "elu":
        y = nn.functional.elu(y)
    elif name == "selu":
        y = torch.selu(y)
    elif name == "silu":
        y = nn.functional.silu(y)
    elif name == "gelu":
        y = nn.functional.gelu(y)
    elif name == "relu6":
        y = nn.functional.relu6(y)
    elif name == "hard_sigmoid":                 # Keras 3: relu6(x + 3) / 6
        y = nn.functional.relu6(y + 3.0) / 6.0
    elif name == "hard_sigmoid_keras2":          # Keras 2: clip(0.2 x + 0.5, 0, 1)
        y = (0.2 * y + 0.5).clamp(0.0, 1.0)
    elif name == "hard_silu" or name == "hard_swish":
        y = y * (nn.functional.relu6(y + 3.0) / 6.0)
    elif name == "exponential":
        y = torch.exp(y)
    elif name == "leaky_relu":                   # Keras's default negative_slope
        y = nn.functional.leaky_relu(y, 0.2)
    elif name == "mish":
        y = y * torch.tanh(nn.functional.softplus(y))
    elif name == "log_softmax":
        y = torch.log_softmax(y, -1)
    elif name == "celu":
        y = nn.functional.celu(y)
    return y


class DenseStage(nn.Module):
    """Keras ``Dense`` (or ``TimeDistributed(Dense)``) on the last axis plus its activation."""

    __constants__ = ["activation"]

    def __init__(self, in_features: int, units: int, activation: str, bias: bool) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, units, bias=bias)
        self.activation = "silu" if activation == "swish" else activation

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        return apply_activation(self.linear(x), self.activation), mask


class ActivationStage(nn.Module):
    """Keras ``Activation`` layer (common after a ``Dense`` in Keras 2 models): the mask passes on."""

    __constants__ = ["activation"]

    def __init__(self, activation: str) -> None:
        super().__init__()
        self.activation = "silu" if activation == "swish" else activation

    def extra_repr(self) -> str:
        return self.activation

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        return apply_activation(x, self.activation), mask


class PoolStage(nn.Module):
    """``GlobalAveragePooling1D`` (mean over valid steps, as Keras: NaN for a row with none) or
    ``GlobalMaxPooling1D`` (Keras 3 ignores the mask: max over all steps): ``(B, T, D)`` -> ``(B, D)``."""

    __constants__ = ["mode", "keepdims"]

    def __init__(self, mode: str, keepdims: bool = False) -> None:
        super().__init__()
        self.mode = mode
        self.keepdims = keepdims

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        if self.mode == "max":
            y = x.amax(1)
        elif mask is None:
            y = x.mean(1)
        else:
            weights = mask.to(x.dtype).unsqueeze(-1)
            y = x.masked_fill(~mask.unsqueeze(-1), 0.0).sum(1) / weights.sum(1)
        return (y.unsqueeze(1) if self.keepdims else y), None


class TimeDistributedStage(nn.Module):
    """Keras ``TimeDistributed(layer)``: ``(B, T, ...)`` -> the wrapped stage on every step at once (``(B * T, ...)``)
    -> ``(B, T, ...)``. Keras 3: without a mask (Keras calls the wrapped layer's ``call`` per step); the mask passes
    on. Keras 2 (``keras2``): the wrapped stage gets the mask reshaped to ``(B * T, ...)``; the output's mask is the
    stage's own reshaped to ``(B, T, ...)``, else the input's reduced to ``(B, T)`` by ``any``."""

    __constants__ = ["keras2"]

    def __init__(self, inner: nn.Module, keras2: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.keras2 = keras2

    def forward(self, x: Tensor, mask: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        b, t = x.shape[0], x.shape[1]
        if not self.keras2:
            y, _ = self.inner(x.flatten(0, 1), None)
            return y.reshape([b, t] + list(y.shape[1:])), mask
        y, inner_mask = self.inner(x.flatten(0, 1), None if mask is None else mask.flatten(0, 1))
        y = y.reshape([b, t] + list(y.shape[1:]))
        if inner_mask is not None:
            return y, inner_mask.reshape([b, t] + list(inner_mask.shape[1:]))
        if mask is not None and mask.dim() == 3:
            return y, mask.any(-1)
        return y, mask


class KerasModel(nn.Module):
    """An imported Keras model: ``x`` token ids ``(B, T)`` int64 or features ``(B, T, F)`` float32 -> what
    the Keras model returns. ``keras_specs`` (JSON text) rebuilds it: ``module_from_specs(keras_specs)``."""

    def __init__(self, stages: List[nn.Module], specs_json: str) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)
        self.keras_specs = specs_json

    def features(self, x: Tensor) -> Tensor:
        mask: Optional[Tensor] = None
        for stage in self.stages:
            x, mask = stage(x, mask)
        return x

    def forward(self, x: Tensor) -> Tensor:
        return self.features(x)


class KerasPairModel(KerasModel):
    """An imported model ending in ``Bidirectional(merge_mode=None)``: returns ``(forward, backward)``, each
    ``(B, T, H)`` or ``(B, H)``, as Keras returns a list of the two directions."""

    def forward(self, x: Tensor) -> Tuple[Tensor, Tensor]:  # type: ignore[override]
        both = self.features(x)
        return both.select(-2, 0), both.select(-2, 1)


def fusable(group: List[Dict[str, Any]], spec: Dict[str, Any]) -> bool:
    last = group[-1]
    if last["kind"] != "recurrent" or not last["options"]["bidirectional"] or spec["kind"] != "recurrent":
        return False
    a, b = last["options"], spec["options"]
    return (b["bidirectional"] and a["return_sequences"] and a["merge_mode"] is not None
            and not a.get("loop") and not b.get("loop")
            and all(a[k] == b[k] for k in ("cell", "units", "use_bias", "activation"))
            and a.get("reset_after", True) == b.get("reset_after", True))


def plan_stages(specs: List[Dict[str, Any]]) -> List[List[Dict[str, Any]]]:
    """Group layer specs (dicts) into stages; identity layers (dropouts) vanish."""
    groups: List[List[Dict[str, Any]]] = []
    for spec in specs:
        if spec["kind"] == "identity":
            continue
        if groups and fusable(groups[-1], spec):
            groups[-1].append(spec)
        else:
            groups.append([spec])
    return groups


def stage_for_group(group: List[Dict[str, Any]]) -> nn.Module:
    """The stage of one group of layer specs (dicts): one layer, or fused ``Bidirectional`` layers."""
    first, o = group[0], group[0]["options"]
    kind = first["kind"]
    if kind == "embedding":
        return EmbeddingStage(o["input_dim"], o["output_dim"], o["mask_zero"])
    if kind == "masking":
        return MaskingStage(o["mask_value"])
    if kind == "activation":
        return ActivationStage(o["activation"])
    if kind == "dense":
        return DenseStage(first["in_features"], o["units"], o["activation"], o["use_bias"])
    if kind == "pool":
        return PoolStage(o["mode"], o.get("keepdims", False))
    if kind == "norm":
        from .shape_stages import NormStage
        return NormStage(first["in_features"], o["batch"], o["epsilon"], o["scale"], o["center"])
    if kind == "shape":
        from .shape_stages import ShapeStage
        return ShapeStage(o["op"], o["shape"], o["n"])
    if kind == "conv":
        from .conv_stages import ConvStage
        return ConvStage(first["in_features"], o["filters"], o["kernel_size"], o["strides"], o["padding"],
                         o["dilation_rate"], o["groups"], o["use_bias"], o["activation"])
    if kind == "timedistributed":
        return TimeDistributedStage(stage_for_group([o["inner"]]), bool(o.get("keras2", False)))
    if kind == "pool1d":
        from .conv_stages import Pool1DStage
        return Pool1DStage(o["mode"], o["pool_size"], o["strides"], o["padding"] == "same")
    if o.get("loop"):
        from .loop_rnn import LoopBidirectionalStage, LoopUnidirectionalStage
        activation, recurrent = o["activation"], o.get("recurrent_activation", "sigmoid")
        if o.get("keras2"):
            activation, recurrent = (a + "_keras2" if a == "hard_sigmoid" else a for a in (activation, recurrent))
        common = (o["cell"], first["in_features"], o["units"], o["use_bias"], activation, recurrent,
                  o.get("reset_after", True), o["return_sequences"], o["zero_output_for_mask"])
        if o["bidirectional"]:
            return LoopBidirectionalStage(*common, o["merge_mode"])
        return LoopUnidirectionalStage(*common)
    if o["bidirectional"]:
        return BidirectionalStage(o["cell"], first["in_features"], o["units"],
                                  [s["options"]["merge_mode"] for s in group],
                                  group[-1]["options"]["return_sequences"], o["use_bias"], o["activation"],
                                  o.get("reset_after", True))
    return RecurrentStage(o["cell"], first["in_features"], o["units"], o["return_sequences"], o["use_bias"],
                          o["activation"], o["zero_output_for_mask"], o.get("reset_after", True))


def module_from_specs(specs_json: str) -> nn.Module:
    """Build the (randomly initialised) module for ``keras_specs`` (of a ``KerasModel`` or a functional graph's
    ``KerasGraphModel``); load a state_dict after. The JSON is checked as data first: only ``KerasImportError``
    escapes."""
    specs = parse_specs(specs_json)
    try:
        if isinstance(specs, dict):
            from .graph_module import graph_module_from_dict
            return graph_module_from_dict(specs, specs_json)
        stages = [stage_for_group(group) for group in plan_stages(specs)]
        last = specs[-1]
        paired = (last["kind"] == "recurrent" and last["options"]["bidirectional"]
                  and last["options"]["merge_mode"] is None)
        return (KerasPairModel if paired else KerasModel)(stages, specs_json)
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError, RecursionError) as error:
        raise KerasImportError(f"keras_specs do not describe a module ({type(error).__name__}: {error})") from None
