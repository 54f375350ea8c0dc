"""``compile_model(model, mode)``: one switch for eager, TorchScript, ``torch.compile`` and ``torch.export``.

| mode      | returns                                 | trains | shapes                      | notes                  |
|-----------|-----------------------------------------|--------|-----------------------------|------------------------|
| none      | the model itself                        | yes    | any                         |                        |
| script    | ``torch.jit.script(model)``             | yes    | any (B and T dynamic)       | fused kernels via      |
|           |                                         |        |                             | ``_VF``                |
| aot_eager | ``torch.compile(model, backend=...)``   | yes    | any (recompiles, then       | CPU: the kernel is a   |
| inductor  | ``torch.compile(model, backend=...)``   | yes    | dynamic after a recompile)  | custom op, no break;   |
|           |                                         |        |                             | else a graph break per |
|           |                                         |        |                             | fused RNN call         |
| export    | ``ExportedModel``: ``torch.export`` ->  | no     | dynamic B, ``T <= max_len`` | the graph              |
|           | ``.module()``, inputs padded to max_len |        |                             | ``export(..., "pt2")`` |
|           |                                         |        |                             | writes, run in process |

Why ``export`` means "export, then ``.module()``": it runs in process the graph the ``.pt2`` deployment
artifact holds (``models.export(model, path, "pt2")``, which adds the right-padding inside the program), so an
evaluation with ``mode="export"`` checks the artifact's numerics rather than a cousin of it. ``torch.export`` on torch
2.13 specialises the time dimension of ``aten.lstm``/``aten.gru``/``aten.rnn_*`` (plain ``nn.LSTM`` too), so the graph
has a static ``T = max_len`` and a dynamic batch; ``ExportedModel`` right-pads shorter inputs to ``max_len`` (tokens
with ``padding_idx``, features by passing ``lengths``), which leaves the logits unchanged because the classifier
only reads valid steps. The graph is captured in eval mode (dropout off), so it is for inference:
train with ``none``/``script``/``aot_eager``/``inductor`` and evaluate or serve with ``export``.
"""

from typing import Any, Optional, Tuple

import torch
from torch import Tensor, nn

from ..arguments import check_positive_int

COMPILE_MODES = ("none", "script", "aot_eager", "inductor", "export")
"""Modes accepted by ``compile_model``."""

DEFAULT_MAX_LEN = 256
"""Static sequence length of ``mode="export"`` / ``format="pt2"`` when ``max_len`` is not given."""


def _is_token_model(model: nn.Module) -> bool:
    return bool(getattr(model, "token_input", True))


def example_inputs(model: nn.Module, max_len: int, batch: int = 2) -> Tuple[Tensor, ...]:
    """Example inputs at ``T = max_len`` for ``torch.export``: ``(tokens,)`` or ``(features, lengths)``.

    Token models take ids in ``[1, vocab_size)`` (no padding, so no value is special); feature models take
    ``lengths`` as a second input so padded batches can be described to the exported graph.
    """
    device = next(iter(model.parameters())).device
    if _is_token_model(model):
        vocab = int(getattr(model, "vocab_size", 2) or 2)
        padding = int(getattr(model, "padding_idx", 0))
        tokens = torch.randint(1, max(vocab, 2), (batch, max_len), device=device)
        tokens = torch.where(tokens == padding, (padding + 1) % max(vocab, 2), tokens)
        return (tokens,)
    features = torch.randn(batch, max_len, int(model.input_size), device=device)
    return (features, torch.full((batch,), max_len, dtype=torch.long, device=device))


