"""The notebooks in ``notebooks/``: each executes top to bottom without an error; committed ones hold no outputs.

The kernel is this interpreter (``sys.executable -m ipykernel_launcher``), whatever ``python3`` kernelspec is
installed or missing: a fresh ``pip install -e .[dev]`` has ipykernel but may have no registered kernelspec, and
an installed one may point at another Python.
"""

import sys
from pathlib import Path
from typing import Dict, Optional

import nbformat
import pytest
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
from jupyter_client.manager import KernelManager
from nbclient import NotebookClient

from models.training.notebook_utils import notebook_output_problems

NOTEBOOKS = Path(__file__).resolve().parents[2] / "notebooks"
NOTEBOOK_PATHS = sorted(NOTEBOOKS.glob("*.ipynb"))
KERNEL_NAME = "python3"


class CurrentPythonKernelSpecs(KernelSpecManager):
    """Resolves ``python3`` to an ipykernel running on ``sys.executable`` (the interpreter running the tests), with
    ``env`` added to its environment."""

    env: Dict[str, str] = {}

    def get_kernel_spec(self, kernel_name: str) -> KernelSpec:
        if kernel_name != KERNEL_NAME:
            raise NoSuchKernel(kernel_name)
        return KernelSpec(
            argv=[sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            display_name="Python 3 (tests)", language="python", name=KERNEL_NAME, resource_dir=str(NOTEBOOKS),
            env=dict(self.env),
        )


def execute_notebook(path: Path, cwd: Optional[Path] = None, timeout: int = 600,
                     temporary: Optional[Path] = None) -> nbformat.NotebookNode:
    """Run every cell of ``path`` in a fresh kernel on this interpreter (its temporary files in ``temporary``, when
    given: ``TMPDIR``); raises ``CellExecutionError`` on an error."""
    notebook = nbformat.read(path, as_version=4)
    specs = CurrentPythonKernelSpecs()
    if temporary is not None:
        specs.env = {"TMPDIR": str(temporary)}
    manager = KernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs)
    client = NotebookClient(notebook, km=manager, timeout=timeout, kernel_name=KERNEL_NAME,
                            resources={"metadata": {"path": str(cwd or path.parent)}})
    client.execute()
    return notebook


def test_there_are_notebooks() -> None:
    assert [p.name for p in NOTEBOOK_PATHS] == ["01_quickstart.ipynb", "02_merge_modes.ipynb", "03_from_keras.ipynb",
                                                 "04_predict.ipynb"]


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.stem)
def test_committed_notebooks_hold_no_outputs(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook_output_problems(notebook) == [], f"{path.name}: clear outputs before committing"
    assert any(cell.cell_type == "code" for cell in notebook.cells)


def test_the_kernel_runs_on_this_interpreter(tmp_path: Path) -> None:
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("import sys; print(sys.executable)")])
    path = tmp_path / "which.ipynb"
    nbformat.write(notebook, path)
    executed = execute_notebook(path, timeout=120)
    assert executed.cells[0].outputs[0]["text"].strip() == sys.executable


@pytest.mark.parametrize("path", NOTEBOOK_PATHS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path: Path, tmp_path: Path) -> None:
    # From notebooks/ as a user would; the notebooks write only to temporary folders, and remove them at the end.
    temporary = tmp_path / "tmp"
    temporary.mkdir()
    executed = execute_notebook(path, temporary=temporary)
    errors = [output for cell in executed.cells if cell.cell_type == "code" for output in cell.get("outputs", [])
              if output.get("output_type") == "error"]
    assert errors == []
    assert all(cell.get("execution_count") for cell in executed.cells if cell.cell_type == "code")
    # Only torch's own compile cache (torchinductor_<user>, kept across runs by design) may stay.
    assert sorted(p.name for p in temporary.iterdir() if not p.name.startswith("torchinductor_")) == []
