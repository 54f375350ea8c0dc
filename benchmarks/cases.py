"""The variants timed on one configuration, each as an ``(inference, training step)`` pair of closures.

Inference is a forward under ``torch.inference_mode``; a training step is ``zero_grad`` + forward +
``output.sum().backward()`` (no optimizer). Low-precision variants wrap the forward in ``torch.autocast``.
"""

import contextlib
import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Dict, List, Optional

import torch
from torch import Tensor, nn

from models import BiGRU, BiLSTM

from .configs import Config, forward_flops
from .keras_stack import KerasStack, keras_available
from .variants import AtenPath, FlipBiRNN, LoopBiRNN, fused_baseline

_BLOCKS = {"LSTM": BiLSTM, "GRU": BiGRU}
_LOW = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class Case:
    """One timed variant: closures plus what the report needs to compare it."""

    name: str
    family: str
    merge_mode: str
    precision: str
    infer: Callable[[], None]
    train: Callable[[], None]
    flops: float
    compare_to: Optional[str] = None  # besides the fused baseline, e.g. the same block without lengths
    setup: Dict[str, float] = field(default_factory=dict)  # compile seconds etc.


def _autocast(device: str, precision: str) -> Callable[[], ContextManager[None]]:
    if precision == "fp32":
        return contextlib.nullcontext
    return lambda: torch.autocast(device, dtype=_LOW[precision])


def _closures(model: nn.Module, args: List[object], device: str, precision: str,  # type: ignore[no-untyped-def]
              kwargs: Optional[Dict[str, object]] = None):
    cast = _autocast(device, precision)
    kwargs = kwargs or {}

    def infer() -> None:
        with torch.inference_mode(), cast():
            model(*args, **kwargs)

    def train() -> None:
        model.zero_grad(set_to_none=True)
        with cast():
            out = model(*args, **kwargs)[0]
        out.float().sum().backward()

    return infer, train


