"""Keras attention layers (files of Keras 3 and of Keras 2), exact: ``Attention`` (Luong: dot or concat scores,
``use_scale``), ``AdditiveAttention`` (Bahdanau) and ``MultiHeadAttention``, with the masks Keras propagates.

Semantics (``keras/src/layers/attention/*.py``, Keras 3.15):

- ``Attention([query, value(, key)])``: ``scores (B, Tq, Tv)`` = ``q @ k^T`` (times ``scale`` with ``use_scale``)
  or, for ``score_mode="concat"``, ``concat_score_weight * sum(tanh(scale * (q_i + k_j)))``; steps where the
  value's mask is False (and, with ``use_causal_mask``, ``j > i``) get ``scores - 1e9``; ``softmax`` over ``Tv``;
  ``weights @ value``; rows where the query's mask is False are zeroed. The key's mask is not used. The output's
  mask is the query's.
- ``AdditiveAttention``: ``scores = sum(scale * tanh(q_i + k_j))`` with ``scale (dim,)`` (``use_scale``), then as
  ``Attention``.
- ``MultiHeadAttention(query, value(, key))``: ``EinsumDense`` projections ``(F, N, K)`` + bias ``(N, K)`` for
  query, key and value, ``softmax(q k^T / sqrt(K))`` per head under the mask ``query_mask[:, :, None] &
  value_mask[:, None, :] & key_mask[:, None, :]`` (& causal & sliding window), masked scores set to a large
  negative (a row with nothing valid averages every step, as Keras's backends do), then the output projection
  ``(N, V, out)``. The output's mask is the query's.

Keras 2 (``tf_keras``'s ``layers/attention/*.py``, 2.21) where it differs: ``Attention`` multiplies the output by the
query's mask and may carry ``causal`` in its config (tf.keras before 2.10); ``MultiHeadAttention``'s ``Softmax``
adds ``-1e9`` to masked scores (``softmax_robust_masking=True``: replaces them by ``-1e9``), so on a query step with
no valid value step large scores still count; its sub-layers are ``_query_dense`` ... ``_output_dense`` in a
``tf_keras`` ``.keras`` file; it leaves its inputs' masks in place.
"""

import copy
import math
from typing import Any, Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .config import LayerSpec, Stream
from .graph import fail as _fail
from .layer_options import check_dtype, flag, positive_int

ATTENTION = ("Attention", "AdditiveAttention", "MultiHeadAttention")
_LARGE_NEGATIVE = -0.7 * 3.38953e38          # Keras's torch backend, float32 (`_get_large_negative`)
_KERAS2_NEGATIVE = -1e9                        # tf_keras's Softmax (`_large_compatible_negative`, float32)


def _features(stream: Stream, name: str, what: str) -> int:
    if stream.rank != 3 or not isinstance(stream.features, int) or isinstance(stream.features, bool) \
            or stream.features < 1:
        raise _fail(name, f"the {what} must be (batch, time, features) with a known feature size, got rank "
                          f"{stream.rank} and {stream.features!r} features")
    return stream.features


def _call_options(kwargs: Dict[str, Any], roles: List[str], name: str, allowed_roles: Tuple[str, ...]) -> bool:
    """``use_causal_mask`` of the call; refuses ``return_attention_scores=True`` and explicit masks."""
    for key in ("return_attention_scores", "use_causal_mask"):
        if key in kwargs and not isinstance(kwargs[key], bool):
            raise _fail(name, f"call argument {key}={kwargs[key]!r} is not a bool")
    if kwargs.get("return_attention_scores"):
        raise _fail(name, "return_attention_scores=True (two outputs) is not supported")
    stray = sorted(set(kwargs) - {"training", "use_causal_mask", "return_attention_scores", *allowed_roles})
    if stray:
        raise _fail(name, f"call arguments {stray} are not supported (masks are taken from Keras's mask propagation; "
                          "an explicit attention_mask or query/value/key mask is refused)")
    unknown = [r for r in roles if not r.startswith("arg") and r not in allowed_roles]
    if unknown:
        raise _fail(name, f"tensors passed as {unknown} are not supported")
    return bool(kwargs.get("use_causal_mask", False))


