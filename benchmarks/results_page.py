"""``python -m benchmarks.results_page [--check]``: write ``benchmarks/RESULTS.md`` from ``benchmarks/results/*.json``.

The page holds the current tables only, grouped by machine, each headed by its date, commit and CPU as the
result file records them; every table is drawn by its own benchmark's ``markdown`` function, so the page and a
benchmark's own output never differ. Successive measurements and their discussion live in
``benchmarks/archive/``. ``--check`` exits 1 when the page is not what the result files give (nothing written).
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from .harness import write_atomic

HERE = Path(__file__).resolve().parent
RESULTS, PAGE = HERE / "results", HERE / "RESULTS.md"


def _report(document: Dict[str, Any]) -> str:
    from .report import markdown

    return markdown(document)


def _kernel_matrix(document: Dict[str, Any]) -> str:
    from .kernel_matrix import report

    return report(document)


def _latency(document: Dict[str, Any]) -> str:
    from .latency import markdown

    return markdown(document)


def _vs_onnxruntime(document: Dict[str, Any]) -> str:
    from .vs_onnxruntime import markdown

    return markdown(document["rows"])


def _quantized(document: Dict[str, Any]) -> str:
    from .quantized import markdown

    return markdown(document)


def _accuracy_int8(document: Dict[str, Any]) -> str:
    from .quantized_accuracy import markdown

    return markdown(document)


def _bf16(document: Dict[str, Any]) -> str:
    from .bf16 import markdown

    return markdown(document)


def _vs_tensorflow(document: Dict[str, Any]) -> str:
    from .vs_tensorflow import markdown

    return markdown(document)


def _startup(document: Dict[str, Any]) -> str:
    from .startup import markdown

    return markdown(document)


# Each benchmark's result files (by name prefix), the command that writes them and the function that draws them.
BENCHMARKS: List[Tuple[str, str, Callable[[Dict[str, Any]], str]]] = [
    ("kernel_matrix", "python -m benchmarks.kernel_matrix", _kernel_matrix),
    ("vs_onnxruntime", "python -m benchmarks.vs_onnxruntime", _vs_onnxruntime),
    ("latency", "python -m benchmarks.latency", _latency),
    ("vs_tensorflow", "python -m benchmarks.vs_tensorflow", _vs_tensorflow),
    ("quantized", "python -m benchmarks.quantized", _quantized),
    ("accuracy_int8", "python -m benchmarks.quantized_accuracy", _accuracy_int8),
    ("bf16", "python -m benchmarks.bf16", _bf16),
    ("cpu", "python -m benchmarks.run", _report),
    ("startup", "python -m benchmarks.startup", _startup),
]


def _file_date(path: Path) -> str:
    """The date of the last commit that changed ``path`` (the result files record no date of their own)."""
    try:
        out = subprocess.run(["git", "-C", str(path.parent), "log", "-1", "--format=%cs", "--", path.name],
                             capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return out or "not recorded"


def _machine(document: Dict[str, Any]) -> str:
    machine = document.get("machine") or {}
    return machine.get("cpu") or machine.get("lscpu") or "CPU not recorded"


def _heading(path: Path, document: Dict[str, Any]) -> str:
    machine = document.get("machine") or {}
    date = document.get("date") or _file_date(path)
    family = machine.get("cpu_family_model")
    return (f"Date {date}; commit {machine.get('commit') or 'not recorded'}; CPU {_machine(document)}"
            f"{f' ({family})' if family else ''}; torch {machine.get('torch', '?')}; file `results/{path.name}`.")


def _strip_title(text: str) -> str:
    """A benchmark's own Markdown less its page title (``# ...``), its sections two levels down."""
    lines = [line for line in text.splitlines() if not line.startswith("# ")]
    return "\n".join(("##" + line) if line.startswith("## ") else line for line in lines).strip()


def page(results: Path = RESULTS) -> str:
    by_machine: Dict[str, List[str]] = {}
    for prefix, command, draw in BENCHMARKS:
        for path in sorted(results.glob(f"{prefix}*.json")):
            document = json.loads(path.read_text())
            section = [f"### `{command}`: `{path.stem}`", "", _heading(path, document), "",
                       _strip_title(draw(document)), ""]
            by_machine.setdefault(_machine(document), []).extend(section)
    lines = ["# Benchmark results", "",
             "The current tables, per machine, as `python -m benchmarks.results_page` draws them from "
             "`benchmarks/results/*.json`. How each benchmark works and how to read it: "
             "[docs/benchmarks.md](../docs/benchmarks.md). Earlier measurements: "
             "[archive/RESULTS-2026-12.md](archive/RESULTS-2026-12.md).", ""]
    for machine, sections in by_machine.items():
        lines += [f"## {machine}", "", *sections]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if RESULTS.md is stale; write nothing")
    args = parser.parse_args(argv)
    text = page()
    if args.check:
        if not PAGE.exists() or PAGE.read_text() != text:
            print(f"{PAGE} is not what benchmarks/results/*.json give: run python -m benchmarks.results_page",
                  file=sys.stderr)
            raise SystemExit(1)
        return
    write_atomic(PAGE, text)
    print(f"wrote {PAGE}")


if __name__ == "__main__":
    main()
