"""bfloat16 inference on the CPU kernel (``csrc/bf16_forward.h``): bf16 weights and inputs, float32 accumulation,
float32 states and gate math, on CPUs with AVX512_BF16 (``vdpbf16ps``).

When a block takes it (``applies``): inference (no gradient needed, no dropout to apply), eager, on the CPU, where
the loaded kernel is the ``avx512`` build and the CPU reports AVX512_BF16, and either

- under ``torch.autocast("cpu", dtype=torch.bfloat16)`` with float32 weights, every cell, returning what the
  ``nn.*`` module returns under that autocast: bf16 output, ``h_n`` and ``c_n`` for the LSTM and the RNNs (oneDNN's
  bf16 LSTM, bf16 products for ``nn.RNN``), float32 for the GRUs (``nn.GRU`` is on no autocast list: its products
  run in bf16 but it returns float32, as ``BiGRU`` always did under autocast);
- or for a bf16 module (``block.to(torch.bfloat16)``) on bf16 input, outside autocast, every cell (LSTM, GRU both
  reset modes, tanh/relu RNN): bf16 output and states, as ``nn.*`` in bf16 return them.

Elsewhere (a CPU without AVX512_BF16, ``BIRNN_ZOO_CPU_CAPABILITY=avx2`` or ``none``, ``cpu_kernel.disabled()``,
training, tracing/compiling/exporting) the blocks keep PyTorch's paths: oneDNN's bf16 LSTM under autocast.

AMX tiles: on a CPU with AMX-TILE and AMX-BF16 (Sapphire Rapids and later) where Linux grants the process the tile
state, the products run on ``_tile_dpbf16ps`` where they fill 16-row tiles (every input product; the step products
from ``AMX_MIN_BATCH`` rows), the rest on ``vdpbf16ps`` (``csrc/bf16_forward.h``); the same packed weights serve both.
``BIRNN_ZOO_BF16_AMX=0`` (read at each call) or ``with bf16.without_amx():`` keeps a process or a block of code on
``vdpbf16ps`` alone, to compare the two on one CPU; ``amx_supported()`` / ``amx_used()`` say what a call takes.

The math (``csrc/bf16_forward.h``; ``tests/helpers/bf16_reference.py`` is its float64 mirror): weights rounded to bf16
once, each step's input rows and ``h_{t-1}`` rounded to bf16 (round to nearest even) before their products, float32
sums, biases float32, gates and states float32, merges float32; the returned output and states are rounded to bf16
once. Error against the float32 blocks: ``benchmarks/RESULTS.md`` ("bf16 inference").

The packed weights are prepared once per module and kept while every weight is the same tensor with the same
version (as ``inference.py``'s plan; eval mode only; ``train()``/``eval()``/``to()`` drop it).
"""

import contextlib
import ctypes
import os
import threading
from typing import Iterator, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor, nn

from ...merge import MERGE_MODES, merged_size
from .. import cpu_kernel
from . import inference
from .abi import ptr
from .plans import ModulePlans

_P = ctypes.c_void_p
_I32 = ctypes.c_int32

# The bf16 path's cell codes (csrc/bf16_forward.h, bf16::Cell).
CELL_CODES = {"LSTM": 0, "GRU": 1, "GRU_RESET_BEFORE": 2, "RNN_TANH": 3, "RNN_RELU": 4}
GATES = {"LSTM": 4, "GRU": 3, "GRU_RESET_BEFORE": 3, "RNN_TANH": 1, "RNN_RELU": 1}
# What each cell returns under CPU bf16 autocast, as nn.LSTM / nn.RNN (bf16) and nn.GRU (float32) return it.
AUTOCAST_DTYPES = {"LSTM": torch.bfloat16, "GRU": torch.float32, "GRU_RESET_BEFORE": torch.float32,
                   "RNN_TANH": torch.bfloat16, "RNN_RELU": torch.bfloat16}