def attention_spec(class_name: str, config: Dict[str, Any], name: str, path: str, streams: List[Stream],
                   kwargs: Dict[str, Any], roles: List[str], as_list: bool,
                   keras2: bool) -> Tuple[LayerSpec, Stream, List[int]]:
    """The checked spec of an attention layer's call, the stream it outputs (the query's, with the value's or the
    output projection's feature size; the query's mask) and the order of its sources as the stage takes them
    (query, value, key)."""
    check_dtype(config, name)
    for key in ("dropout",):
        value = config.get(key, 0.0)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise _fail(name, f"{key}={value!r} is not a rate in [0, 1)")
    if class_name == "MultiHeadAttention":
        return _mha_spec(config, name, path, streams, kwargs, roles, keras2)
    if not as_list or roles or not 2 <= len(streams) <= 3:
        raise _fail(name, f"{class_name} must be called on a list [query, value] or [query, value, key]")
    # tf.keras before 2.10 saved ``causal`` in the config (tf_keras still takes it but no longer saves it)
    causal_config = flag(config, "causal", False, name) if keras2 else False
    causal = _call_options(kwargs, roles, name, ()) or causal_config
    q, v = _features(streams[0], name, "query"), _features(streams[1], name, "value")
    k = _features(streams[2], name, "key") if len(streams) == 3 else v
    score_mode = "additive" if class_name == "AdditiveAttention" else config.get("score_mode", "dot")
    if score_mode not in ("dot", "concat", "additive"):
        raise _fail(name, f"score_mode={score_mode!r} is not 'dot' or 'concat'")
    if q != k:
        raise _fail(name, f"query ({q} features) and key ({k} features) must have the same feature size")
    if keras2 and score_mode == "additive" and v != q:       # Keras 2 sizes the scale by the value
        raise _fail(name, f"value ({v} features) and query ({q} features) must have the same feature size")
    use_scale = flag(config, "use_scale", class_name == "AdditiveAttention", name)
    out = copy.copy(streams[0])
    out.features = v
    options = {"op": class_name, "score_mode": score_mode, "use_scale": use_scale, "causal": causal,
               "num_inputs": len(streams), "query_features": q, "keras2": keras2}
    return LayerSpec("attention", class_name, name, path, q, options), out, list(range(len(streams)))


def _mha_spec(config: Dict[str, Any], name: str, path: str, streams: List[Stream], kwargs: Dict[str, Any],
              roles: List[str], keras2: bool) -> Tuple[LayerSpec, Stream, List[int]]:
    index = {role: i for i, role in enumerate(roles or [f"arg{i}" for i in range(len(streams))])}
    order = [index.get("arg0"), index.get("arg1", index.get("value")), index.get("arg2", index.get("key"))]
    query, value, key = (None if i is None else streams[i] for i in order)
    if query is None or value is None or len(streams) > 3:
        raise _fail(name, "MultiHeadAttention must be called as layer(query, value) or layer(query, value, key)")
    causal = _call_options(kwargs, roles, name, ("value", "key"))
    if config.get("use_gate"):
        raise _fail(name, "use_gate=True is not supported")
    axes = config.get("attention_axes")
    if axes not in (None, 1, [1], -2, [-2]):
        raise _fail(name, f"attention_axes={axes!r} is not supported (attention over the time axis only)")
    window = config.get("sliding_window")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise _fail(name, f"sliding_window={window!r} is not a positive int or None")
    heads, key_dim = positive_int(config, "num_heads", name), positive_int(config, "key_dim", name)
    value_dim = config.get("value_dim") or key_dim
    if isinstance(value_dim, bool) or not isinstance(value_dim, int) or value_dim < 1:
        raise _fail(name, f"value_dim={value_dim!r} is not a positive int")
    q, v = _features(query, name, "query"), _features(value, name, "value")
    k = _features(key, name, "key") if key is not None else v
    output_shape = config.get("output_shape")
    if isinstance(output_shape, list) and len(output_shape) == 1:
        output_shape = output_shape[0]
    if output_shape in (None, []):
        output_shape = q
    robust = flag(config, "softmax_robust_masking", False, name)
    if isinstance(output_shape, bool) or not isinstance(output_shape, int) or output_shape < 1:
        raise _fail(name, f"output_shape={config.get('output_shape')!r} is not supported (one positive size or None)")
    out = copy.copy(query)
    out.features = output_shape
    options = {"op": "MultiHeadAttention", "num_heads": heads, "key_dim": key_dim, "value_dim": value_dim,
               "use_bias": flag(config, "use_bias", True, name), "output_dim": output_shape, "causal": causal,
               "sliding_window": window or 0, "query_features": q, "value_features": v, "key_features": k,
               "has_key": key is not None, "keras2": keras2, "robust_masking": robust}
    return LayerSpec("attention", "MultiHeadAttention", name, path, q,
                     options), out, [i for i in order if i is not None]


