"""Deployment artifacts that load and run without this project installed, each with its preprocessing.

``export(model_or_run, path, format="pt2")`` takes a model, a run folder or checkpoint, or a ``Predictor``
(``load_run``'s); it writes the artifact and, next to it, ``<path>.json``: the artifact's inputs and static
``max_len``, and the preprocessing (vocabulary, tokenizer settings and rules, class names, input kind; null for a
bare model without one). With that JSON a few lines of standard-library Python turn raw text into the
artifact's input, in a process that has torch (or onnxruntime) and nothing of this project
(``docs/zoo-and-deployment.md``).

| format        | file                      | loader (torch only)                     | shapes                        |
|---------------|---------------------------|-----------------------------------------|-------------------------------|
| pt2 (default) | ``torch.export`` program  | ``torch.export.load(path).module()(x)`` | B dynamic, T <= ``max_len``   |
| onnx          | ONNX model (.onnx)        | ``onnxruntime.InferenceSession(path)``  | B dynamic, T == ``max_len``   |
| torchscript   | TorchScript archive (.pt) | ``torch.jit.load(path)(x)``             | B and T dynamic (deprecated   |
|               |                           |                                         | by torch, warns; not default) |

``max_len`` defaults to the preprocessing's ``max_len`` (texts are truncated to it anyway), else
``DEFAULT_MAX_LEN``. Texts longer than ``max_len`` are truncated to it (the JSON records it). The ``pt2`` program
pads its input to ``max_len`` itself (``_PadInside``), so it takes any ``T <= max_len``; the ONNX graph takes
exactly ``T == max_len``.

An imported Keras text model (``KerasTextClassifier``, ``models.keras.keras_text_predictor``) is exported without
the padding inside: a Keras model without ``mask_zero`` reads its padding steps, so its ``pt2`` program, like its
ONNX graph, takes exactly ``T == max_len`` ids (``max_len``: the ``TextVectorization``'s
``output_sequence_length``, which a different ``max_len`` may not contradict; without one, give ``max_len`` and
pad every row to it: the logits are Keras's where the model masks padding, or where Keras pads to that length).

The artifacts take what the model takes: token ids ``(B, T)`` (``padding_idx`` marks padding, anywhere in
the row) or, for feature models, ``(features (B, T, F), lengths (B,))`` (``pt2``/``onnx``; the TorchScript
archive keeps ``lengths`` optional). Both are captured in eval mode (dropout off).

Limit of ``torch.export`` (torch 2.13): it specialises the time dimension of the fused RNN ops
(``aten.lstm``/``aten.gru``/``aten.rnn_tanh``/``aten.rnn_relu``; plain ``nn.LSTM`` does the same), so the
program has a static ``T = max_len`` and a dynamic batch. Pad every batch to ``max_len`` (right padding with
``padding_idx``, or with ``lengths`` for features): the classifier only reads valid steps, so the logits are
those of the unpadded batch. The TorchScript archive has no such limit and runs the same fused kernels.
Export time grows with ``max_len`` (the fused ops are traced step by step under fake tensors: about 20 s
for a 2-layer ``bilstm`` at ``max_len=64`` on a busy CPU). The ONNX export goes through the ``pt2`` program
(``torch.onnx.export(..., dynamo=True)``, needs ``onnxscript``), so it has the same static ``T``.
"""

import copy
import io
import json
import os
from pathlib import Path
from typing import Any, Dict, Optional, Tuple, Union

import torch
from torch import nn

from ..arguments import PathLike, check_positive_int
from ..atomic import atomic_path, write_atomically
from ..data.preprocessing import Preprocessing
from .compile import DEFAULT_MAX_LEN, example_inputs, export_program, script

EXPORT_FORMATS = ("pt2", "onnx", "torchscript")
"""Formats ``export`` writes; the first is the default."""

SIDECAR_FORMAT = "birnn-zoo/export/v1"