def export_program(model: nn.Module, max_len: int = DEFAULT_MAX_LEN) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` in eval mode with a dynamic batch and a static ``T = max_len``."""
    check_positive_int("max_len", max_len)
    inputs = example_inputs(model, max_len)
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    dynamic: Tuple[Any, ...] = ({0: batch},) if len(inputs) == 1 else ({0: batch}, {0: batch})
    was_training = model.training
    model.eval()
    try:
        return torch.export.export(model, inputs, dynamic_shapes=dynamic)
    finally:
        model.train(was_training)


class ExportedModel(nn.Module):
    """An exported classifier run in process: right-pads inputs to ``max_len`` and calls the exported graph.

    ``forward(x, lengths=None)`` takes the classifier's inputs with any batch and ``T <= max_len``. For token
    models the graph reads padding from the ids alone: ``lengths`` turns the steps beyond each length into
    ``padding_idx`` first (the classifier's own ``lengths`` also treats ``padding_idx`` ids inside the lengths as
    steps; rows without such ids give the same logits either way).
    """

    def __init__(self, program: torch.export.ExportedProgram, max_len: int, token_input: bool, padding_idx: int):
        super().__init__()
        self.program = program
        self.graph = program.module()
        self.max_len = max_len
        self.token_input = token_input
        self.padding_idx = padding_idx

    def forward(self, x: Tensor, lengths: Optional[Tensor] = None) -> Tensor:
        seq_len = x.shape[1]
        if seq_len > self.max_len:
            raise ValueError(f"input has T={seq_len} steps but the model was exported with max_len={self.max_len}")
        pad = self.max_len - seq_len
        if self.token_input:
            if lengths is not None:
                # Explicit lengths: steps beyond them are padding whatever their ids.
                x = x.masked_fill(~(torch.arange(seq_len, device=x.device) < lengths.unsqueeze(1)), self.padding_idx)
            x = nn.functional.pad(x, (0, pad), value=self.padding_idx)
            return self.graph(x)
        if lengths is None:
            lengths = torch.full((x.shape[0],), seq_len, dtype=torch.long, device=x.device)
        return self.graph(nn.functional.pad(x, (0, 0, 0, pad)), lengths.long())


TORCH_COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
"""``torch.compile(mode=...)`` values ``compile_model(..., compile_mode=)`` passes through (``inductor`` only)."""

TORCH_COMPILE_OPTIONS = ("dynamic", "fullgraph", "options", "disable")
"""Other ``torch.compile`` keyword arguments ``compile_model`` passes through."""


def script(model: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script(model)``, leaving ``model``'s own modules in place.

    Why: ``torch.jit.script`` prepares every submodule with its ``__prepare_scriptable__`` and writes what that
    returns into the parent's ``_modules``, so each block inside ``model`` would be swapped for its TorchScript twin
    (``models/blocks/scriptable.py``) for good: a reference the caller holds to a block would no longer be the
    model's. The twin shares the block's ``__dict__``, so the modules put back hold the same parameters, buffers
    and state the script module was compiled from."""
    children = [(module._modules, dict(module._modules)) for module in model.modules()]
    try:
        return torch.jit.script(model)
    finally:
        for modules, before in children:
            modules.update(before)


def compile_model(
    model: nn.Module, mode: str = "none", *, max_len: Optional[int] = None, compile_mode: Optional[str] = None,
    **compile_kwargs: Any,
) -> Any:
    """Compile ``model`` for training or inference; ``mode`` in ``none | script | aot_eager | inductor | export``.

    ``compile_mode`` is ``torch.compile``'s own ``mode`` (``TORCH_COMPILE_MODES``; ``"reduce-overhead"`` runs fixed
    shapes as CUDA graphs), for ``mode="inductor"``. ``compile_kwargs`` go to ``torch.compile`` (``dynamic``,
    ``fullgraph``, ``options``, ``disable``; anything else is a ``TypeError`` naming it; ``fullgraph=True`` fails
    off the CPU kernel: every fused RNN call is then a deliberate graph break). ``max_len`` is the static sequence
    length of ``mode="export"`` (default ``DEFAULT_MAX_LEN``). The returned object shares the model's parameters
    for every mode but ``export`` (a snapshot of them). See the module docstring for the trade-offs.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"mode={mode!r} is not a compile mode; choose one of {list(COMPILE_MODES)}")
    if (compile_kwargs or compile_mode is not None) and mode not in ("aot_eager", "inductor"):
        given = sorted(compile_kwargs) + ([] if compile_mode is None else ["compile_mode"])
        raise TypeError(f"compile_model(mode={mode!r}) takes no torch.compile options, got {given}")
    unknown = sorted(set(compile_kwargs) - set(TORCH_COMPILE_OPTIONS))
    if unknown:
        raise TypeError(f"compile_model got unknown torch.compile option(s) {unknown}; it passes "
                        f"{list(TORCH_COMPILE_OPTIONS)} and compile_mode= (torch.compile's mode)")
    if compile_mode is not None:
        if compile_mode not in TORCH_COMPILE_MODES:
            raise ValueError(f"compile_mode={compile_mode!r} is not a torch.compile mode; choose one of "
                             f"{list(TORCH_COMPILE_MODES)}")
        if mode != "inductor":
            raise ValueError(f"compile_mode={compile_mode!r} needs mode='inductor' (torch.compile's modes are "
                             f"inductor's), got mode={mode!r}")
        if compile_kwargs.get("options") is not None:
            raise ValueError("pass either compile_mode or options, not both (torch.compile refuses both)")
        compile_kwargs["mode"] = compile_mode
    if max_len is not None and mode != "export":
        raise TypeError(f"max_len only applies to mode='export', got mode={mode!r}")
    if mode == "none":
        return model
    if mode == "script":
        return script(model)
    if mode in ("aot_eager", "inductor"):
        return torch.compile(model, backend=mode, **compile_kwargs)
    length = DEFAULT_MAX_LEN if max_len is None else max_len
    return ExportedModel(
        export_program(model, length), length, _is_token_model(model), int(getattr(model, "padding_idx", 0))
    )
