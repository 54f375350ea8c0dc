"""On a CUDA run each training batch is copied into pinned (page-locked) host memory and then sent with
``non_blocking=True``, the only way such a copy is asynchronous; on the CPU nothing is pinned. Checked on the CPU by
calling ``_step`` with ``run.device`` set to CUDA while ``Tensor.pin_memory`` and ``to_device`` are stand-ins that
record their calls and keep the tensors where they are."""

from pathlib import Path
from typing import Any, List, Tuple

import pytest
import torch
from helpers.composing import TINY, compose_config

from models.training import loop
from models.training.config import check_config
from models.training.setup import set_up
from models.training.stopping import SignalStop


def _one_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, device: str) -> Tuple[List[int], List[Any], List[int]]:
    run = set_up(check_config(compose_config(*TINY)), tmp_path)
    batch = next(iter(run.data.loader("train", 8, shuffle=False, seed=0)))
    pinned: List[int] = []
    copies: List[Any] = []

    def pin_memory(self: torch.Tensor, *args: Any) -> torch.Tensor:
        pinned.append(id(self))
        return self

    def to_device(tensors: Any, target: torch.device) -> Tuple[torch.Tensor, ...]:
        tensors = tuple(tensors)
        copies.append((target, [id(t) for t in tensors]))
        return tensors

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_memory)
    monkeypatch.setattr(loop, "to_device", to_device)
    run.device = torch.device(device)
    with SignalStop() as signals:
        sums, _ = loop._step(run, batch, signals)
    assert sums is not None
    return pinned, copies, [id(t) for t in batch]


def test_a_cuda_run_pins_every_batch_tensor_before_the_copy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pinned, copies, batch_ids = _one_step(tmp_path, monkeypatch, "cuda")
    assert sorted(pinned) == sorted(batch_ids)                         # tokens, lengths, labels: each pinned once
    assert copies == [(torch.device("cuda"), batch_ids)]                # then sent (pin_memory returned the same)


def test_a_cpu_run_pins_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pinned, copies, batch_ids = _one_step(tmp_path, monkeypatch, "cpu")
    assert pinned == [] and copies == [(torch.device("cpu"), batch_ids)]


def test_to_device_copies_without_blocking(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: List[Any] = []
    monkeypatch.setattr(torch.Tensor, "to", lambda self, *args, **kwargs: calls.append((args, kwargs)) or self)
    from models.training.runtime import to_device
    to_device([torch.zeros(2), torch.zeros(3)], torch.device("cuda"))
    assert calls == [((torch.device("cuda"),), {"non_blocking": True})] * 2
