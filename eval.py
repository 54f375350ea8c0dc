"""Evaluate a saved model: ``python eval.py run=outputs/<date>/<time> [data=sst2 data.root=...] [split=test]``.

Writes ``eval_results.json`` (accuracy, loss, confusion matrix, the data config) into its own folder,
``outputs/eval/<date>/<time>/`` (``hydra.run.dir``): the run's own ``results.json`` is never touched.
Exit status 0, or 2 with a one-line message when an option or the data cannot be used.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see train.py)

import sys

import hydra
from omegaconf import DictConfig

import models.training  # noqa: F401  (registers the data config schemas conf/data/*.yaml check against)
from models.deploy.predict_cli import PredictError, eval_main


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
def main(cfg: DictConfig) -> float:
    try:
        return eval_main(cfg)
    except PredictError as error:
        print("config error: " + " ".join(str(error).split()), file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
