"""``save_pretrained(model_or_run, folder)`` / ``from_pretrained(folder_or_repo)``: the sharing format of timm and
Hugging Face: ``model.safetensors`` (the weights) + ``config.json`` (architecture, merge modes, preprocessing).

::

    models.save_pretrained("outputs/2026-12-05/20-41-37", "trec-bilstm")      # a run, a Predictor or a model
    predictor = models.from_pretrained("trec-bilstm")                         # a Predictor, as load_run gives
    models.push_to_hub("outputs/...", "me/trec-bilstm")                       # with huggingface_hub installed

Loading reads JSON and safetensors only: no code from the folder runs, nothing is unpickled. ``config.json``
is validated (the architecture, every constructor argument's name and type, the preprocessing) before any
model is built. The round trip is bit for bit: same parameters, same logits. An int8 model (``models.quantize``)
round-trips too: ``config.json`` says ``"quantization": "int8"``, the file holds its int8 weights and scales, and
``from_pretrained`` quantizes the built model before loading them. It follows the Hugging Face Hub
mixin convention (``ModelHubMixin``: ``config.json`` + ``model.safetensors`` at the top of a repository, a
local folder or a Hub repository id for ``from_pretrained``); ``push_to_hub`` and Hub ids need the optional
``hub`` extra (``pip install -e '.[hub]'``: safetensors and huggingface_hub).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional, Union

import torch
from torch import nn

from ..arguments import PathLike
from ..atomic import write_atomically
from ..blocks.quantized import QuantizedBiRNN
from ..data.preprocessing import Preprocessing, PreprocessingError
from ..zoo.classifier import SequenceClassifier
from .predictor import Predictor
from .quantize import quantize

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT = "birnn-zoo/pretrained/v1"
ARCHITECTURE = "SequenceClassifier"
KERAS_ARCHITECTURE = "KerasTextClassifier"
"""An imported Keras text model (``models.keras.keras_text_predictor``): its ``keras_specs`` (JSON text, checked
as data by ``module_from_specs``), how its output becomes logits, and its class count."""
_KERAS_ARGUMENTS: Dict[str, tuple] = {"keras_specs": (str,), "output": (str,), "num_classes": (int,)}
QUANTIZATIONS = (None, "int8")  # config.json's "quantization": float32 weights, or models.quantize's int8 copy

# SequenceClassifier's arguments, with the JSON types config.json may give them.
_ARGUMENTS: Dict[str, tuple] = {
    "num_classes": (int,), "vocab_size": (int, type(None)), "input_size": (int, type(None)), "embed_dim": (int,),
    "cell": (str,), "hidden_size": (int,), "num_layers": (int,), "merge_mode": (list,), "dropout": (float, int),
    "embed_dropout": (float, int), "head_dropout": (float, int), "pooling": (str,), "attention_size": (int,),
    "padding_idx": (int,), "word_dropout": (float, int),
}


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError as error:
        raise ImportError("save_pretrained / from_pretrained need safetensors: pip install safetensors "
                          "(or pip install -e '.[hub]', which adds huggingface_hub for push_to_hub)") from error
    return safetensors.torch


def architecture(model: nn.Module) -> Dict[str, Any]:
    """``SequenceClassifier``'s (or ``KerasTextClassifier``'s) constructor arguments, read off a built model."""
    from ..keras.text_classifier import KerasTextClassifier

    if isinstance(model, KerasTextClassifier):
        return {"keras_specs": model.keras_specs, "output": model.output, "num_classes": model.num_classes}
    if not isinstance(model, SequenceClassifier):
        raise TypeError(f"save_pretrained writes zoo models (SequenceClassifier) and imported Keras text models "
                        f"(KerasTextClassifier), got {type(model).__name__}")
    attention = model.attention
    return {
        "num_classes": model.num_classes, "vocab_size": model.vocab_size, "input_size": model.input_size,
        "embed_dim": model.embed_dim, "cell": model.cell, "hidden_size": model.hidden_size,
        "num_layers": model.num_layers, "merge_mode": list(model.merge_modes),
        "dropout": 0.0 if _quantized(model) else float(model.rnn.dropout),  # the int8 copy has no training dropout
        "embed_dropout": float(model.embed_dropout.p), "head_dropout": float(model.head_dropout.p),
        "pooling": model.pooling,
        "attention_size": int(attention.project.out_features) if hasattr(attention, "project") else 64,
        "padding_idx": model.padding_idx, "word_dropout": float(model.word_dropout),
    }


def _quantized(model: nn.Module) -> bool:
    """Whether ``model`` is ``models.quantize``'s int8 copy (its recurrent blocks are int8)."""
    return any(isinstance(module, QuantizedBiRNN) for module in model.modules())


