"""``load_run(run_dir_or_checkpoint)`` -> a :class:`Predictor`: raw text (or feature arrays) in, labels out.

::

    predictor = models.load_run("outputs/2026-12-05/20-41-37")      # or .../checkpoints/best.pt
    out = predictor(["what is the capital of peru ?", "who wrote hamlet ?"])
    out.labels            # ['LOC', 'HUM']
    out.probabilities     # (2, 6) float32, rows sum to 1, columns in predictor.class_names order
    predictor.model       # the plain nn.Module (SequenceClassifier), eval mode

The model is rebuilt from the checkpoint's config (``config.model``) with its sizes read off the weights, and
its weights loaded with ``torch.load(weights_only=True)``: no code from the run is executed. The checkpoint's
preprocessing (``models/data/preprocessing.py``) turns strings into ids exactly as the training data was
encoded. Inputs are batched by length (``batch_size`` rows at a time, shortest padding) and run with
``lengths`` under ``torch.no_grad()`` in eval mode, which is what lets the CPU kernel take its inference path
(``models/blocks/cpu_kernel/inference.py``); the outputs come back in input order. A Keras text model
(``models.keras.keras_text_predictor``) is batched in input order instead and padded as Keras pads (to its
``output_sequence_length``, else to each batch's longest row), since a Keras model may read its padding.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

import torch
from torch import nn

from ..arguments import PathLike, check_positive_int
from ..data.preprocessing import Preprocessing, PreprocessingError, _is_text

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZE = 64


@dataclass
class Predictions:
    """``labels[i]`` (class name), ``class_ids[i]`` and ``probabilities[i]`` (softmax, ``(N, C)``) of input ``i``."""

    labels: List[str]
    class_ids: List[int]
    probabilities: torch.Tensor
    class_names: List[str]

    def __len__(self) -> int:
        return len(self.labels)

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        return iter(self.records())

    def records(self) -> List[Dict[str, Any]]:
        """One JSON-ready dict per input: ``{"index", "label", "probabilities": {class name: p}}``."""
        probs = self.probabilities.tolist()
        return [{"index": i, "label": label, "probabilities": dict(zip(self.class_names, row, strict=True))}
                for i, (label, row) in enumerate(zip(self.labels, probs, strict=True))]


class Predictor:
    """A trained model with its preprocessing; call it with raw strings (token models), id lists, or ``(T, F)``
    arrays (feature models). See the module docstring."""

    def __init__(self, model: nn.Module, preprocessing: Optional[Preprocessing], *,
                 batch_size: int = DEFAULT_BATCH_SIZE, device: Union[str, torch.device] = "cpu",
                 source: Optional[str] = None, config: Optional[Dict[str, Any]] = None) -> None:
        check_positive_int("batch_size", batch_size)
        if preprocessing is not None:
            preprocessing.check_model(model)
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.preprocessing = preprocessing
        self.batch_size = batch_size
        self.source = source
        self.config = config or {}

    @property
    def class_names(self) -> List[str]:
        """The label of each logit; ``"0", "1", ...`` for a checkpoint without preprocessing."""
        if self.preprocessing is not None:
            return list(self.preprocessing.class_names)
        return [str(i) for i in range(int(self.model.num_classes))]

    def encode(self, inputs: Sequence[Any]) -> List[Any]:
        """Inputs -> one unpadded model input each: id lists (token models) or ``(T, F)`` tensors."""
        token_input = bool(getattr(self.model, "token_input", True))
        if token_input:
            if self.preprocessing is not None:
                if any(_is_text(t) for t in inputs):
                    return self.preprocessing.encode_ids(inputs)
                ids, lengths = self.preprocessing.encode(inputs)
                return [row[:n].tolist() for row, n in zip(ids, lengths.tolist(), strict=True)]
            if any(isinstance(t, (str, tuple)) for t in inputs):
                raise PreprocessingError("this checkpoint has no preprocessing (written before runs recorded it): "
                                         "give token id lists, not strings")
            from ..data.preprocessing import _id_list

            return [_id_list(t, i, None) for i, t in enumerate(inputs)]
        if self.preprocessing is not None:
            features, lengths = self.preprocessing.encode_features(inputs)
            return [row[:n] for row, n in zip(features, lengths.tolist(), strict=True)]
        return [torch.as_tensor(x, dtype=torch.float32) for x in inputs]

    @torch.no_grad()
    def logits(self, inputs: Sequence[Any]) -> torch.Tensor:
        """``(N, C)`` logits of ``inputs`` in their order (float32, on the CPU)."""
        if isinstance(inputs, (str, bytes)):
            raise TypeError("inputs must be a list (of strings, id lists or arrays), got one str: wrap it in a list")
        encoded = self.encode(list(inputs))
        if self.preprocessing is not None and self.preprocessing.pads_like_keras:
            order = list(range(len(encoded)))      # Keras pads each batch, in input order, to its longest row
        else:
            order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))    # similar lengths batch together
        out = torch.empty(len(encoded), len(self.class_names))
        for start in range(0, len(order), self.batch_size):
            rows = order[start:start + self.batch_size]
            x, lengths = self._batch([encoded[i] for i in rows])
            out[rows] = self.model(x.to(self.device), lengths.to(self.device)).float().cpu()
        return out

    def _batch(self, rows: List[Any]) -> tuple:
        from ..data.preprocessing import pad_ids

        if bool(getattr(self.model, "token_input", True)):
            return pad_ids(rows) if self.preprocessing is None else self.preprocessing.pad(rows)
        lengths = torch.tensor([len(x) for x in rows], dtype=torch.int64)
        return nn.utils.rnn.pad_sequence(rows, batch_first=True), lengths

    def __call__(self, inputs: Sequence[Any]) -> Predictions:
        """Labels and probabilities of ``inputs`` (raw strings, ``(text, pair)`` tuples for a pair model, id lists, or
        ``(T, F)`` arrays), in their order."""
        probabilities = torch.softmax(self.logits(inputs), dim=-1)
        ids = probabilities.argmax(-1).tolist()
        names = self.class_names
        return Predictions([names[i] for i in ids], ids, probabilities, names)

    def save_pretrained(self, folder: PathLike) -> Path:
        """``models.save_pretrained(self, folder)``: ``model.safetensors`` + ``config.json``."""
        from .pretrained import save_pretrained

        return save_pretrained(self, folder)

    def __repr__(self) -> str:
        kind = "no preprocessing" if self.preprocessing is None else self.preprocessing.input_kind
        return f"Predictor({type(self.model).__name__}, {kind}, classes={self.class_names}, source={self.source!r})"


def resolve_run_checkpoint(run: PathLike) -> Path:
    """A run folder -> its ``checkpoints/best.pt`` (else ``last.pt``); a file -> itself."""
    path = Path(run).expanduser()
    if path.is_dir():
        for name in ("best.pt", "last.pt"):
            if (path / "checkpoints" / name).is_file():
                return path / "checkpoints" / name
        raise ValueError(f"run={str(run)!r}: no checkpoints/best.pt or last.pt in this folder; give a run folder "
                         f"of python train.py or a .pt checkpoint file")
    if not path.is_file():
        raise ValueError(f"run={str(run)!r} does not exist; give a run folder of python train.py or a .pt "
                         f"checkpoint file")
    return path


def model_from_checkpoint(checkpoint: Dict[str, Any], preprocessing: Optional[Preprocessing],
                          source: str) -> nn.Module:
    """The zoo model of a checkpoint: ``config.model`` with its sizes read off the weights, weights loaded strictly."""
    from ..zoo.registry import create_model

    config = checkpoint.get("config") or {}
    model_cfg = dict(config.get("model") or {})
    name = model_cfg.pop("name", None)
    weights = checkpoint["model"]
    if not isinstance(name, str) or "embed.weight" not in weights or "head.weight" not in weights:
        raise ValueError(f"checkpoint {source} does not hold a zoo model of python train.py (config.model.name "
                         f"{name!r}, weights {sorted(weights)[:4]}...)")
    num_classes = int(weights["head.weight"].shape[0])
    data_cfg = config.get("data") or {}
    kind = preprocessing.input_kind if preprocessing is not None else data_cfg.get("input_kind", "tokens")
    if kind == "features":
        sizes = {"input_size": int(weights["embed.weight"].shape[1])}
    else:
        sizes = {"vocab_size": int(weights["embed.weight"].shape[0])}
    model = create_model(name, num_classes=num_classes, **sizes, **model_cfg)
    model.load_state_dict(weights)
    return model.eval()


def load_run(run: PathLike, *, device: Union[str, torch.device] = "cpu",
             batch_size: int = DEFAULT_BATCH_SIZE) -> Predictor:
    """A :class:`Predictor` of a run folder (its ``best.pt``, else ``last.pt``) or of a checkpoint file.

    A checkpoint written before runs recorded their preprocessing still loads (one log line says what is
    missing): it then takes token id lists and names classes ``"0", "1", ...``. A tampered preprocessing record
    raises ``PreprocessingError``."""
    from ..training.checkpoint import load_checkpoint, read_preprocessing

    path = resolve_run_checkpoint(run)
    checkpoint = load_checkpoint(path)
    preprocessing = read_preprocessing(checkpoint, path)
    model = model_from_checkpoint(checkpoint, preprocessing, str(path))
    try:
        return Predictor(model, preprocessing, batch_size=batch_size, device=device, source=str(path),
                         config=checkpoint.get("config"))
    except PreprocessingError as error:
        raise PreprocessingError(f"checkpoint {path}: {error}") from error