# The step product h (B x H) @ W_hh^T runs on AMX tiles from this many rows. The C code tiles whole 16-row tiles
# only (the rows past them run on vdpbf16ps), so below 16 nothing would be tiled anyway; not tuned above 16 (B = 16
# and 64 measured: benchmarks/RESULTS.md, "bf16").
AMX_MIN_BATCH = 16
AMX_ENV = "BIRNN_ZOO_BF16_AMX"
_MERGE_CODES = {**{mode: code for code, mode in enumerate(MERGE_MODES)}, None: len(MERGE_MODES)}


class Bf16Args(ctypes.Structure):
    """One bf16 stack call's sizes and addresses (``csrc/bf16_forward.h`` documents the layouts)."""

    _fields_ = [
        ("cell", _I32), ("steps", _I32), ("batch", _I32), ("hidden", _I32), ("layers", _I32), ("threads", _I32),
        ("x", _P), ("lengths", _P), ("h0", _P), ("c0", _P), ("out", _P), ("h_n", _P), ("c_n", _P),
        ("input_sizes", _P), ("merges", _P), ("weights", _P), ("amx_min_batch", _I32),
    ]


def _declared(lib: ctypes.CDLL) -> ctypes.CDLL:
    """Declare the bf16 entry points once per loaded library and check ``Bf16Args``'s layout (``OSError`` on a
    mismatch: a library and a Python package from different versions)."""
    if getattr(lib, "_bf16_declared", False):
        return lib
    int64 = ctypes.c_int64
    lib.birnn_bf16_args_layout.argtypes = [ctypes.POINTER(int64), ctypes.POINTER(int64)]
    lib.birnn_bf16_args_layout.restype = None
    lib.birnn_bf16_supported.argtypes = []
    lib.birnn_bf16_supported.restype = ctypes.c_int
    lib.birnn_bf16_amx_supported.argtypes = []
    lib.birnn_bf16_amx_supported.restype = ctypes.c_int
    lib.birnn_bf16_forward_stack.argtypes = [ctypes.POINTER(Bf16Args)]
    lib.birnn_bf16_forward_stack.restype = None
    size, last = int64(), int64()
    lib.birnn_bf16_args_layout(ctypes.byref(size), ctypes.byref(last))
    if size.value != ctypes.sizeof(Bf16Args) or last.value != Bf16Args.amx_min_batch.offset:
        raise OSError(f"the CPU kernel's Bf16Args is {size.value} bytes (last field at {last.value}) but "
                      f"bf16.Bf16Args is {ctypes.sizeof(Bf16Args)} (at {Bf16Args.amx_min_batch.offset}): "
                      "csrc/bf16_forward.h and bf16.py disagree")
    lib._bf16_supported = bool(lib.birnn_bf16_supported())
    # asks Linux for the tile state once (arch_prctl); only where the bf16 path runs at all
    lib._bf16_amx = lib._bf16_supported and bool(lib.birnn_bf16_amx_supported())
    lib._bf16_declared = True
    return lib


def library() -> Optional[ctypes.CDLL]:
    """The loaded kernel when it can run bf16 here (the ``avx512`` build on a CPU with AVX512_BF16), else None."""
    if not cpu_kernel.available() or cpu_kernel.capability() != "avx512":
        return None
    lib = _declared(cpu_kernel._kernel())
    return lib if lib._bf16_supported else None


def supported() -> bool:
    """Whether this process runs bf16 inference on the kernel (``library`` is not None)."""
    return library() is not None


def amx_supported() -> bool:
    """Whether this process's bf16 kernel can run on AMX tiles (``supported()``, a CPU with AMX-TILE and AMX-BF16,
    and Linux granted the tile state)."""
    lib = library()
    return lib is not None and lib._bf16_amx


_amx_off = threading.local()  # without_amx()'s depth on this thread


@contextlib.contextmanager
def without_amx() -> Iterator[None]:
    """Within this block (this thread), bf16 calls run on ``vdpbf16ps`` alone, as on a CPU without AMX."""
    _amx_off.depth = getattr(_amx_off, "depth", 0) + 1
    try:
        yield
    finally:
        _amx_off.depth -= 1


