"""``python -m benchmarks.quantized_accuracy RUN [RUN ...]``: test accuracy of trained runs before and after
``models.quantize`` (issue 35's bar: at most 0.3 points lost), each run on its own data config's test split
(``models.deploy.evaluate.evaluate_run``), the same rows, the same preprocessing.

Results: ``benchmarks/results/accuracy_int8.json`` (``--out``) and a Markdown table on stdout.
"""

import argparse
from pathlib import Path
from typing import Any, Dict, List, Optional

from .harness import Column, table, write_results
from .machine import describe

RESULTS = Path(__file__).resolve().parent / "results"


def measure(run: str) -> Dict[str, Any]:
    """One run's test accuracy in float32 and int8 (the same ``Predictor``, its model swapped for the int8 copy)."""
    from models import quantize
    from models.deploy.evaluate import evaluate_run
    from models.deploy.predictor import load_run

    predictor = load_run(run)
    before = evaluate_run(predictor)
    predictor.model = quantize(predictor.model)
    after = evaluate_run(predictor)
    cfg = predictor.config or {}
    return {"run": run, "data": before["data"], "rows": before["rows"],
            "model": (cfg.get("model") or {}).get("name"),
            "float32_accuracy": before["accuracy"], "int8_accuracy": after["accuracy"],
            "change_points": 100 * (after["accuracy"] - before["accuracy"]),
            "float32_loss": before["loss"], "int8_loss": after["loss"]}


COLUMNS: List[Column] = [
    ("data", lambda r: r["data"]), ("model", lambda r: r["model"]), ("test rows", lambda r: r["rows"]),
    ("float32 accuracy", lambda r: f"{100 * r['float32_accuracy']:.1f}%"),
    ("int8 accuracy", lambda r: f"{100 * r['int8_accuracy']:.1f}%"),
    ("change (points)", lambda r: f"**{r['change_points']:+.1f}**"),
    ("loss float32 / int8", lambda r: f"{r['float32_loss']:.4f} / {r['int8_loss']:.4f}"),
]


def markdown(document: Dict[str, Any]) -> str:
    head = "Test accuracy of trained runs, float32 and after `models.quantize` (the same rows and preprocessing)."
    return "\n".join([head, "", *table(COLUMNS, document["rows"])])


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", help="run folders (python train.py's output folders)")
    parser.add_argument("--out", type=Path, default=RESULTS / "accuracy_int8.json")
    args = parser.parse_args(argv)
    rows = [measure(run) for run in args.runs]
    document = {"machine": describe("cpu", 1), "rows": rows}
    write_results(args.out, document)
    print(markdown(document))


if __name__ == "__main__":
    main()
