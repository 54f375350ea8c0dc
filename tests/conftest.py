"""Suite-wide settings and fixtures."""

from typing import Callable, Iterator

import pytest
import torch
from composing import compose_config
from omegaconf import DictConfig

from models.blocks import cpu_kernel
from models.blocks.cpu_kernel import build as cpu_kernel_build


@pytest.fixture(scope="session")
def compose() -> Callable[..., DictConfig]:
    """``compose(*overrides, hydra=False)``: ``conf/config.yaml`` composed with Hydra's compose API
    (``tests/composing.py``; ``*TINY`` first for the tiny run)."""
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


@pytest.fixture(params=KERNEL_CAPABILITIES or [pytest.param(None, marks=pytest.mark.skip(reason="CPU kernel not built"))])
def capability(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """The kernel library of one capability loaded in place of the default, blocks forced onto it."""
    monkeypatch.setattr(cpu_kernel, "_library", cpu_kernel_build.load(request.param))
    monkeypatch.setattr(cpu_kernel, "_capability", request.param)
    with cpu_kernel.forced():
        yield request.param