def attention_shapes(spec: LayerSpec) -> List[Tuple[int, ...]]:
    """The Keras arrays of an attention layer, in the file's order."""
    o = spec.options
    if o["op"] == "Attention":
        return ([()] if o["use_scale"] else []) + ([()] if o["score_mode"] == "concat" else [])
    if o["op"] == "AdditiveAttention":
        return [(o["query_features"],)] if o["use_scale"] else []
    n, kd, vd = o["num_heads"], o["key_dim"], o["value_dim"]
    shapes: List[Tuple[int, ...]] = []
    for features, size in ((o["query_features"], kd), (o["key_features"], kd), (o["value_features"], vd)):
        shapes += [(features, n, size)] + ([(n, size)] if o["use_bias"] else [])
    return shapes + [(n, vd, o["output_dim"])] + ([(o["output_dim"],)] if o["use_bias"] else [])


def attention_state(prefix: str, spec: Dict[str, Any], values: List[Any], state: Dict[str, Any]) -> None:
    """Keras arrays -> the stage's state (kept in Keras's layouts: the stages compute with them as they are)."""
    o = spec["options"]
    if o["op"] == "Attention":
        names = (["scale"] if o["use_scale"] else []) + (["concat_score_weight"] if o["score_mode"] == "concat" else [])
    elif o["op"] == "AdditiveAttention":
        names = ["scale"] if o["use_scale"] else []
    else:
        names = []
        for part in ("query", "key", "value", "output"):
            names += [f"{part}_kernel"] + ([f"{part}_bias"] if o["use_bias"] else [])
    for key, value in zip(names, values, strict=True):
        state[prefix + key] = value


def _causal(tq: int, tv: int, device: torch.device) -> Tensor:
    """``(Tq, Tv)`` True where ``j <= i`` (Keras's ``row_index >= col_index``)."""
    return torch.ones(tq, tv, dtype=torch.bool, device=device).tril()


class AttentionStage(nn.Module):
    """Keras ``Attention`` / ``AdditiveAttention``: ``[query (B, Tq, D), value (B, Tv, Dv)(, key (B, Tv, D))]`` ->
    ``(B, Tq, Dv)``, mask: the query's."""

    __constants__ = ["mode", "use_scale", "causal", "keras2"]

    def __init__(self, score_mode: str, use_scale: bool, causal: bool, features: int, keras2: bool = False) -> None:
        super().__init__()
        self.mode = score_mode
        self.use_scale = use_scale
        self.causal = causal
        self.keras2 = keras2
        shape = [features] if score_mode == "additive" else []
        self.scale = nn.Parameter(torch.ones(shape)) if use_scale else None
        self.concat_score_weight = nn.Parameter(torch.ones([])) if score_mode == "concat" else None

    def extra_repr(self) -> str:
        return f"score_mode={self.mode!r}, use_scale={self.use_scale}, causal={self.causal}"

    def forward(self, xs: List[Tensor], masks: List[Optional[Tensor]]) -> Tuple[Tensor, Optional[Tensor]]:
        q, v = xs[0], xs[1]
        k = xs[2] if len(xs) > 2 else v
        scale = self.scale
        weight = self.concat_score_weight
        if self.mode == "dot":
            scores = torch.matmul(q, k.transpose(-2, -1))
            if scale is not None:
                scores = scores * scale
        else:
            summed = q.unsqueeze(-2) + k.unsqueeze(-3)                     # (B, Tq, Tv, D)
            if self.mode == "additive":
                scores = (torch.tanh(summed) * scale).sum(-1) if scale is not None else torch.tanh(summed).sum(-1)
            else:
                if scale is not None:
                    summed = scale * summed
                scores = torch.tanh(summed).sum(-1)
                if weight is not None:
                    scores = weight * scores
        keep: Optional[Tensor] = None
        v_mask = masks[1]
        if v_mask is not None:
            keep = v_mask.unsqueeze(-2)
        if self.causal:
            causal = _causal(scores.shape[-2], scores.shape[-1], scores.device).unsqueeze(0)
            keep = causal if keep is None else keep & causal
        if keep is not None:
            scores = torch.where(keep, scores, scores - 1.0e9)
        out = torch.matmul(torch.softmax(scores, -1), v)
        q_mask = masks[0]
        if q_mask is not None and self.keras2:       # Keras 2 multiplies by the mask (NaN stays NaN)
            out = out * q_mask.unsqueeze(-1).to(out.dtype)
        elif q_mask is not None:
            out = torch.where(q_mask.unsqueeze(-1), out, torch.zeros_like(out))
        return out, q_mask


