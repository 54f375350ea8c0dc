"""``optim.ema_decay``: the moving average of the weights against its formula, what validation and ``best.pt`` use,
the refusal of a decay outside [0, 1), and a kill + resume that continues the average bit for bit."""

import json
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from helpers.composing import TINY
from test_train_run import kill_at_10_then_resume, run_train
from torch import nn

from models.training.checkpoint import load_checkpoint
from models.training.config import ConfigError, check_config
from models.training.weight_average import WeightAverage


class WithBuffer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(5, 3).double()
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))


def test_the_average_follows_its_formula_and_the_swap_gives_the_raw_weights_back() -> None:
    model, decay = WithBuffer(), 0.8
    average = WeightAverage(model, decay)
    with average.swapped_in():                     # no update yet: no average, the model keeps its weights
        assert torch.equal(model.linear.weight, model.state_dict()["linear.weight"])
    expected = None
    for _ in range(6):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model.count += 1
        average.update()
        now = {k: v.clone() for k, v in model.state_dict().items()}
        expected = now if expected is None else {
            k: (decay * expected[k] + (1 - decay) * now[k]) if now[k].is_floating_point() else now[k] for k in now}
    got = average.weights()
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], rtol=1e-12, atol=1e-12, msg=name)
    assert int(got["count"]) == 6                  # buffers are copied, not averaged
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    with average.swapped_in():
        assert torch.equal(model.linear.weight, got["linear.weight"])
        assert not torch.equal(model.linear.weight, raw["linear.weight"])
    assert all(torch.equal(model.state_dict()[k], raw[k]) for k in raw)


@pytest.mark.parametrize("decay", ["1.0", "1.5", "-0.1"])
def test_a_decay_outside_0_1_is_refused(compose: Callable[..., Any], decay: str) -> None:
    if decay.startswith("-"):                      # the schema's bound, at compose time or in check_config
        with pytest.raises(Exception, match="ema_decay"):
            check_config(compose(*TINY, f"optim.ema_decay={decay}"))
        return
    with pytest.raises(ConfigError, match=rf"optim.ema_decay={decay} must be in \[0, 1\)"):
        check_config(compose(*TINY, f"optim.ema_decay={decay}"))


def test_validation_and_best_pt_use_the_average(tmp_path: Path, compose: Callable[..., Any]) -> None:
    from models import create_model
    from models.data import build_data
    from models.training.evaluation import evaluate

    overrides = [*TINY, "trainer.max_epochs=1", "optim.ema_decay=0.9"]
    result = run_train(f"hydra.run.dir={tmp_path}", *overrides[len(TINY):])
    assert result.returncode == 0, result.stderr[-3000:]
    last = load_checkpoint(tmp_path / "checkpoints" / "last.pt")
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    averaged, raw = last["ema"]["weights"], last["model"]
    assert int(last["ema"]["n_averaged"]) == last["progress"]["step"]
    assert all(torch.equal(best["model"][k], averaged[k]) for k in averaged)       # best.pt: the average
    assert not all(torch.equal(raw[k], averaged[k]) for k in raw)                  # training: the raw weights

    cfg = compose(*overrides)
    data = build_data(cfg.data, seed=cfg.seed)
    values = {k: v for k, v in cfg.model.items() if k != "name"}
    model = create_model(cfg.model.name, vocab_size=data.vocab_size, num_classes=data.num_classes, **values).eval()
    loader = data.loader("val", cfg.data.eval_batch_size, shuffle=False, seed=cfg.seed)
    logged = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    model.load_state_dict(averaged)
    assert logged["val_loss"] == pytest.approx(evaluate(model, loader, torch.device("cpu"))["loss"], rel=1e-5)
    model.load_state_dict(raw)
    assert logged["val_loss"] != pytest.approx(evaluate(model, loader, torch.device("cpu"))["loss"], rel=1e-5)


@pytest.mark.slow  # three tiny runs (~20 s); the resume machinery itself is in the default suite
def test_kill_mid_epoch_then_resume_continues_the_average_bit_for_bit(tmp_path: Path) -> None:
    common = ["model.dropout=0.3", "trainer.checkpoint_every_steps=4", "optim.ema_decay=0.9"]
    straight = run_train(f"hydra.run.dir={tmp_path / 'straight'}", *common)
    assert straight.returncode == 0, straight.stderr[-3000:]
    killed_dir = tmp_path / "killed"
    kill_at_10_then_resume(killed_dir, common)
    a = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    b = load_checkpoint(killed_dir / "checkpoints" / "last.pt")
    for part in ("model", "ema"):
        weights_a = a[part] if part == "model" else a[part]["weights"]
        weights_b = b[part] if part == "model" else b[part]["weights"]
        assert all(torch.equal(weights_a[k], weights_b[k]) for k in weights_a), part
    assert json.loads((tmp_path / "straight" / "results.json").read_text())["test_accuracy"] == \
        json.loads((killed_dir / "results.json").read_text())["test_accuracy"]
