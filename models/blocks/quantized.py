"""``QuantizedBiRNN``: an inference-only int8 copy of a ``BiLSTM`` / ``BiGRU`` / ``BiRNN`` (``models.quantize``).

What is quantized, and how (one rule, ``quantize_rows``, for weights and activations alike):
- weights ``W_ih``, ``W_hh``: int8 with one symmetric scale per output channel (gate row): ``m = max |w|`` over
  the row, ``q = clamp(round(w * (127 / m)), -127, 127)``, ``scale = m / 127``; biases stay float32;
- activations: each input row ``x_t`` and each state row ``h_{t-1}`` (every step) quantized the same way, on its
  own scale, just before its product: dynamic, symmetric int8;
- products exact in int32 (``csrc/q8_gemm.h``: AMX-INT8 tiles for whole 16-row tiles and ``vpdpbusd`` (AVX-512
  VNNI, or AVX-VNNI on an AVX2 CPU) on u8 x s8 with an exact offset correction where the CPU has them, s16
  ``vpmaddwd`` on AVX2 otherwise; no saturation, the same integers), then
  ``acc * (row scale * channel scale)``; states ``h``, ``c`` and the gate math in float32, as the float kernel.

Where it runs: the CPU kernel's int8 entry point (``csrc/q8_forward.h``, every layer and merge in one call) where
the kernel is available (Linux x86-64 with AVX2); elsewhere (ARM, a torch without MKL, ``cpu_kernel.disabled()``)
``reference_layer`` below, the same arithmetic in PyTorch with float64 accumulation (integer products exact there
too), slower but portable. ``reference_layer`` is also the tests' reference (``tests/blocks/test_quantize.py``).

Not supported (refused with a clear error): ``BiGRU(reset_after=False)``, gradients, TorchScript, ``torch.export``,
tracing (so ONNX export). ``torch.compile`` works: the kernel call is left to eager (one graph break).
"""

import ctypes
from typing import List, Optional, Tuple, Union

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ..merge import MERGE_MODES, merge_stacked, merged_size
from .base import _BiRNNBase
from .compile_boundary import eager_under_compile, exporting
from .cpu_kernel import q8
from .validation import check_hidden, check_input, check_lengths, check_not_lengths, dtype_name

_MERGE_CODES = {**{mode: code for code, mode in enumerate(MERGE_MODES)}, None: len(MERGE_MODES)}
_NO_SCRIPT = ("QuantizedBiRNN (models.quantize) cannot be compiled by TorchScript: its int8 kernel is a ctypes call. "
              "Script or export the float model, or serve the quantized one in eager mode or under torch.compile")
_NO_EXPORT = ("QuantizedBiRNN (models.quantize) cannot be traced or exported (torch.export, torch.jit.trace, ONNX): "
              "its int8 kernel is a ctypes call with no graph to record. Export the float model (ONNX Runtime can "
              "quantize its ONNX file: onnxruntime.quantization.quantize_dynamic), or serve this one eagerly")


def quantize_rows(values: Tensor) -> Tuple[Tensor, Tensor]:
    """The int8 rule over the last axis, in float32 exactly as the kernel computes it: ``values (..., K)`` ->
    ``(q (..., K) float32 holding integers in [-127, 127], scale (...,) float32)``. An all-zero row gets q = 0,
    scale 0; a row holding NaN or inf gets q = 0 and scale NaN (its outputs turn NaN, as in float). A row so small
    that ``127 / m`` overflows (m below about 3.7e-37) is quantized as ``round(v / m * 127)``: the same q without
    the overflow (``q8_forward.h`` states the rule)."""
    v = values.float()
    m = v.abs().amax(-1)
    finite = torch.isfinite(v).all(-1)
    usable = finite & (m > 0)
    safe_m = torch.where(usable, m, torch.ones_like(m))
    inv = torch.where(usable, 127.0 / safe_m, torch.zeros_like(m))
    tiny = usable & torch.isinf(inv)
    scaled = torch.where(tiny.unsqueeze(-1), v / safe_m.unsqueeze(-1) * 127.0, v * inv.unsqueeze(-1))
    q = torch.where(usable.unsqueeze(-1), scaled.round().clamp(-127.0, 127.0), torch.zeros_like(v))
    scale = torch.where(finite, m / 127.0, torch.full_like(m, float("nan")))
    return q, scale


def quantize_weight(weight: Tensor) -> Tuple[Tensor, Tensor]:
    """``(G, K)`` float -> ``(int8 (G, K), per-channel scale (G,) float32)`` by ``quantize_rows``."""
    if not bool(torch.isfinite(weight).all()):
        raise ValueError("quantize: a weight holds NaN or inf; an int8 copy of it would be meaningless")
    q, scale = quantize_rows(weight.detach().float())
    return q.to(torch.int8), scale