def sidecar_path(path: PathLike) -> Path:
    """The JSON written next to an artifact: ``model.pt2`` -> ``model.pt2.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


def _model_and_preprocessing(source: Any, preprocessing: Optional[Preprocessing]) -> Tuple[nn.Module,
                                                                                          Optional[Preprocessing]]:
    from .predictor import Predictor, load_run

    if isinstance(source, (str, os.PathLike)):
        source = load_run(source)
    if isinstance(source, Predictor):
        return source.model, preprocessing if preprocessing is not None else source.preprocessing
    if not isinstance(source, nn.Module):
        raise TypeError(f"model_or_run must be an nn.Module, a Predictor, or a run folder / checkpoint path, got "
                        f"{type(source).__name__}")
    if preprocessing is not None:
        preprocessing.check_model(source)
    return source, preprocessing


def export(model_or_run: Union[nn.Module, Any, PathLike], path: PathLike, format: str = "pt2", *,
           max_len: Optional[int] = None, preprocessing: Optional[Preprocessing] = None) -> str:
    """Write the model to ``path`` as ``format`` (``pt2 | onnx | torchscript``) and its JSON to ``<path>.json``;
    returns the artifact's path.

    ``model_or_run``: an ``nn.Module`` (with ``preprocessing`` when it has one), a ``Predictor``, or a run folder /
    checkpoint path. ``max_len`` is the static sequence length of ``pt2``/``onnx`` (default: the preprocessing's
    ``max_len``, else ``DEFAULT_MAX_LEN``); it is an error for ``torchscript``, which is fully dynamic. The model
    is exported in eval mode and left in the mode it was in. Both files are written atomically.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format={format!r} is not an export format; choose one of {list(EXPORT_FORMATS)}")
    if max_len is not None and format == "torchscript":
        raise TypeError("max_len only applies to the 'pt2' and 'onnx' formats; TorchScript archives take any T")
    model, preprocessing = _model_and_preprocessing(model_or_run, preprocessing)
    path = os.fspath(path)
    if any(t.device.type != "cpu" for t in model.state_dict().values()):
        # Exported from a CPU copy, so the artifact loads on any host; load_exported(..., map_location=) moves it.
        model = copy.deepcopy(model).cpu()
    recorded = preprocessing.max_len if preprocessing is not None and preprocessing.input_kind == "tokens" else None
    keras_text = isinstance(getattr(model, "keras_specs", None), str)    # an imported Keras model: no padding inside
    if keras_text and max_len is not None and recorded is not None and max_len != recorded:
        raise ValueError(f"max_len={max_len}: this Keras model's TextVectorization gives exactly "
                         f"output_sequence_length={recorded} ids per row; leave max_len out")
    length = max_len if max_len is not None else recorded or DEFAULT_MAX_LEN
    if format == "torchscript":
        was_training = model.training
        model.eval()
        try:
            scripted = script(model)
        finally:
            model.train(was_training)
        write_atomically(path, lambda file: torch.jit.save(scripted, file))
    elif format == "pt2":
        program = export_program(model, length) if keras_text else _padding_program(model, length)
        buffer = io.BytesIO()                          # the archive is built in memory, then written atomically
        torch.export.save(program, buffer)
        write_atomically(path, buffer.getvalue())
    else:
        _export_onnx(model, path, length)
    token_input = bool(getattr(model, "token_input", True))
    sidecar = {
        "format": SIDECAR_FORMAT, "model_file": Path(path).name, "model_format": format,
        "inputs": ["tokens"] if token_input else ["features", "lengths"],
        "input_dtypes": ["int64"] if token_input else ["float32", "int64"],
        "max_len": None if format == "torchscript" else length,
        # pt2: any T <= max_len (padded inside the program); onnx: T == max_len exactly (pad before calling).
        "time_steps": "== max_len" if keras_text and format == "pt2" else
        {"torchscript": "any", "pt2": "<= max_len", "onnx": "== max_len"}[format],
        "pad_id": int(getattr(model, "padding_idx", 0)) if token_input else None,
        "num_classes": int(getattr(model, "num_classes", 0)) or None,
        "outputs": ["logits"],
        "preprocessing": None if preprocessing is None else preprocessing.to_dict(),
    }
    text = json.dumps(sidecar, indent=1, ensure_ascii=False) + "\n"
    write_atomically(sidecar_path(path), lambda file: file.write(text.encode("utf-8")))
    return path