class MultiHeadAttentionStage(nn.Module):
    """Keras ``MultiHeadAttention``: ``[query (B, T, Fq), value (B, S, Fv)(, key (B, S, Fk))]`` -> ``(B, T, out)``.
    Parameters keep Keras's ``EinsumDense`` layouts (kernels ``(F, N, K)``, output ``(N, V, out)``)."""

    __constants__ = ["causal", "window", "has_key", "inverse_sqrt_key_dim", "large_negative", "add_negative"]

    def __init__(self, num_heads: int, key_dim: int, value_dim: int, query_features: int, key_features: int,
                 value_features: int, output_dim: int, use_bias: bool, causal: bool, sliding_window: int,
                 has_key: bool, masking: str = "keras3") -> None:
        super().__init__()
        self.causal = causal
        self.window = sliding_window
        self.has_key = has_key
        self.inverse_sqrt_key_dim = 1.0 / math.sqrt(float(key_dim))
        # masked scores: Keras 3 replaces them by a large negative; Keras 2's Softmax adds -1e9 to them (or, with
        # softmax_robust_masking, replaces them by -1e9)
        self.large_negative = _LARGE_NEGATIVE if masking == "keras3" else _KERAS2_NEGATIVE
        self.add_negative = masking == "keras2"

        def param(*shape: int) -> nn.Parameter:
            return nn.Parameter(torch.zeros(shape))

        self.query_kernel = param(query_features, num_heads, key_dim)
        self.key_kernel = param(key_features, num_heads, key_dim)
        self.value_kernel = param(value_features, num_heads, value_dim)
        self.output_kernel = param(num_heads, value_dim, output_dim)
        self.query_bias = param(num_heads, key_dim) if use_bias else None
        self.key_bias = param(num_heads, key_dim) if use_bias else None
        self.value_bias = param(num_heads, value_dim) if use_bias else None
        self.output_bias = param(output_dim) if use_bias else None

    def _project(self, x: Tensor, kernel: Tensor, bias: Optional[Tensor]) -> Tensor:
        y = torch.einsum("abc,cde->abde", x, kernel)
        return y + bias if bias is not None else y

    def forward(self, xs: List[Tensor], masks: List[Optional[Tensor]]) -> Tuple[Tensor, Optional[Tensor]]:
        query, value = xs[0], xs[1]
        key = xs[2] if self.has_key else value
        q = self._project(query, self.query_kernel, self.query_bias) * self.inverse_sqrt_key_dim   # (B, T, N, K)
        k = self._project(key, self.key_kernel, self.key_bias)
        v = self._project(value, self.value_kernel, self.value_bias)
        scores = torch.einsum("aecd,abcd->acbe", k, q)                                        # (B, N, T, S)
        keep: Optional[Tensor] = None
        q_mask, v_mask = masks[0], masks[1]
        if q_mask is not None:
            keep = q_mask.unsqueeze(-1)
        if v_mask is not None:
            keep = v_mask.unsqueeze(-2) if keep is None else keep & v_mask.unsqueeze(-2)
        if self.has_key:
            k_mask = masks[2]
            if k_mask is not None:
                keep = k_mask.unsqueeze(-2) if keep is None else keep & k_mask.unsqueeze(-2)
        t, s = query.shape[1], value.shape[1]
        if self.causal:
            causal = _causal(t, s, query.device).unsqueeze(0)
            keep = causal if keep is None else keep & causal
        if self.window > 0:
            rows = torch.arange(t, device=query.device).view(1, t, 1)
            cols = torch.arange(s, device=query.device).view(1, 1, s)
            band = (rows - cols).abs() < self.window
            keep = band if keep is None else keep & band
        if keep is not None and self.add_negative:
            scores = scores + (1.0 - keep.unsqueeze(1).to(scores.dtype)) * self.large_negative
        elif keep is not None:
            scores = scores.masked_fill(~keep.unsqueeze(1), self.large_negative)
        weights = torch.softmax(scores, -1)
        out = torch.einsum("acbe,aecd->abcd", weights, v)                                     # (B, T, N, V)
        out = torch.einsum("abcd,cde->abe", out, self.output_kernel)
        if self.output_bias is not None:
            out = out + self.output_bias
        return out, q_mask


def attention_stage(spec: Dict[str, Any]) -> nn.Module:
    o = spec["options"]
    if o["op"] == "MultiHeadAttention":
        return MultiHeadAttentionStage(o["num_heads"], o["key_dim"], o["value_dim"], o["query_features"],
                                       o["key_features"], o["value_features"], o["output_dim"], o["use_bias"],
                                       o["causal"], o["sliding_window"], o["has_key"], _masking(o))
    return AttentionStage(o["score_mode"], o["use_scale"], o["causal"], o["query_features"], o.get("keras2", False))


def _masking(options: Dict[str, Any]) -> str:
    if not options.get("keras2"):
        return "keras3"
    return "keras2_robust" if options.get("robust_masking") else "keras2"
