"""What ``python predict.py`` and ``python eval.py`` do, behind their Hydra entry points (``conf/predict.yaml``,
``conf/eval.yaml``): open the model ``run=`` names, read the inputs, run it, write JSON atomically."""

from __future__ import annotations

import csv
import io
import json
import logging
import sys
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from omegaconf import DictConfig, OmegaConf

from ..arguments import check_positive_int
from ..atomic import write_atomically
from ..data.preprocessing import PreprocessingError
from .evaluate import evaluate_run
from .predictor import Predictor, load_run

log = logging.getLogger("eval")

DEFAULT_COLUMN = "text"
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")


class PredictError(ValueError):
    """An option, an input file or a checkpoint ``predict.py`` / ``eval.py`` cannot use (exit status 2)."""


def read_inputs(source: str, column: str | None, pair_column: str | None = None) -> Tuple[List[int], List[Any]]:
    """``(indices, inputs)`` of a text file (blank lines skipped: the index is the 0-based line), a ``.csv`` /
    ``.jsonl`` column (the index is the 0-based row), or ``-`` (standard input, read as a text file).
    ``pair_column`` (``.csv`` / ``.jsonl`` only): each input is the ``(text, pair)`` tuple of a pair model."""
    if source == "-":
        content, suffix = sys.stdin.read(), ""
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise PredictError(f"input={source!r}: no such file; give a text, .csv or .jsonl file, or - for stdin")
        content, suffix = path.read_text(encoding="utf-8"), path.suffix.lower()
    if suffix not in (".csv", ".jsonl"):
        for key, value in (("column", column), ("pair_column", pair_column)):
            if value is not None:
                raise PredictError(f"{key}={value!r} only applies to .csv and .jsonl inputs, not input={source!r}")
        lines = content.splitlines()
        kept = [i for i, line in enumerate(lines) if line.strip()]
        return kept, [lines[i] for i in kept]
    name = column or DEFAULT_COLUMN
    if suffix == ".csv":
        rows: List[Any] = list(csv.DictReader(io.StringIO(content)))
    else:
        rows = []
        for number, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise PredictError(f"input={source!r} line {number} is not JSON: {error}") from None
            if not isinstance(rows[-1], dict):
                raise PredictError(f"input={source!r} line {number} is not a JSON object")
    if pair_column is not None and pair_column == name:
        raise PredictError(f"pair_column={pair_column!r} is the text column too: give the column of the second text")
    for number, row in enumerate(rows):
        for key, wanted in (("column", name), ("pair_column", pair_column)):
            if wanted is not None and wanted not in row:
                raise PredictError(f"{key}={wanted!r} is not in row {number} of input={source!r}; its columns: "
                                   f"{sorted(row)}")
    if pair_column is None:
        return list(range(len(rows))), [row[name] for row in rows]
    return list(range(len(rows))), [(row[name], row[pair_column]) for row in rows]


def _class_names(class_names: Any) -> Optional[List[str]]:
    if class_names is None:
        return None
    names = list(class_names) if isinstance(class_names, Sequence) and not isinstance(class_names, str) else None
    if not names or not all(isinstance(name, str) and name for name in names) or len(set(names)) != len(names):
        raise PredictError(f"class_names={class_names!r}: expected a list of distinct non-empty names, e.g. "
                           f"class_names=[neg,pos]")
    return names