def reference_layer(mode: str, x: Tensor, lengths: Optional[Tensor], h0: Tensor, c0: Optional[Tensor],
                    weights: List[Optional[Tensor]], teacher: Optional[Tensor] = None
                    ) -> Tuple[Tensor, Tensor, Tensor]:
    """One bidirectional layer of the int8 arithmetic in PyTorch, accumulating in float64 (integer products
    exact). ``x (T, B, F)`` float32; ``h0``, ``c0`` ``(2, B, H)``; ``weights`` ``[w_ih (2, G, F) int8, s_ih (2, G),
    b_ih (2, G) or None, w_hh (2, G, H) int8, s_hh, b_hh or None]``. ``teacher (T, B, 2, H)``: where given, each
    step quantizes the teacher's previous state (a kernel's own output) instead of its own, so one step's exactness
    is checked without rounding differences carried from the steps before. Returns float64 ``out (T, B, 2, H)``
    (zero at padded steps), ``h_n``, ``c_n`` ``(2, B, H)`` (``c_n`` is ``h_n`` but for the LSTM)."""
    w_ih, s_ih, b_ih, w_hh, s_hh, b_hh = weights
    steps, batch, hidden = x.shape[0], x.shape[1], h0.shape[2]
    f64 = torch.float64
    valid_all = torch.ones(batch, dtype=torch.bool)
    out = torch.zeros((steps, batch, 2, hidden), dtype=f64)
    h_last, c_last = [], []
    xq, sx = quantize_rows(x)
    for d in range(2):
        proj = (xq.to(f64) @ w_ih[d].to(f64).T) * (sx.to(f64).unsqueeze(-1) * s_ih[d].to(f64))
        if b_ih is not None:
            proj = proj + b_ih[d].to(f64)
        b_h = b_hh[d].to(f64) if b_hh is not None else torch.zeros(w_hh.shape[1], dtype=f64)
        h = h0[d].to(f64)
        c = c0[d].to(f64) if c0 is not None else h
        for s in range(steps):
            t = s if d == 0 else steps - 1 - s
            valid = valid_all if lengths is None else t < lengths
            if teacher is not None:  # the state the kernel carried into step t
                if d == 0:
                    prev = teacher[t - 1, :, 0] if t > 0 else h0[0]
                else:
                    later = (t + 1 < lengths) if lengths is not None else torch.full((batch,), t + 1 < steps)
                    prev = torch.where(later.unsqueeze(1), teacher[min(t + 1, steps - 1), :, 1], h0[1])
                h = torch.where(valid.unsqueeze(1), prev.to(f64), h)
            hq, sh = quantize_rows(h.float())
            rec = (hq.to(f64) @ w_hh[d].to(f64).T) * (sh.to(f64).unsqueeze(-1) * s_hh[d].to(f64)) + b_h
            p = proj[t]
            if mode == "LSTM":
                i, f, g, o = (p + rec).chunk(4, dim=1)
                c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h_new = torch.sigmoid(o) * torch.tanh(c_new)
                c = torch.where(valid.unsqueeze(1), c_new, c)
            elif mode == "GRU":
                r, z = torch.sigmoid(p[:, :2 * hidden] + rec[:, :2 * hidden]).chunk(2, dim=1)
                n = torch.tanh(p[:, 2 * hidden:] + r * rec[:, 2 * hidden:])
                h_new = n + z * (h - n)
            elif mode == "RNN_TANH":
                h_new = torch.tanh(p + rec)
            else:
                h_new = torch.relu(p + rec)
            h = torch.where(valid.unsqueeze(1), h_new, h)
            out[t, :, d] = torch.where(valid.unsqueeze(1), h_new, torch.zeros_like(h_new))
        h_last.append(h)
        c_last.append(c)
    h_n = torch.stack(h_last)
    return out, h_n, torch.stack(c_last) if mode == "LSTM" else h_n