class _PadInside(nn.Module):
    """The classifier behind a right-padding to ``max_len + 1``: the program takes any ``T <= max_len``.

    ``torch.export`` specialises the fused RNN ops' time dimension, so the RNN itself runs at the static
    ``max_len``; the padding in front of it lets the program's *input* keep a dynamic ``T``."""

    def __init__(self, model: nn.Module, max_len: int, token_input: bool, padding_idx: int) -> None:
        super().__init__()
        self.model, self.max_len, self.token_input, self.padding_idx = model, max_len, token_input, padding_idx

    def forward(self, x: torch.Tensor, lengths: Optional[torch.Tensor] = None) -> torch.Tensor:
        torch._check(x.shape[1] <= self.max_len)
        # One step more than max_len: an input of exactly the RNN's length would be a case torch.export
        # specialises on (a guard T != max_len); padded steps are not read, so the logits are unchanged.
        pad = self.max_len + 1 - x.shape[1]
        if self.token_input:
            return self.model(nn.functional.pad(x, (0, pad), value=self.padding_idx))
        return self.model(nn.functional.pad(x, (0, 0, 0, pad)), lengths)


def _padding_program(model: nn.Module, max_len: int) -> torch.export.ExportedProgram:
    """``torch.export`` of ``model`` taking a dynamic batch and a dynamic ``T`` in ``[1, max_len]`` (padded inside)."""
    check_positive_int("max_len", max_len)
    token_input = bool(getattr(model, "token_input", True))
    inputs = example_inputs(model, max_len)
    batch = torch.export.Dim("batch", min=1, max=1 << 20)
    time = torch.export.Dim("time", min=1, max=max_len)
    dynamic: Tuple[Any, ...] = ({0: batch, 1: time},) if token_input else ({0: batch, 1: time}, {0: batch})
    wrapper = _PadInside(model, max_len, token_input, int(getattr(model, "padding_idx", 0)))
    was_training = model.training
    model.eval()
    try:
        return torch.export.export(wrapper.eval(), inputs, dynamic_shapes=dynamic)
    finally:
        model.train(was_training)


def read_sidecar(path: PathLike) -> Dict[str, Any]:
    """The JSON ``export`` wrote next to ``path`` (the artifact or the JSON itself), its preprocessing validated
    (``PreprocessingError`` for a tampered one)."""
    path = Path(path)
    json_path = path if path.suffix == ".json" else sidecar_path(path)
    try:
        sidecar = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ValueError(f"{json_path}: not a readable export JSON ({error})") from error
    if not isinstance(sidecar, dict) or sidecar.get("format") != SIDECAR_FORMAT:
        raise ValueError(f"{json_path}: format is not {SIDECAR_FORMAT!r}")
    if sidecar.get("preprocessing") is not None:
        sidecar["preprocessing"] = Preprocessing.from_dict(sidecar["preprocessing"])
    return sidecar


def _export_onnx(model: nn.Module, path: str, max_len: int) -> None:
    try:
        import onnxscript  # noqa: F401
    except ImportError as error:
        raise ImportError("format='onnx' needs the onnx and onnxscript packages "
                          "(pip install onnx onnxscript)") from error
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


def load_exported(path: PathLike, map_location: Optional[Any] = None) -> Any:
    """Load an artifact written by ``export`` with torch alone: a callable ``(x[, lengths]) -> logits``.

    ``.pt2`` -> ``torch.export.load(path).module()``; ``.onnx`` -> an ``onnxruntime`` session wrapped to take and
    return tensors (CPU; ``map_location`` does not apply); anything else -> ``torch.jit.load(path)``. Artifacts
    hold CPU tensors (``export`` works on a CPU copy); ``map_location`` (``"cuda"``, a ``torch.device``) moves the
    loaded program there (``torch.jit.load``'s ``map_location``; ``move_to_device_pass`` for ``.pt2``).
    """
    path = os.fspath(path)
    if path.endswith(".pt2"):
        program = torch.export.load(path)
        if map_location is not None:
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, map_location)
        return program.module()
    if path.endswith(".onnx"):
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        names = [item.name for item in session.get_inputs()]

        def run(*inputs: torch.Tensor) -> torch.Tensor:
            feeds = {name: value.detach().cpu().numpy() for name, value in zip(names, inputs, strict=True)}
            return torch.from_numpy(session.run(None, feeds)[0])

        return run
    return torch.jit.load(path, map_location=map_location)


__all__ = ["EXPORT_FORMATS", "example_inputs", "export", "load_exported", "read_sidecar", "sidecar_path"]