def amx_used() -> bool:
    """Whether a bf16 call made now runs its products on AMX tiles: ``amx_supported()``, not within
    ``without_amx()``, and ``$BIRNN_ZOO_BF16_AMX`` unset, empty or ``1`` (``0``: ``vdpbf16ps`` alone; anything else
    raises ``ValueError``)."""
    setting = os.environ.get(AMX_ENV, "").strip()
    if setting not in ("", "0", "1"):
        raise ValueError(f"{AMX_ENV}={setting!r} is not a setting; expected 0 (vdpbf16ps alone) or 1 (AMX where "
                         "the CPU has it)")
    return setting != "0" and not getattr(_amx_off, "depth", 0) and amx_supported()


def padded(hidden: int) -> int:
    """A gate block's channels in the packed layout: ``hidden`` rounded up to 16."""
    return (hidden + 15) // 16 * 16


def pack(weight: Tensor, gates: int) -> Tensor:
    """``(2, gates * H, K)`` -> bf16 bits ``(2, gates * Hp / 16, ceil(K / 2), 16, 2)`` as int16 (rounded to nearest
    even, each gate block zero padded to ``Hp`` channels, ``K`` to an even count): ``csrc/bf16_forward.h``'s
    layout."""
    directions, rows, inputs = weight.shape
    hidden, hp, kp = rows // gates, padded(rows // gates), (inputs + 1) // 2
    full = torch.zeros((directions, gates, hp, 2 * kp), dtype=torch.bfloat16)
    full[:, :, :hidden, :inputs] = weight.reshape(directions, gates, hidden, inputs)
    return full.reshape(directions, gates * hp // 16, 16, kp, 2).permute(0, 1, 3, 2, 4).contiguous().view(torch.int16)


def pad_bias(bias: Tensor, gates: int) -> Tensor:
    """float32 ``(2, gates * H)`` -> ``(2, gates * Hp)``, each gate block zero padded."""
    directions, rows = bias.shape
    hidden = rows // gates
    full = torch.zeros((directions, gates, padded(hidden)), dtype=torch.float32)
    full[:, :, :hidden] = bias.reshape(directions, gates, hidden)
    return full.reshape(directions, -1)


def layer_weights(mode: str, weights: List[Tensor], has_biases: bool) -> List[Optional[Tensor]]:
    """One layer's ``[w_ih, w_hh, b_ih, b_hh]`` of both directions (``nn.LSTM``'s order) -> ``w_ih`` packed,
    ``b_ih``, ``w_hh`` packed, ``b_hh`` (float32 padded; ``b_ih + b_hh`` folded in float32 but for the GRU, whose
    ``b_hh`` stays apart; None without biases)."""
    gates = GATES[mode]
    per = 4 if has_biases else 2
    both = [weights[:per], weights[per:]]
    w_ih = pack(torch.stack([d[0] for d in both]), gates)
    w_hh = pack(torch.stack([d[1] for d in both]), gates)
    if not has_biases:
        return [w_ih, None, w_hh, None]
    b_ih = torch.stack([d[2] for d in both]).float()
    b_hh = torch.stack([d[3] for d in both]).float()
    if mode == "GRU":
        return [w_ih, pad_bias(b_ih, gates), w_hh, pad_bias(b_hh, gates)]
    return [w_ih, pad_bias(b_ih + b_hh, gates), w_hh, None]


class _Plan(NamedTuple):
    """A module's packed weights (kept alive here) and the arrays the C code reads, with what the weights were."""

    mode: str
    weights: List[Tensor]
    versions: List[int]
    packed: List[List[Optional[Tensor]]]
    input_sizes: Tensor
    merges: Tensor
    addresses: Tensor

    def matches(self, mode: str, weights: List[Tensor], merges: List[int]) -> bool:
        return (mode == self.mode and len(weights) == len(self.weights)
                and all(w is p for w, p in zip(weights, self.weights, strict=True))
                and [w._version for w in weights] == self.versions and merges == self.merges.tolist())


_plans = ModulePlans()  # {module: _Plan}


def share(module: nn.Module, twin: nn.Module) -> None:
    """Let ``twin``, ``module``'s TorchScript twin (the same ``__dict__``), read ``module``'s packed bf16 weights."""
    _plans.share(module, twin)


def clear(module: nn.Module) -> None:
    """Drop ``module``'s packed bf16 weights (the next call packs them again), and its twins'."""
    _plans.drop(module)


def _plan_for(module: nn.Module, mode: str, weights: List[Tensor], has_biases: bool, merges: List[int]) -> _Plan:
    plan = _plans.get(module)
    if plan is not None and not module.training and plan.matches(mode, weights, merges):
        return plan
    per = (4 if has_biases else 2) * 2
    with torch.no_grad():
        packed = [layer_weights(mode, weights[i * per:(i + 1) * per], has_biases) for i in range(len(merges))]
    input_sizes = [weights[i * per].shape[1] for i in range(len(merges))]
    addresses = torch.tensor([ptr(t) or 0 for layer in packed for t in layer], dtype=torch.int64)
    # inference tensors (weights made under torch.inference_mode()) have no version counter to tell a change by:
    # packed for this call only
    kept = not module.training and not any(w.is_inference() for w in weights)
    plan = _Plan(mode, list(weights), [w._version for w in weights] if kept else [], packed,
                 torch.tensor(input_sizes, dtype=torch.int32), torch.tensor(merges, dtype=torch.int32), addresses)
    if kept:
        _plans.put(module, plan)
    return plan


def onednn_wins(batch: int, hidden: int, threads: int, amx: bool = False, amx_cpu: bool = False) -> bool:
    """Where oneDNN's bf16 LSTM measured faster than the kernel's (``benchmarks.bf16``, ``benchmarks/RESULTS.md``),
    for a call of ``batch`` rows, ``hidden`` units, ``threads`` threads; ``amx``: the kernel runs on AMX tiles
    (``amx_used()``); ``amx_cpu``: the CPU has AMX (oneDNN then uses its tiles, whether or not the kernel does).

    - Kernel on AMX tiles (three runs on a 2-core AMX Xeon, KVM's family 6 model 167, load average 3.2-4.8):
      never. The kernel took 0.08-0.85x oneDNN's time at B = 1 and 16 and 0.43-1.07x at B = 64 (parity within those
      runs' noise: 4 of 18 cells of B = 64 above 1.0, by at most 1.07x).
    - A CPU with AMX, the kernel on ``vdpbf16ps`` (``BIRNN_ZOO_BF16_AMX=0``, ``without_amx()``; same Xeon, before
      the AMX path and beside it, three runs): B >= 16, where the kernel took 2.1-7.0x oneDNN's time (``vdpbf16ps``
      there is slower than the float32 kernel); at B = 1 it took 0.14-1.00x.
    - No AMX (one run on a 2-core AMD EPYC Zen 4 at load average 7-8): two threads at B >= 64 (1.21-1.26x the time;
      H = 256: 0.98x) and at B = 16, H = 512 (1.21x); everywhere else the kernel was faster or level (0.19-1.07x).
      oneDNN splits its big GEMMs over both threads; the kernel runs one direction a thread."""
    if amx:
        return False
    if amx_cpu:
        return batch >= 16
    return threads >= 2 and (batch >= 64 or (batch >= 16 and hidden >= 512))


_cpu_amx: Optional[bool] = None


def cpu_has_amx() -> bool:
    """Whether /proc/cpuinfo reports ``amx_bf16`` (read once): oneDNN's bf16 LSTM runs on tiles there."""
    global _cpu_amx
    if _cpu_amx is None:
        from .build import _cpu_flags

        _cpu_amx = "amx_bf16" in _cpu_flags()
    return _cpu_amx


def applies(x: Tensor, mode: str, weights: List[Tensor]) -> bool:
    """Whether a block runs this call on the bf16 kernel (the module docstring says when; for the LSTM not where
    ``onednn_wins``, unless ``cpu_kernel.forced()``)."""
    if mode not in CELL_CODES or x.device.type != "cpu":
        return False
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or torch.compiler.is_exporting():
        return False
    # the dtypes first: every float32 call outside autocast asks this and is answered here
    if torch.is_autocast_enabled("cpu"):
        if torch.get_autocast_dtype("cpu") != torch.bfloat16:
            return False
        if x.dtype not in (torch.float32, torch.bfloat16) or any(w.dtype != torch.float32 for w in weights):
            return False
    elif x.dtype != torch.bfloat16 or any(w.dtype != torch.bfloat16 for w in weights):
        return False
    if cpu_kernel._switch.off or cpu_kernel._in_functorch_transform() or not inference.usable(x, weights):
        return False
    if library() is None:
        return False
    return not (mode == "LSTM" and not cpu_kernel._switch.forced
                and onednn_wins(x.shape[1] if x.dim() == 3 else 1, weights[1].shape[1], torch.get_num_threads(),
                                amx_used(), cpu_has_amx()))


def run(module: nn.Module, mode: str, x: Tensor, lengths: Optional[Tensor], h0: Tensor, c0: Tensor,
        weights: List[Tensor], has_biases: bool, merge_modes: List[Optional[str]], hidden: int
        ) -> Tuple[Tensor, Tensor, Tensor]:
    """Every layer of a block on time-major ``x (T, B, F)`` (right-padded when ``lengths (B,)``), bf16 products.
    ``h0``/``c0`` ``(2L, B, H)`` (``c0`` unused but for the LSTM); ``weights`` in ``nn.LSTM``'s flat order.
    Returns ``out (T, B, out)`` (zero at padded steps), ``h_n``, ``c_n (2L, B, H)`` (``c_n`` is ``h_n`` but for the
    LSTM), bf16, or under autocast in the cell's ``AUTOCAST_DTYPES``."""
    lib = library()
    if lib is None:
        raise RuntimeError("bf16 inference needs the CPU kernel's avx512 build on a CPU with AVX512_BF16; "
                           "models.blocks.cpu_kernel.bf16.supported() is False here")
    layers = len(merge_modes)
    merges = [_MERGE_CODES[merge] for merge in merge_modes]
    plan = _plan_for(module, mode, weights, has_biases, merges)
    steps, batch, features = x.shape
    if features != int(plan.input_sizes[0]):
        raise ValueError(f"layer 0 takes {int(plan.input_sizes[0])} features, got {features}")
    for name, state in (("h0", h0), ("c0", c0)):
        if list(state.shape) != [2 * layers, batch, hidden]:
            raise ValueError(f"{name} must have shape {[2 * layers, batch, hidden]}, got {list(state.shape)}")
    lstm = mode == "LSTM"
    x32 = x.to(torch.float32).contiguous()
    h0 = h0.to(torch.float32).contiguous()
    c0 = c0.to(torch.float32).contiguous() if lstm else None
    length_address = None
    if lengths is not None:
        lengths = lengths.to(device="cpu", dtype=torch.int64).contiguous()
        if list(lengths.shape) != [batch]:
            raise ValueError(f"lengths must have shape [{batch}], got {list(lengths.shape)}")
        if batch and int(lengths.min()) < steps:  # every row full length: the call without lengths
            length_address = lengths.data_ptr()
    out = torch.empty((steps, batch, merged_size(merge_modes[-1], hidden)), dtype=torch.float32)
    h_n = torch.empty((2 * layers, batch, hidden), dtype=torch.float32)
    c_n = torch.empty_like(h_n) if lstm else None
    args = Bf16Args(cell=CELL_CODES[mode], steps=steps, batch=batch, hidden=hidden, layers=layers,
                    threads=max(1, torch.get_num_threads()), x=ptr(x32), lengths=length_address, h0=ptr(h0),
                    c0=ptr(c0), out=ptr(out), h_n=ptr(h_n), c_n=ptr(c_n), input_sizes=ptr(plan.input_sizes),
                    merges=ptr(plan.merges), weights=ptr(plan.addresses),
                    amx_min_batch=AMX_MIN_BATCH if amx_used() else 0)
    lib.birnn_bf16_forward_stack(ctypes.byref(args))
    dtype = AUTOCAST_DTYPES[mode] if torch.is_autocast_enabled("cpu") else torch.bfloat16
    h_n = h_n.to(dtype)
    out = out.to(dtype)
    if merge_modes[-1] is None:  # both directions kept apart: (T, B, 2, H), the same bytes
        out = out.unflatten(-1, (2, hidden))
    return out, h_n, c_n.to(dtype) if c_n is not None else h_n
