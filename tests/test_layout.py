"""The package grouped by layer: one name per module, no aliases for the flat paths it had before grouping."""

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

import models

ROOT = Path(__file__).resolve().parents[1]
# The flat module paths the package had before it was grouped by layer; none of them may come back.
FLAT_PATHS = ("cpu_kernel", "cpu_kernel_build", "cpu_kernel_policy", "cpu_kernel_reference", "validation", "packed",
              "gru_reset_before", "registry", "classifier", "pooling", "token_ids", "compile", "trainer", "config",
              "checkpoint", "resume", "run_folder", "stopping", "distributed", "report", "notebook_utils")


@pytest.mark.parametrize("name", FLAT_PATHS)
def test_a_flat_path_is_not_importable(name: str) -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(f"models.{name}")
    with pytest.raises(AttributeError, match=f"no attribute '{name}'"):
        getattr(models, name)


def test_no_file_in_the_repository_names_a_flat_path() -> None:
    """Docs, notebooks, configs, benchmarks and tests name each module by its one real path."""
    flat = re.compile(r"(?<![\w.])models\.(" + "|".join(FLAT_PATHS) + r")(?![\w])"
                      r"|from models import [\w, ]*\b(" + "|".join(FLAT_PATHS) + r")\b")
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    if not tracked:
        pytest.skip("not a git checkout: no list of tracked files")
    offenders = []
    for name in tracked:
        path = ROOT / name
        if path.suffix not in {".py", ".md", ".yaml", ".ipynb", ".toml", ".sh"} or not path.is_file():
            continue
        if name == "tests/test_layout.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if flat.search(line):
                offenders.append(f"{name}:{number}: {line.strip()[:100]}")
    assert not offenders, "old flat module paths:\n" + "\n".join(offenders)


def test_no_import_hook_is_installed() -> None:
    finders = [type(finder).__module__ for finder in sys.meta_path]
    assert not any(module.startswith("models") for module in finders), finders


def test_export_is_one_thing_the_function() -> None:
    assert callable(models.export) and models.export.__module__ == "models.deploy.exporters"
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("models.export")


def test_python_dash_m_runs_the_report() -> None:
    done = subprocess.run([sys.executable, "-m", "models.training.report", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "sweep" in done.stdout
