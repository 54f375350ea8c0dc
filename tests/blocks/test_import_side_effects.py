"""``import models`` has no side effects: no Hydra, OmegaConf or ``torch._dynamo`` imported, nothing registered, no
kernel built; the CPU kernel is built by its first use and says so once on stderr."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Dict, Optional

import pytest
import torch

from models.blocks import compile_boundary
from models.blocks.cpu_kernel import build as cpu_kernel_build

ROOT = Path(__file__).resolve().parents[2]
COMPILE_LINE = "birnn-zoo: compiling the CPU kernel"


def _python(code: str, env: Optional[Dict[str, str]] = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """``code`` in a fresh interpreter in the checkout (so it imports this worktree's ``models``)."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def test_import_models_imports_no_hydra_omegaconf_or_dynamo_and_registers_nothing() -> None:
    run = _python("""
        import sys
        import models
        from models.blocks import cpu_kernel
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("hydra", "omegaconf")
                       or m == "torch._dynamo" or m.startswith("torch._dynamo."))
        print("heavy", heavy)
        print("kernel tried", cpu_kernel._tried)
        from hydra.core.config_store import ConfigStore
        from omegaconf import OmegaConf
        print("model group", "model" in ConfigStore.instance().repo)
        print("resolver", OmegaConf.has_resolver("zoo_preset"))
        import models.training
        print("after training", "preset.yaml" in ConfigStore.instance().repo["model"],
              OmegaConf.has_resolver("zoo_preset"))
        """)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert lines == ["heavy []", "kernel tried False", "model group False", "resolver False",
                     "after training True True"], run.stdout


def test_the_training_app_registers_the_model_group_idempotently() -> None:
    pytest.importorskip("hydra")
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    import models.training  # noqa: F401  (registers)
    from models.zoo import config_group

    before = ConfigStore.instance().repo["model"]["preset.yaml"].node
    config_group.register()
    assert ConfigStore.instance().repo["model"]["preset.yaml"].node == before
    assert OmegaConf.has_resolver(config_group.RESOLVER)
    cfg = OmegaConf.create({"name": "bilstm", "hidden_size": "${zoo_preset:${.name},hidden_size}"})
    assert cfg.hidden_size == config_group.preset_value("bilstm", "hidden_size")


def test_constant_when_traced_marks_as_torch_does() -> None:
    """``compile_boundary`` sets the attribute ``torch.compiler.assume_constant_result`` sets, and nothing else
    differs: a torch that marks functions another way fails here (and the graph-break tests)."""
    def theirs() -> int:
        return 1

    def ours() -> int:
        return 1

    assert torch.compiler.assume_constant_result(theirs) is theirs
    assert compile_boundary.constant_when_traced(ours) is ours
    assert set(vars(theirs)) == set(vars(ours)) == {compile_boundary._MARK}
    assert vars(theirs) == vars(ours)


def test_eager_under_compile_runs_the_function_and_breaks_the_graph_once() -> None:
    calls = []

    def body(x: torch.Tensor) -> torch.Tensor:
        calls.append(torch.compiler.is_compiling())
        return x.sin()

    boundary = compile_boundary.eager_under_compile("test_body", body)
    with pytest.raises(ValueError, match="test_body"):
        compile_boundary.eager_under_compile("test_body", body)

    def f(x: torch.Tensor) -> torch.Tensor:
        return boundary(x * 2).cos()

    x = torch.randn(3)
    assert torch.equal(boundary(x), x.sin()) and calls == [False]
    explained = torch._dynamo.explain(f)(x)
    assert (explained.graph_count, explained.graph_break_count) == (2, 1)
    assert "compiler.disable" in explained.break_reasons[0].reason
    assert calls == [False, False]                     # under compile, body ran as eager PyTorch


def test_compile_message_is_one_line_naming_the_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setattr(cpu_kernel_build, "_announced", False)
    cpu_kernel_build._announce("avx2", tmp_path)
    cpu_kernel_build._announce("avx2", tmp_path)
    err = capsys.readouterr().err
    assert err.count(COMPILE_LINE) == 1 and len(err.splitlines()) == 1
    assert str(tmp_path) in err and "(avx2)" in err and cpu_kernel_build.KERNEL_CACHE_ENV in err


def test_constructing_a_block_builds_nothing(tmp_path: Path) -> None:
    run = _python("""
        import models
        from models.blocks import cpu_kernel
        block = models.BiLSTM(4, 8, num_layers=2, merge_mode="sum")
        gru = models.BiGRU(4, 8, device="meta")
        print("tried", cpu_kernel._tried)
        """, env={cpu_kernel_build.KERNEL_CACHE_ENV: str(tmp_path / "cache")})
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == ["tried", "False"]
    assert COMPILE_LINE not in run.stderr
    assert not (tmp_path / "cache").exists()


_FIRST_USE = """
    import torch
    import models
    from models.blocks import cpu_kernel
    with cpu_kernel.forced():
        for cls in (models.BiLSTM, models.BiGRU):
            cls(4, 8, merge_mode="sum")(torch.randn(2, 5, 4))
    print("capability", cpu_kernel.capability())
    """


@pytest.mark.slow
def test_first_use_compiles_once_with_one_line_then_the_cache_is_silent(tmp_path: Path) -> None:
    """A fresh process with an empty cache compiles at the first forward and says so once; a second process loads
    the cached library and prints nothing."""
    if not cpu_kernel_build.supported_capabilities():
        pytest.skip("no CPU kernel on this machine (not x86-64 Linux with AVX2, or a torch without MKL)")
    env = {cpu_kernel_build.KERNEL_CACHE_ENV: str(tmp_path / "cache")}
    first = _python(_FIRST_USE, env=env, timeout=900)
    assert first.returncode == 0, first.stderr
    capability = first.stdout.split()[-1]
    assert capability in cpu_kernel_build.CAPABILITIES, first.stdout
    assert first.stderr.count(COMPILE_LINE) == 1, first.stderr
    assert str(tmp_path / "cache") in first.stderr
    assert list((tmp_path / "cache").glob(f"birnn_cpu-{capability}-*.so"))
    second = _python(_FIRST_USE, env=env)
    assert second.returncode == 0, second.stderr
    assert second.stdout.split()[-1] == capability
    assert COMPILE_LINE not in second.stderr, second.stderr


# -- train.py --help -------------------------------------------------------------------------------------------------
def test_train_help_loads_hydra_and_the_registrations_but_not_the_training_stack() -> None:
    run = _python("""
        import runpy, sys
        sys.argv = ["train.py", "--help", "model=bigru"]
        runpy.run_path("train.py", run_name="__main__")
        loaded = [m for m in ("models.training.loop", "models.training.checkpoint", "torch._dynamo", "tensorboard")
                  if m in sys.modules]
        print("LOADED", loaded)
        """)
    assert run.returncode == 0, run.stderr
    assert "name: bigru" in run.stdout and "== Flags ==" in run.stdout
    assert run.stdout.splitlines()[-1] == "LOADED []"


def test_train_help_answers_help_with_overrides_only() -> None:
    import train

    for arguments in (["model=bigru"], ["-m", "--help"], ["--help", "--config-name", "config"], []):
        assert train._print_help(arguments) is False, arguments
    assert train._print_help(["--help", "model=no_such_model"]) is False   # Hydra reports the error


@pytest.mark.slow
def test_train_help_prints_what_hydras_help_prints() -> None:
    """The fast page against Hydra's own ``--help`` (reached by naming the config with a flag)."""
    ours = subprocess.run([sys.executable, "train.py", "--help", "model=bigru", "optim.lr=0.5"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    hydras = subprocess.run([sys.executable, "train.py", "--config-name", "config", "--help", "model=bigru",
                             "optim.lr=0.5"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert ours.returncode == hydras.returncode == 0, ours.stderr + hydras.stderr
    assert ours.stdout == hydras.stdout and "lr: 0.5" in ours.stdout