class QuantizedBiRNN(nn.Module):
    """An int8 ``BiLSTM`` / ``BiGRU`` / ``BiRNN`` for inference (build it with ``models.quantize`` or
    ``QuantizedBiRNN.from_float``). Same call as the float block: ``forward(input, hx=None, *, lengths=None)`` ->
    ``(output, (h_n, c_n))`` for the LSTM, ``(output, h_n)`` otherwise; input ``(T, B, input_size)``
    (``(B, T, input_size)`` with ``batch_first``) or unbatched ``(T, input_size)``, float32 on the CPU; output
    ``(T, B, 2H)`` after a last ``concat``, ``(T, B, 2, H)`` after ``None``, else ``(T, B, H)``.

    Buffers (in ``state_dict``): per layer ``l`` ``weight_ih_l{l}``, ``weight_hh_l{l}`` int8 ``(2, G, K)`` (forward,
    backward), ``scale_ih_l{l}``, ``scale_hh_l{l}`` float32 ``(2, G)``, and with biases ``bias_ih_l{l}``,
    ``bias_hh_l{l}`` float32 ``(2, G)``."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int,
                 merge_modes: List[Optional[str]], bias: bool = True, batch_first: bool = False) -> None:
        super().__init__()
        if mode not in q8.CELL_CODES:
            raise ValueError(f"mode={mode!r} has no int8 path; expected one of {list(q8.CELL_CODES)}")
        self.mode = mode
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.merge_modes = list(merge_modes)
        self.bias = bias
        self.batch_first = batch_first
        self.bidirectional = True
        self.output_size = merged_size(self.merge_modes[-1], hidden_size)
        gates = {"LSTM": 4, "GRU": 3}.get(mode, 1) * hidden_size
        size = input_size
        for layer in range(num_layers):
            for kind, width in (("ih", size), ("hh", hidden_size)):
                self.register_buffer(f"weight_{kind}_l{layer}", torch.zeros((2, gates, width), dtype=torch.int8))
                self.register_buffer(f"scale_{kind}_l{layer}", torch.zeros((2, gates)))
                if bias:
                    self.register_buffer(f"bias_{kind}_l{layer}", torch.zeros((2, gates)))
            size = merged_size(self.merge_modes[layer], hidden_size)
        self._packed: Optional[q8.StackPlan] = None

    @classmethod
    def from_float(cls, block: nn.Module) -> "QuantizedBiRNN":
        """The int8 copy of a float ``BiLSTM`` / ``BiGRU`` / ``BiRNN`` (the block itself is not changed)."""
        if not isinstance(block, _BiRNNBase):
            raise TypeError(f"quantize expects a BiLSTM, BiGRU or BiRNN (or a model holding them), got "
                            f"{type(block).__name__}")
        if not block.reset_after:
            raise ValueError("quantize: BiGRU(reset_after=False) (Keras's original GRU) has no int8 path; quantize "
                             "a reset_after=True GRU, or serve this one in float32")
        weights = block._weights_now()
        if any(w.device.type != "cpu" for w in weights):
            raise ValueError(f"quantize: the block's weights are on {weights[0].device}; the int8 path runs on the "
                             f"CPU: quantize(model.cpu())")
        made = cls(block.mode, block.input_size, block.hidden_size, block.num_layers, block.merge_modes, block.bias,
                   block.batch_first)
        per = 4 if block.bias else 2
        with torch.no_grad():
            for layer in range(block.num_layers):
                fw = weights[2 * per * layer:2 * per * layer + per]
                bw = weights[2 * per * layer + per:2 * per * (layer + 1)]
                for index, kind in ((0, "ih"), (1, "hh")):
                    pairs = [quantize_weight(fw[index]), quantize_weight(bw[index])]
                    getattr(made, f"weight_{kind}_l{layer}").copy_(torch.stack([q for q, _ in pairs]))
                    getattr(made, f"scale_{kind}_l{layer}").copy_(torch.stack([s for _, s in pairs]))
                    if block.bias:
                        getattr(made, f"bias_{kind}_l{layer}").copy_(torch.stack([fw[index + 2], bw[index + 2]]))
        return made.eval()

    def extra_repr(self) -> str:
        return (f"{self.mode}, {self.input_size}, {self.hidden_size}, num_layers={self.num_layers}, "
                f"merge_mode={self.merge_modes}, int8" + ("" if self.bias else ", bias=False")
                + (", batch_first=True" if self.batch_first else ""))

    # -- what the kernel reads, prepared once (dropped when buffers change: .to(), load_state_dict) ----------------
    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        self._packed = None
        return super()._apply(fn, recurse)

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self._packed = None
        super()._load_from_state_dict(*args, **kwargs)

    def layer_weights(self, layer: int) -> List[Optional[Tensor]]:
        """Layer ``layer`` for ``reference_layer``: ``[w_ih, s_ih, b_ih, w_hh, s_hh, b_hh]``; the biases are kept
        apart for the GRU (``r`` gates ``b_hn``) and summed into ``b_ih`` otherwise (``b_hh`` then None)."""
        get = lambda name: getattr(self, f"{name}_l{layer}")  # noqa: E731
        b_ih = b_hh = None
        if self.bias:
            b_ih, b_hh = get("bias_ih"), get("bias_hh")
            if self.mode != "GRU":
                b_ih, b_hh = b_ih + b_hh, None
        return [get("weight_ih"), get("scale_ih"), b_ih, get("weight_hh"), get("scale_hh"), b_hh]

    def input_sizes(self) -> List[int]:
        """Each layer's input width."""
        return [self.input_size] + [merged_size(m, self.hidden_size) for m in self.merge_modes[:-1]]

    def kernel_plan(self, lib: "ctypes.CDLL", product: Optional[str] = None) -> "q8.StackPlan":
        """What ``q8.forward_stack`` reads: the weights packed for ``product`` (default: the fastest ``lib`` has
        here). The default plan is kept (dropped when buffers change); another product's is built per call
        (tests, benchmarks: also where they load a second library, whose best product may be another)."""
        if product is not None and (self._packed is None or product != self._packed.product):
            return self._plan_for(lib, product)
        if self._packed is None:
            self._packed = self._plan_for(lib, None)
        return self._packed

    def _plan_for(self, lib: "ctypes.CDLL", product: Optional[str]) -> "q8.StackPlan":
        layers = [self.layer_weights(layer) for layer in range(self.num_layers)]
        return q8.plan(lib, layers, self.input_sizes(), [_MERGE_CODES[m] for m in self.merge_modes], product)

    # -- TorchScript, tracing, export: refused with the reason -----------------------------------------------------
    def __prepare_scriptable__(self) -> nn.Module:
        raise RuntimeError(_NO_SCRIPT)

    # -- forward ---------------------------------------------------------------------------------------------------
    def forward(self, input: Union[Tensor, PackedSequence], hx: Union[Tensor, Tuple[Tensor, Tensor], None] = None,
                *, lengths: Optional[Tensor] = None
                ) -> Tuple[Tensor, Union[Tensor, Tuple[Tensor, Tensor]]]:
        if torch.jit.is_tracing() or exporting():
            raise RuntimeError(_NO_EXPORT)
        if isinstance(input, PackedSequence):
            raise TypeError("QuantizedBiRNN takes a padded tensor and lengths=, not a PackedSequence "
                            "(torch.nn.utils.rnn.pad_packed_sequence gives both)")
        if not isinstance(input, Tensor):
            raise TypeError(f"input must be a tensor, got {type(input).__name__}")
        if lengths is not None and not isinstance(lengths, Tensor):
            raise TypeError(f"lengths must be an integer tensor (B,), got {type(lengths).__name__}: {lengths!r}")
        h0: Optional[Tensor] = None
        c0: Optional[Tensor] = None
        if self.mode == "LSTM":
            if hx is not None:
                if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                    raise TypeError("hx of an LSTM must be a tuple (h_0, c_0) of tensors (2 * num_layers, B, H)")
                h0, c0 = hx
                check_not_lengths(h0, "hx[0]")
        elif hx is not None:
            if not isinstance(hx, Tensor):
                raise TypeError(f"hx of a {self.mode} block must be a tensor (2 * num_layers, B, H), got "
                                f"{type(hx).__name__}")
            check_not_lengths(hx, "hx")
            h0 = hx
        out, h_n, c_n = self._run(input, h0, c0, lengths)
        return (out, (h_n, c_n)) if self.mode == "LSTM" else (out, h_n)

    def run(self, input: Tensor, h0: Optional[Tensor] = None, c0: Optional[Tensor] = None,
            lengths: Optional[Tensor] = None) -> Tuple[Tensor, Tensor, Tensor]:
        """The float blocks' ``run``: ``(output, h_n, c_n)`` for all three cells (``c_n`` is ``h_n`` for GRU/RNN),
        so a module that calls ``block.run`` (an imported Keras model) works on the int8 copy too."""
        if torch.jit.is_tracing() or torch.compiler.is_exporting():
            raise RuntimeError(_NO_EXPORT)
        if self.mode != "LSTM" and c0 is not None:
            raise ValueError(f"c0 is the LSTM's cell state; {self.mode} blocks take h0 only")
        for name, state in (("h0", h0), ("c0", c0)):
            if state is not None:
                check_not_lengths(state, name)
        if lengths is not None and not isinstance(lengths, Tensor):
            raise TypeError(f"lengths must be an integer tensor (B,), got {type(lengths).__name__}: {lengths!r}")
        return self._run(input, h0, c0, lengths)

    def _run(self, input: Tensor, h0: Optional[Tensor], c0: Optional[Tensor], lengths: Optional[Tensor]
             ) -> Tuple[Tensor, Tensor, Tensor]:
        """Checks, then the kernel (or the portable path): every check before any compute."""
        check_input(input, self.input_size, self.batch_first)
        if input.dtype != torch.float32:
            raise TypeError(f"the int8 blocks compute in float32: input has dtype {dtype_name(input.dtype)}; pass "
                            f"input.float()")
        if input.device.type != "cpu":
            raise ValueError(f"input is on device {input.device}; the int8 blocks run on the CPU: input.cpu()")
        batched = input.dim() == 3
        if not batched:
            input = input.unsqueeze(0 if self.batch_first else 1)
            if lengths is not None:
                if lengths.numel() != 1 or lengths.dim() > 1:
                    raise ValueError(f"lengths for unbatched input must hold one length (shape () or (1,)), got "
                                     f"shape {list(lengths.shape)}")
                lengths = lengths.reshape(1)
        x = input.transpose(0, 1) if self.batch_first else input
        steps, batch = x.shape[0], x.shape[1]
        if lengths is not None:
            lengths = check_lengths(lengths, batch, steps).cpu().contiguous()
        shape = [2 * self.num_layers, batch, self.hidden_size]
        given = shape if batched else [2 * self.num_layers, self.hidden_size]
        states: List[Tensor] = []
        for state, name in ((h0, "hx[0]" if self.mode == "LSTM" else "hx"), (c0, "hx[1]")):
            if state is None:
                states.append(x.new_zeros(shape))
                continue
            check_hidden(state, given, name, x)
            states.append((state if batched else state.unsqueeze(1)).contiguous())
        if batch == 0:
            out = x.new_zeros((steps, 0, *([2, self.hidden_size] if self.merge_modes[-1] is None
                                             else [self.output_size])))
            h_n = x.new_zeros(shape)
            c_n = h_n.clone() if self.mode == "LSTM" else h_n
        else:
            out, h_n, c_n = _compute(self, x.contiguous(), lengths, states[0], states[1])
        if self.batch_first:
            out = out.transpose(0, 1)
        if not batched:
            axis = 0 if self.batch_first else 1
            out, h_n, c_n = out.squeeze(axis), h_n.squeeze(1), c_n.squeeze(1)
        return out, h_n, c_n


