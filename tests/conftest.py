"""Suite-wide settings and fixtures."""

import os
from typing import Callable, Iterator

import pytest
import torch
from helpers.composing import compose_config
from omegaconf import DictConfig

from models.blocks import cpu_kernel
from models.blocks.cpu_kernel import build as cpu_kernel_build

# The policy's fixed table, whatever this machine calibrated (read at the policy's first question, not on import).
os.environ.setdefault("BIRNN_ZOO_CPU_POLICY", "table")


@pytest.fixture(scope="session")
def compose() -> Callable[..., DictConfig]:
    """``compose(*overrides, hydra=False)``: ``conf/config.yaml`` composed with Hydra's compose API
    (``tests/helpers/composing.py``; ``*TINY`` first for the tiny run)."""
    return compose_config


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    """The tests run tiny models on a shared 2-core CPU: one intra-op thread avoids OpenMP contention
    (measured ~50x faster than two threads under load). Subprocesses set their own threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# The kernel tests run once per instruction set this CPU supports (AVX-512 and AVX2 on an AVX-512 machine).
KERNEL_CAPABILITIES = cpu_kernel_build.supported_capabilities() if cpu_kernel.available() else []


@pytest.fixture(params=KERNEL_CAPABILITIES or [pytest.param(None,
                                                            marks=pytest.mark.skip(reason="CPU kernel not built"))])
def capability(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The kernel library of one capability loaded in place of the default, blocks forced onto it."""
    monkeypatch.setattr(cpu_kernel, "_library", cpu_kernel_build.load(request.param))
    monkeypatch.setattr(cpu_kernel, "_capability", request.param)
    with cpu_kernel.forced():
        yield request.param


# -- no test passes empty in CI ---------------------------------------------------------------------------------
# `.ci/run` sets BIRNN_ZOO_CI=1: CI installs `.[dev]` and has the shared data folder beside the checkout, so a
# test that skips because one of those is missing is a CI set-up fault, reported as a failure (with its reason),
# not a quiet "s". Other skips (no GPU, no bf16 LSTM on this CPU, an extra outside `dev`) stay skips; `-rs` in
# pyproject's addopts prints every one with its reason.
CI_ENV = "BIRNN_ZOO_CI"
CI_PROVIDED_MODULES = ("keras", "matplotlib", "nbclient", "nbformat", "ipykernel", "hypothesis",
                       "hydra_plugins.hydra_joblib_launcher")
"""Modules of the ``dev`` extra (pyproject.toml): CI installs them."""


def ci_should_have_prevented(reason: str) -> bool:
    """Whether a skip's reason says something CI provides is missing: a ``dev`` module or the shared data."""
    lowered = reason.lower()
    if any(f"could not import '{module}'" in reason for module in CI_PROVIDED_MODULES) or ".[dev]" in reason:
        return True
    return "shared" in lowered and ("data" in lowered or "files" in lowered)


def _fail_a_preventable_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not (report.skipped and os.environ.get(CI_ENV) == "1" and isinstance(report.longrepr, tuple)):
        return
    reason = str(report.longrepr[2])
    if ci_should_have_prevented(reason):
        report.outcome = "failed"
        report.longrepr = (f"{CI_ENV}=1: skipped for a reason CI must prevent (install '.[dev]', the shared data): "
                           f"{reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    _fail_a_preventable_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Iterator[None]:
    """A whole file skipped at import (a module-level ``importorskip``) is judged as a test's skip is."""
    outcome = yield
    _fail_a_preventable_skip(outcome.get_result())
