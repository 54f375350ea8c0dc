"""The package grouped by layer: old flat module paths still import, as the same module objects."""

import importlib
import subprocess
import sys

import pytest

import models
from models import _moved


@pytest.mark.parametrize("old, new", sorted(_moved.MOVED.items()))
def test_old_module_path_is_the_new_module(old: str, new: str) -> None:
    assert importlib.import_module(old) is importlib.import_module(new)
    assert getattr(models, old.split(".", 1)[1]) is importlib.import_module(new)


def test_patching_the_old_path_patches_the_new(monkeypatch: pytest.MonkeyPatch) -> None:
    import models.cpu_kernel as old

    from models.blocks import cpu_kernel as new

    monkeypatch.setattr(old, "capability", lambda: "patched")
    assert new.capability() == "patched"


def test_moved_module_keeps_its_own_spec() -> None:
    import models.trainer  # noqa: F401

    assert sys.modules["models.trainer"].__spec__.name == "models.training.loop"


def test_export_is_one_thing_the_function() -> None:
    assert callable(models.export) and models.export.__module__ == "models.deploy.exporters"
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("models.export")


def test_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        models.nonexistent  # noqa: B018


def test_python_dash_m_runs_a_moved_module() -> None:
    done = subprocess.run([sys.executable, "-m", "models.report", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert "sweep" in done.stdout


def test_submodules_of_a_moved_package_are_the_same_objects() -> None:
    import models.cpu_kernel.policy as old

    import models.blocks.cpu_kernel.policy as new

    assert old is new
    assert importlib.import_module("models.cpu_kernel.inference") is importlib.import_module(
        "models.blocks.cpu_kernel.inference")