def _compute_eager(block: QuantizedBiRNN, x: Tensor, lengths: Optional[Tensor], h0: Tensor, c0: Tensor
             ) -> Tuple[Tensor, Tensor, Tensor]:
    """``x (T, B, F)`` float32 contiguous -> ``(out, h_n, c_n)``: one kernel call, or the portable path."""
    with torch.no_grad():
        lib = q8.library() if _kernel_allowed() else None
        hidden, lstm = block.hidden_size, block.mode == "LSTM"
        if lib is not None:
            sizes = block.input_sizes()
            steps, batch = x.shape[0], x.shape[1]
            gates = {"LSTM": 4, "GRU": 3}.get(block.mode, 1) * hidden
            macs = 2 * steps * batch * gates * (sum(sizes) + block.num_layers * hidden)
            # Two threads (one a direction) only where the work pays for waking the second (a guess: ~1 ms of work).
            threads = 2 if torch.get_num_threads() >= 2 and macs >= 20_000_000 else 1
            out, h_n, c_n = q8.forward_stack(lib, block.mode, x, lengths, h0, c0 if lstm else None,
                                             block.kernel_plan(lib), hidden, threads)
            if block.merge_modes[-1] is None:
                out = out.unflatten(-1, (2, hidden))
        else:
            hs: List[Tensor] = []
            cs: List[Tensor] = []
            for layer in range(block.num_layers):
                pair = slice(2 * layer, 2 * layer + 2)
                raw, h, c = reference_layer(block.mode, x, lengths, h0[pair], c0[pair] if lstm else None,
                                            block.layer_weights(layer))
                x = merge_stacked(raw.float().flatten(2), block.merge_modes[layer], hidden).contiguous()
                hs.append(h.float())
                cs.append(c.float())
            out, h_n, c_n = x, torch.cat(hs), torch.cat(cs)
        return out, h_n, c_n


# One graph break under torch.compile: the C call and the portable path run as eager PyTorch.
_compute = eager_under_compile("quantized_compute", _compute_eager)


def _kernel_allowed() -> bool:
    """The kernel unless ``models.blocks.cpu_kernel.disabled()`` is in force on this thread."""
    from . import cpu_kernel

    return not getattr(cpu_kernel._switch, "off", False)
