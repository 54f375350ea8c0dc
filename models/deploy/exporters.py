"""Deployment artifacts that load and run without this project installed.

``export(model, path, format)``:

| format        | file                        | loader (torch only)                              | shapes                      |
|---------------|-----------------------------|--------------------------------------------------|-----------------------------|
| torchscript   | TorchScript archive (.pt)   | ``torch.jit.load(path)(x)``                      | B and T dynamic             |
| pt2           | ``torch.export`` program    | ``torch.export.load(path).module()(x)``          | B dynamic, T == ``max_len`` |
| onnx          | ONNX model (.onnx)          | ``onnxruntime.InferenceSession(path)``           | B dynamic, T == ``max_len`` |

The artifacts take what the model takes: token ids ``(B, T)`` (``padding_idx`` marks padding, anywhere in
the row) or, for feature models, ``(features (B, T, F), lengths (B,))`` (``pt2``/``onnx``; the TorchScript
archive keeps ``lengths`` optional). Both are captured in eval mode (dropout off).

Limit of ``pt2`` (torch 2.13): ``torch.export`` specialises the time dimension of the fused RNN ops
(``aten.lstm``/``aten.gru``/``aten.rnn_tanh``/``aten.rnn_relu``; plain ``nn.LSTM`` does the same), so the
program has a static ``T = max_len`` and a dynamic batch. Pad every batch to ``max_len`` (right padding with
``padding_idx``, or with ``lengths`` for features): the classifier only reads valid steps, so the logits are
those of the unpadded batch. The TorchScript archive has no such limit and runs the same fused kernels.
Export time grows with ``max_len`` (the fused ops are traced step by step under fake tensors: about 20 s
for a 2-layer ``bilstm`` at ``max_len=64`` on a busy CPU). The ONNX export goes through the ``pt2`` program (``torch.onnx.export(..., dynamo=True)``, needs
``onnxscript``), so it has the same static ``T``.
"""

import io
import os
from typing import Any, Optional

import torch
from torch import nn

from ..arguments import PathLike
from ..atomic import atomic_path, write_atomically
from .compile import DEFAULT_MAX_LEN, example_inputs, export_program

EXPORT_FORMATS = ("torchscript", "pt2", "onnx")
"""Formats ``export`` writes."""



def export(model: nn.Module, path: PathLike, format: str = "torchscript", *, max_len: Optional[int] = None) -> str:
    """Write ``model`` to ``path`` as ``format`` (``torchscript | pt2 | onnx``); returns the path written.

    ``max_len`` is the static sequence length of ``pt2``/``onnx`` (default ``DEFAULT_MAX_LEN``); it is an error
    for ``torchscript``, which is fully dynamic. The model is exported in eval mode and left in the mode it was in.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format={format!r} is not an export format; choose one of {list(EXPORT_FORMATS)}")
    if max_len is not None and format == "torchscript":
        raise TypeError("max_len only applies to the 'pt2' and 'onnx' formats; TorchScript archives take any T")
    path = os.fspath(path)
    length = DEFAULT_MAX_LEN if max_len is None else max_len
    if format == "torchscript":
        was_training = model.training
        model.eval()
        try:
            scripted = torch.jit.script(model)
            write_atomically(path, lambda file: torch.jit.save(scripted, file))
        finally:
            model.train(was_training)
    elif format == "pt2":
        program = export_program(model, length)
        buffer = io.BytesIO()                          # the archive is built in memory, then written atomically
        torch.export.save(program, buffer)
        write_atomically(path, buffer.getvalue())
    else:
        _export_onnx(model, path, length)
    return path


def _export_onnx(model: nn.Module, path: str, max_len: int) -> None:
    try:
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError("format='onnx' needs the onnx and onnxscript packages (pip install onnx onnxscript)") from error
    program = export_program(model, max_len)
    names = ["tokens"] if len(program.example_inputs[0]) == 1 else ["features", "lengths"]
    was_training = model.training
    model.eval()
    try:
        onnx_program = torch.onnx.export(program, input_names=names, output_names=["logits"], dynamo=True)
        with atomic_path(path) as temp:                # a failed save leaves the previous file intact
            onnx_program.save(str(temp))
    finally:
        model.train(was_training)


def load_exported(path: PathLike) -> Any:
    """Load an artifact written by ``export`` with torch alone: a callable ``(x[, lengths]) -> logits``.

    ``.pt2`` -> ``torch.export.load(path).module()``; ``.onnx`` -> an ``onnxruntime`` session wrapped to take and
    return tensors; anything else -> ``torch.jit.load(path)``.
    """
    path = os.fspath(path)
    if path.endswith(".pt2"):
        return torch.export.load(path).module()
    if path.endswith(".onnx"):
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        names = [item.name for item in session.get_inputs()]

        def run(*inputs: torch.Tensor) -> torch.Tensor:
            feeds = {name: value.detach().cpu().numpy() for name, value in zip(names, inputs, strict=True)}
            return torch.from_numpy(session.run(None, feeds)[0])

        return run
    return torch.jit.load(path)


__all__ = ["EXPORT_FORMATS", "example_inputs", "export", "load_exported"]