def _as_predictor(source: Any) -> Predictor:
    from .predictor import load_run

    if isinstance(source, (str, os.PathLike)):
        return load_run(source)
    if isinstance(source, Predictor):
        return source
    if isinstance(source, nn.Module):
        return Predictor(source, None)
    raise TypeError(f"model_or_run must be a SequenceClassifier, a Predictor or a run folder / checkpoint path, got "
                    f"{type(source).__name__}")


def save_pretrained(model_or_run: Union[nn.Module, Predictor, PathLike], folder: PathLike, *,
                    preprocessing: Optional[Preprocessing] = None) -> Path:
    """Write ``folder/model.safetensors`` and ``folder/config.json`` (each atomically); returns ``folder``.

    ``model_or_run``: a ``SequenceClassifier`` (with ``preprocessing`` when it has one), a ``Predictor`` or a run
    folder / checkpoint path. Other files in ``folder`` are left alone."""
    st = _safetensors()
    predictor = _as_predictor(model_or_run)
    prep = preprocessing if preprocessing is not None else predictor.preprocessing
    model = predictor.model
    if prep is not None:
        prep.check_model(model)
    arguments = architecture(model)
    kind = KERAS_ARCHITECTURE if "keras_specs" in arguments else ARCHITECTURE
    config = {"format": FORMAT, "architecture": kind, "arguments": arguments,
              "preprocessing": None if prep is None else prep.to_dict(),
              "quantization": "int8" if _quantized(model) else None, "library": "birnn-zoo",
              "torch": torch.__version__}
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    blob = st.save(weights, metadata={"format": "pt"})
    write_atomically(folder / WEIGHTS_NAME, lambda file: file.write(blob))
    text = json.dumps(config, indent=1, ensure_ascii=False) + "\n"
    write_atomically(folder / CONFIG_NAME, lambda file: file.write(text.encode("utf-8")))
    return folder


def _checked_config(config: Any, where: Path) -> Dict[str, Any]:
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise ValueError(f"{where}: not a birnn-zoo config.json (format is not {FORMAT!r})")
    name = config.get("architecture")
    if name not in (ARCHITECTURE, KERAS_ARCHITECTURE):
        raise ValueError(f"{where}: architecture={name!r}, expected {ARCHITECTURE!r} or {KERAS_ARCHITECTURE!r}")
    allowed = _ARGUMENTS if name == ARCHITECTURE else _KERAS_ARGUMENTS
    arguments = config.get("arguments")
    if not isinstance(arguments, dict):
        raise ValueError(f"{where}: arguments must be an object of {name}'s arguments")
    for key, value in arguments.items():
        if key not in allowed:
            raise ValueError(f"{where}: arguments.{key} is not an argument of {name}; allowed: {sorted(allowed)}")
        if isinstance(value, bool) or not isinstance(value, allowed[key]):
            raise ValueError(f"{where}: arguments.{key}={value!r} has the wrong type")
    if config.get("quantization") not in QUANTIZATIONS:
        raise ValueError(f"{where}: quantization={config.get('quantization')!r}, expected one of {QUANTIZATIONS}")
    if name == KERAS_ARCHITECTURE:
        missing = sorted(set(_KERAS_ARGUMENTS) - set(arguments))
        if missing:
            raise ValueError(f"{where}: arguments lacks {missing} ({KERAS_ARCHITECTURE} needs all of "
                             f"{sorted(_KERAS_ARGUMENTS)})")
        return arguments
    modes = arguments.get("merge_mode", [])
    if not all(m is None or isinstance(m, str) for m in modes):
        raise ValueError(f"{where}: arguments.merge_mode={modes!r}: expected a list of merge mode names")
    return arguments