def open_model(run: str, *, device: str = "cpu", batch_size: int = 64, class_names: Any = None) -> Predictor:
    """The :class:`Predictor` that ``run=`` names:

    - a run folder of ``python train.py`` or a ``.pt`` checkpoint (``load_run``);
    - a ``save_pretrained`` folder, ``config.json`` + ``model.safetensors`` (``from_pretrained``);
    - a Keras model file (``.keras``, ``.h5``) whose string input feeds a ``TextVectorization``
      (``keras_text_predictor``); ``class_names`` names its classes (default ``"0", "1", ...``).

    The first two carry their class names, so ``class_names`` is refused for them. Errors become ``PredictError``."""
    names = _class_names(class_names)
    path = Path(str(run)).expanduser()
    is_keras = path.is_file() and path.suffix.lower() in KERAS_SUFFIXES
    if names is not None and not is_keras:
        raise PredictError(f"class_names only applies to a Keras model file (.keras, .h5); run={str(run)!r} "
                           f"carries its own class names")
    try:
        if is_keras:
            from ..keras.text_classifier import keras_text_predictor

            return keras_text_predictor(path, names, batch_size=batch_size, device=device)
        if path.is_dir() and (path / "config.json").is_file() and not (path / "checkpoints").is_dir():
            from .pretrained import from_pretrained

            predictor = from_pretrained(path, device=device)
            check_positive_int("batch_size", batch_size)
            predictor.batch_size = batch_size
            return predictor
        return load_run(str(run), device=device, batch_size=batch_size)
    except (ValueError, PreprocessingError) as error:  # KerasImportError is a ValueError
        raise PredictError(str(error)) from error


def predict_main(cfg: DictConfig) -> None:
    """``python predict.py``: JSON Lines ``{"index", "label", "probabilities"}`` to ``cfg.output`` or stdout."""
    predictor = open_model(cfg.run, device=cfg.device, batch_size=cfg.batch_size,
                           class_names=cfg.get("class_names"))
    pair_column = cfg.get("pair_column")
    text_pair = predictor.preprocessing is not None and predictor.preprocessing.text_pair
    if text_pair and pair_column is None:
        raise PredictError("this model was trained on text pairs (data.text_pair_column): give pair_column=<the "
                           "column of the second text> with a .csv or .jsonl input")
    if pair_column is not None and not text_pair:
        raise PredictError(f"pair_column={pair_column!r}: this model takes one text per input (it was not trained "
                           f"with data.text_pair_column); leave pair_column out")
    indices, inputs = read_inputs(str(cfg.input), cfg.column, pair_column)
    try:
        records = predictor(inputs).records() if inputs else []
    except (ValueError, TypeError) as error:
        raise PredictError(f"input={cfg.input!r}: {error}") from error
    lines = "".join(json.dumps({**record, "index": index}) + "\n" for index, record in zip(indices, records,
                                                                                            strict=True))
    if cfg.output is None:
        sys.stdout.write(lines)
        sys.stdout.flush()
    else:
        write_atomically(Path(cfg.output).expanduser(), lambda file: file.write(lines.encode("utf-8")))


def eval_main(cfg: DictConfig) -> float:
    """``python eval.py``: ``eval_results.json`` in ``hydra.run.dir``; returns the accuracy."""
    from hydra.core.hydra_config import HydraConfig

    out_dir = Path(HydraConfig.get().runtime.output_dir)
    predictor = open_model(cfg.run, device=cfg.device, batch_size=cfg.batch_size, class_names=cfg.get("class_names"))
    if predictor.source is not None and out_dir.resolve() in Path(predictor.source).resolve().parents:
        raise PredictError(f"hydra.run.dir={out_dir} holds the run evaluated; write the evaluation elsewhere")
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True) if cfg.get("data") is not None else None
    if data_cfg is None:
        if not predictor.config:
            raise PredictError(f"run={str(cfg.run)!r} is not a run of python train.py, so it names no data to "
                               f"evaluate on: give data=<name> (and data.root=...)")
        data_cfg = dict(predictor.config.get("data") or {})
        if cfg.data_root is not None:
            data_cfg["root"] = str(cfg.data_root)
    elif cfg.data_root is not None:
        raise PredictError("data_root only applies to the run's own data config; with data=... set data.root")
    try:
        results = evaluate_run(predictor, data_cfg, str(cfg.split))
    except (ValueError, FileNotFoundError) as error:
        raise PredictError(str(error)) from error
    results["run"] = str(cfg.run)
    path = out_dir / "eval_results.json"
    write_atomically(path, lambda file: file.write((json.dumps(results, indent=2) + "\n").encode("utf-8")))
    log.info("%s %s: accuracy %.4f, loss %.4f over %d rows; results in %s", results["data"], results["split"],
             results["accuracy"], results["loss"], results["rows"], path)
    return float(results["accuracy"])
