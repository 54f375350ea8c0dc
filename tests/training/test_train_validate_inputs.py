"""``trainer.validate_inputs``: the training loop runs every forward under ``validate_inputs(<the key>)``.

Each training forward of a tiny run reads its token ids and lengths back to the host once with the key true (one
sync per batch on CUDA) and never with it false, counted on the CPU with ``helpers.host_reads``. The step's
statistics are a separate read (``_step``'s one ``tolist`` of loss, correct and finite), with or without the key."""

from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
from helpers.composing import TINY, compose_config
from helpers.host_reads import counting_host_reads
from hydra.errors import ConfigCompositionException

from models.training.config import check_config
from models.training.loop import train
from models.zoo.classifier import SequenceClassifier

FORWARD = SequenceClassifier.forward


def _reads_per_training_forward(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str) -> Dict[str, Any]:
    reads: List[List[str]] = []

    def counted(self: SequenceClassifier, *args: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return FORWARD(self, *args)
        with counting_host_reads() as counter:
            logits = FORWARD(self, *args)
        reads.append(counter.ops)
        return logits

    monkeypatch.setattr(SequenceClassifier, "forward", counted)
    results = train(compose_config(*TINY, "trainer.max_epochs=1", "trainer.infer_batches=0",
                                   f"trainer.validate_inputs={value}"), tmp_path / value)
    return {"reads": reads, "steps": results["steps"]}


def test_each_training_forward_reads_once_with_validation_and_never_without(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    on = _reads_per_training_forward(monkeypatch, tmp_path, "true")
    off = _reads_per_training_forward(monkeypatch, tmp_path, "false")
    assert on["steps"] == off["steps"] == len(on["reads"]) == len(off["reads"]) > 0
    assert on["reads"] == [["Tensor.tolist"]] * on["steps"]
    assert off["reads"] == [[]] * off["steps"]


def test_the_key_is_a_bool_checked_when_the_config_is_composed() -> None:
    assert check_config(compose_config(*TINY)).trainer.validate_inputs is True
    assert check_config(compose_config(*TINY, "trainer.validate_inputs=false")).trainer.validate_inputs is False
    with pytest.raises(ConfigCompositionException, match=r"trainer\.validate_inputs=maybe"):
        compose_config(*TINY, "trainer.validate_inputs=maybe")