def _seconds(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def _one_thread(fn: Callable[[], None], threads: int) -> Callable[[], None]:
    """``fn`` run with one intra-op thread, the run's setting restored after."""

    def wrapped() -> None:
        torch.set_num_threads(1)
        try:
            fn()
        finally:
            torch.set_num_threads(threads)

    return wrapped


def padded_lengths(config: Config, device: str) -> Tensor:
    """Lengths spread evenly over ``[T/2, T]`` in shuffled order: about 25% padding."""
    lengths = torch.linspace(config.seq_len // 2, config.seq_len, config.batch).round().long()
    order = torch.randperm(config.batch, generator=torch.Generator().manual_seed(0))
    return lengths[order].to(device)


def build_cases(config: Config, device: str, threads: int, log: Callable[[str], None]) -> List[Case]:
    """Every variant the configuration's ``families`` ask for, built on ``device`` with shared inputs."""
    torch.manual_seed(0)
    c = config
    x = torch.randn(c.seq_len, c.batch, c.input_size, device=device)
    lengths = padded_lengths(c, device)
    fam = set(c.families)
    cases: List[Case] = []

    def add(name: str, family: str, mode: str, model: nn.Module, args: List[object], precision: str = "fp32",
            compare_to: Optional[str] = None, kwargs: Optional[Dict[str, object]] = None) -> Case:
        infer, train = _closures(model, args, device, precision, kwargs)
        case = Case(name, family, mode, precision, infer, train, forward_flops(c, mode), compare_to)
        cases.append(case)
        return case

    def block(mode: str) -> nn.Module:
        return _BLOCKS[c.cell](c.input_size, c.hidden, c.num_layers, merge_mode=mode).to(device)

    baseline = fused_baseline(c.cell, c.input_size, c.hidden, c.num_layers).to(device)
    add(f"fused nn.{c.cell}", "fused", "concat", baseline, [x])
    if "threads1" in fam and device == "cpu":
        one = add(f"fused nn.{c.cell} 1 thread", "threads1", "concat", baseline, [x])
        one.infer, one.train = _one_thread(one.infer, threads), _one_thread(one.train, threads)
    for mode in c.merge_modes:
        add(f"blocks[{mode}]", "blocks", mode, block(mode), [x])
    # Reduced sets: "one_length" (core sizes) and "one_mode" (GRU matrix) keep sum only where marked.
    some = ["sum"] if "one_length" in fam else list(c.merge_modes[:2])
    extra = ["sum"] if "one_mode" in fam else list(c.merge_modes)
    if "lengths" in fam:
        for mode in some:
            add(f"blocks[{mode}]+lengths", "lengths", mode, block(mode), [x], compare_to=f"blocks[{mode}]",
                kwargs={"lengths": lengths})
    if "aten" in fam and device == "cpu":
        # The same blocks with the CPU kernel switched off: the before/after of models/blocks/cpu_kernel/__init__.py.
        for mode in c.merge_modes:
            add(f"aten[{mode}]", "aten", mode, AtenPath(block(mode)), [x], compare_to=f"blocks[{mode}]")
        if "lengths" in fam:
            for mode in some:
                add(f"aten[{mode}]+lengths", "aten", mode, AtenPath(block(mode)), [x],
                    compare_to=f"blocks[{mode}]+lengths", kwargs={"lengths": lengths})
    if "script" in fam:
        for mode in extra:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                scripted = torch.jit.script(block(mode))
            add(f"script[{mode}]", "script", mode, scripted, [x], compare_to=f"blocks[{mode}]")
    if "compile" in fam:
        for mode in extra:
            case = add(f"compile[{mode}]", "compile", mode, torch.compile(block(mode)), [x],
                       compare_to=f"blocks[{mode}]")
            # First calls compile (one graph per grad mode); the steady-state call is subtracted in the report.
            case.setup["first_inference_s"] = _seconds(case.infer)
            case.setup["first_train_step_s"] = _seconds(case.train)
            log(f"  compiled {case.name}: first inference {case.setup['first_inference_s']:.1f}s, "
                f"first train step {case.setup['first_train_step_s']:.1f}s")
    hand = ["sum"] if "one_mode" in fam else list(c.merge_modes[:2])
    if "flip" in fam:
        for mode in hand:
            add(f"flip[{mode}]", "flip", mode, FlipBiRNN(c.cell, c.input_size, c.hidden, c.num_layers, mode).to(device),
                [x], compare_to=f"blocks[{mode}]")
    if "loop" in fam:
        for mode in hand:
            add(f"loop[{mode}]", "loop", mode, LoopBiRNN(c.cell, c.input_size, c.hidden, c.num_layers, mode).to(device),
                [x], compare_to=f"blocks[{mode}]")
    if "lowp" in fam:
        for precision in (["fp16", "bf16"] if device == "cuda" else ["bf16"]):
            fused_low = add(f"fused nn.{c.cell} {precision}", "lowp", "concat", baseline, [x], precision)
            try:  # e.g. oneDNN's bf16 LSTM on a CPU without AVX-512: "could not create a primitive descriptor"
                fused_low.infer()
            except RuntimeError as error:
                cases.remove(fused_low)
                log(f"  {precision} skipped: nn.{c.cell} under autocast raises on this machine "
                    f"({str(error).splitlines()[0][:90]})")
                continue
            for mode in (["concat", "sum"] if device == "cuda" else ["sum"]):
                add(f"blocks[{mode}] {precision}", "lowp", mode, block(mode), [x], precision,
                    compare_to=f"blocks[{mode}]")
    if "keras" in fam and keras_available():
        mode = "sum"
        stack = KerasStack(c.cell, c.seq_len, c.input_size, c.hidden, c.num_layers, mode)
        xb = x.transpose(0, 1).contiguous()

        def k_infer() -> None:
            with torch.inference_mode():
                stack(xb, training=False)

        def k_train() -> None:
            stack.zero_grad()
            stack(xb, training=True).sum().backward()

        cases.append(Case(f"keras[{mode}]", "keras", mode, "fp32", k_infer, k_train, forward_flops(c, mode),
                          compare_to=f"blocks[{mode}]"))
    return cases