def _local_folder(folder_or_repo: PathLike, revision: Optional[str]) -> Path:
    path = Path(folder_or_repo).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"from_pretrained({str(folder_or_repo)!r}): a file, expected a folder with {CONFIG_NAME} and "
                         f"{WEIGHTS_NAME} (or a Hugging Face Hub repository id)")
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise ValueError(f"from_pretrained({str(folder_or_repo)!r}): no such folder (a Hugging Face Hub repository id "
                         f"needs huggingface_hub: pip install -e '.[hub]')") from None
    return Path(snapshot_download(str(folder_or_repo), revision=revision,
                                  allow_patterns=[CONFIG_NAME, WEIGHTS_NAME]))


def _build(name: str, arguments: Dict[str, Any], where: Path) -> nn.Module:
    """The (randomly initialised) model of checked ``arguments``."""
    if name == ARCHITECTURE:
        return SequenceClassifier(**arguments)
    from ..keras.errors import KerasImportError
    from ..keras.module import module_from_specs
    from ..keras.text_classifier import KerasTextClassifier

    try:
        return KerasTextClassifier(module_from_specs(arguments["keras_specs"]), arguments["output"],
                                   arguments["num_classes"])
    except (KerasImportError, ValueError, TypeError) as error:
        raise ValueError(f"{where}: arguments do not describe a {KERAS_ARCHITECTURE} ({error})") from None


def from_pretrained(folder_or_repo: PathLike, *, device: Union[str, torch.device] = "cpu",
                    revision: Optional[str] = None) -> Predictor:
    """A :class:`Predictor` (``.model`` is the ``SequenceClassifier``, int8 where it was saved int8) from a
    ``save_pretrained`` folder or a Hub repository id (with huggingface_hub; only ``config.json`` and
    ``model.safetensors`` are fetched)."""
    st = _safetensors()
    folder = _local_folder(folder_or_repo, revision)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise ValueError(f"from_pretrained({str(folder_or_repo)!r}): {path.name} is missing in {folder}")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise ValueError(f"{config_path}: not valid JSON ({error})") from error
    arguments = _checked_config(config, config_path)
    try:
        preprocessing = None if config.get("preprocessing") is None else \
            Preprocessing.from_dict(config["preprocessing"])
    except PreprocessingError as error:
        raise PreprocessingError(f"{config_path}: {error}") from error
    model = _build(config["architecture"], arguments, config_path)
    if config.get("quantization") == "int8":  # the int8 buffers to load into: the float weights are replaced below
        model = quantize(model)
    try:
        weights = st.load_file(str(weights_path))
    except Exception as error:  # a truncated or foreign file
        raise ValueError(f"{weights_path}: not a readable safetensors file ({error})") from error
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise ValueError(f"{weights_path} does not match {config_path}: {str(error).splitlines()[0]}") from error
    try:
        return Predictor(model, preprocessing, device=device, source=str(folder))
    except PreprocessingError as error:
        raise PreprocessingError(f"{config_path}: {error}") from error


def push_to_hub(model_or_run: Union[nn.Module, Predictor, PathLike], repo_id: str, *, private: bool = False,
                commit_message: str = "Upload birnn-zoo model", token: Optional[str] = None) -> Any:
    """``save_pretrained`` into a temporary folder, then upload it to the Hub repository ``repo_id`` (created if
    needed); needs huggingface_hub (``pip install -e '.[hub]'``). Returns the upload's commit info."""
    try:
        from huggingface_hub import HfApi
    except ImportError as error:
        raise ImportError("push_to_hub needs huggingface_hub: pip install -e '.[hub]'") from error
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(model_or_run, folder)
        return api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
