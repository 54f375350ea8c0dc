"""Classify inputs with a trained run: ``python predict.py run=outputs/<date>/<time> input=texts.txt``.

Inputs: a text file (one text a line), a ``.csv``/``.jsonl`` file with ``column=<name>`` (default ``text``), or
``input=-`` (standard input). Output: JSON Lines ``{"index", "label", "probabilities"}`` to ``output=<file>``
(atomic) or standard output. Exit status 0, or 2 with a one-line message when an option or input cannot be used.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see train.py)

import sys

import hydra
from omegaconf import DictConfig

from models.deploy.predict_cli import PredictError, predict_main


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
def main(cfg: DictConfig) -> None:
    try:
        predict_main(cfg)
    except PredictError as error:
        print("config error: " + " ".join(str(error).split()), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
