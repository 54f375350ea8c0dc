"""The merge-mode study (issue 17): its statistics against hand-computed values, its config, its report and
the docs it generates. The study itself (96 runs, ~90 minutes) is not part of pytest."""

import json
import math
from pathlib import Path
from typing import Dict, List

import pytest
import torch
from helpers.composing import compose_config

from models.training.config import check_config
from models.training.report import load_results
from models.training.study.docs import BEGIN, END, rewrite_docs
from models.training.study.report import main, summarize_study, write_study
from models.training.study.stats import holm, mean_std, paired_t_test, t_two_sided_p

TASKS = ("ends_sum", "first_last", "trec", "sst2")


# -- statistics, on numbers worked out by hand -----------------------------------------------------------------

def test_mean_and_sample_std() -> None:
    stat = mean_std([0.80, 0.84, 0.88])
    assert stat["mean"] == pytest.approx(0.84, abs=1e-12) and stat["n"] == 3
    assert stat["std"] == pytest.approx(0.04, abs=1e-12)          # sqrt((0.04^2 + 0 + 0.04^2) / (3 - 1))
    assert mean_std([0.5])["std"] == 0.0
    with pytest.raises(ValueError, match="at least one value"):
        mean_std([])


def test_t_tail_matches_the_closed_forms_for_one_and_two_degrees_of_freedom() -> None:
    for t in (0.3, 1.0, 2.5, 7.0, -3.0):
        assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(abs(t)), abs=1e-12)
        assert t_two_sided_p(t, 2) == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t), abs=1e-12)
    assert t_two_sided_p(2.570581836, 5) == pytest.approx(0.05, abs=1e-8)     # the table's t_{0.975, 5}
    assert t_two_sided_p(0.0, 4) == pytest.approx(1.0)


def test_the_paired_t_test_on_three_seeds() -> None:
    # differences 0.02, 0.03, 0.01: mean 0.02, sample std 0.01, t = 0.02 / (0.01 / sqrt(3)) = 2 sqrt(3), df 2
    test = paired_t_test([0.90, 0.85, 0.80], [0.88, 0.82, 0.79])
    assert test["mean_diff"] == pytest.approx(0.02, abs=1e-12) and test["std_diff"] == pytest.approx(0.01, abs=1e-12)
    assert test["t"] == pytest.approx(2 * math.sqrt(3), rel=1e-9) and test["n"] == 3
    assert test["p"] == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14), rel=1e-9)   # = 0.0742
    assert paired_t_test([0.9, 0.8], [0.85, 0.8])["p"] == pytest.approx(0.5, abs=1e-12)   # t = 1, df = 1
    assert paired_t_test([0.75, 0.5, 0.25], [0.5, 0.25, 0.0])["p"] == 0.0       # every seed agrees exactly
    assert paired_t_test([0.9], [0.8])["p"] is None                            # one seed: no test
    with pytest.raises(ValueError, match="one value per seed"):
        paired_t_test([0.9, 0.8], [0.8])


def test_holm_adjustment() -> None:
    # sorted 0.01, 0.03, 0.04, 0.5 -> x4, x3, x2, x1 = 0.04, 0.09, 0.08 -> 0.09 (monotone), 0.5
    assert holm([0.01, 0.04, 0.03, None, 0.5]) == pytest.approx([0.04, 0.09, 0.09, None, 0.5])
    assert holm([0.3, 0.2]) == pytest.approx([0.4, 0.4])


# -- the study config ------------------------------------------------------------------------------------------

def composed(*overrides: str, hydra: bool = True):
    """The study's configs, with the ``hydra`` node (sweeper params, launcher, callbacks) by default."""
    return compose_config(*overrides, hydra=hydra)


def test_the_study_config_composes_into_96_valid_runs_two_at_a_time() -> None:
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    cfg = composed("experiment=study")
    params = cfg.hydra.sweeper.params
    assert params["study"].split(",") == list(TASKS) and params["model"].split(",") == ["bilstm", "bigru"]
    assert params["model.merge_mode"].split(",") == ["concat", "sum", "mul", "ave"]
    assert len(params["seed"].split(",")) >= 3
    jobs = math.prod(len(str(v).split(",")) for v in params.values())
    assert jobs == 96
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert cfg.hydra.launcher.n_jobs * cfg.trainer.num_threads <= 2               # the study's 2 cores
    assert cfg.hydra.callbacks.study_report._target_ == "models.training.study.report.StudyCallback"
    names = {}
    for task in TASKS:
        for model in ("bilstm", "bigru"):
            run = composed("experiment=study", f"study={task}", f"model={model}", "model.merge_mode=mul", "seed=2",
                           hydra=False)
            data = check_config(run).data              # every job's config passes the trainer's own checks
            assert run.model.merge_mode == "mul" and run.model.cell == model[2:] and run.seed == 2
            names[task] = data["name"] if data["name"] != "synthetic" else data["task"]
    assert names == {task: task for task in TASKS}


# -- the report and the docs, on fake runs -----------------------------------------------------------------------

def write_fake_run(folder: Path, data: str, model: str, mode: str, seed: int, accuracy: float) -> None:
    folder.mkdir(parents=True)
    config = {"model": {"name": model, "cell": model[2:], "merge_mode": mode, "hidden_size": 8},
              "data": {"name": "synthetic", "task": data}, "trainer": {"max_epochs": 2}, "seed": seed}
    row = {"data": f"synthetic-{data}", "model": model, "cell": model[2:], "merge_mode": mode, "seed": seed,
           "num_parameters": 1000 if mode == "concat" else 800, "test_accuracy": accuracy,
           "best_val_accuracy": accuracy, "train_tokens_per_s": 100.0 * (seed + 1),
           "infer_tokens_per_s": 500.0, "epochs": 2, "config": config}
    (folder / "results.json").write_text(json.dumps(row))


FAKE: Dict[str, Dict[str, List[float]]] = {
    "ends_sum": {"concat": [0.90, 0.85, 0.80], "sum": [0.88, 0.82, 0.79]},
    "first_last": {"concat": [0.60, 0.62, 0.58], "sum": [0.50, 0.51, 0.49]},
}


def fake_sweep(folder: Path) -> None:
    number = 0
    for data, modes in FAKE.items():
        for mode, accuracies in modes.items():
            for seed, accuracy in enumerate(accuracies):
                write_fake_run(folder / str(number), data, "bilstm", mode, seed, accuracy)
                number += 1


def test_the_study_summary_pairs_modes_by_seed(tmp_path: Path) -> None:
    fake_sweep(tmp_path)
    study = summarize_study(load_results(tmp_path)[0])
    cells = {(c["data"], c["merge_mode"]): c for c in study["cells"]}
    assert cells[("synthetic-ends_sum", "concat")]["test_accuracy"]["mean"] == pytest.approx(0.85)
    assert cells[("synthetic-ends_sum", "concat")]["test_accuracy"]["std"] == pytest.approx(0.05)
    assert cells[("synthetic-ends_sum", "concat")]["speed_source"] == "training loop"
    by_data = {c["data"]: c for c in study["comparisons"]}
    assert by_data["synthetic-ends_sum"]["p"] == pytest.approx(1 - 2 * math.sqrt(3) / math.sqrt(14), rel=1e-9)
    assert not by_data["synthetic-ends_sum"]["differs"]
    # first_last: differences 0.10, 0.11, 0.09 -> t = 0.10 / (0.01 / sqrt 3), df 2
    t = 0.10 / (0.01 / math.sqrt(3))
    assert by_data["synthetic-first_last"]["p"] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-6)
    assert by_data["synthetic-first_last"]["differs"] and by_data["synthetic-first_last"]["a"] == "concat"


def test_the_docs_are_rewritten_between_the_markers_and_keep_the_hand_written_text(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    sweep = tmp_path / "sweep"
    fake_sweep(sweep)
    docs = tmp_path / "docs" / "study.md"
    docs.parent.mkdir()
    docs.write_text(f"# Study\n\nWhat mattered: dropout.\n\n{BEGIN}\nold numbers\n{END}\n\n## Notes\n\nkept\n")
    main([str(sweep), "--no-retime", "--docs", str(docs)])
    text = docs.read_text()
    assert text.startswith("# Study\n\nWhat mattered: dropout.\n\n") and text.endswith("## Notes\n\nkept\n")
    assert "old numbers" not in text and text.count(BEGIN) == 1 and text.count(END) == 1
    assert "| bilstm | concat | 3 | 1,000 | 85.0 +- 5.0 |" in text
    assert "| synthetic-first_last | bilstm | concat - sum | 3 | +10.00 | 1.00 |" in text
    assert "1 of 2 pairs do" in text
    assert ("no GPU numbers" in text) == (not torch.cuda.is_available())
    assert "Machine: " in text and "Command: `" in text
    assert "--no-retime --docs" in text
    for name in ("study_accuracy.png", "study_speed.png"):
        assert (docs.parent / "study" / name).stat().st_size > 1000 and f"(study/{name})" in text
    main([str(sweep), "--no-retime", "--docs", str(docs)])
    assert docs.read_text() == text                                              # idempotent
    broken = tmp_path / "broken.md"
    broken.write_text(f"{BEGIN}\nno end\n")
    with pytest.raises(ValueError, match="END generated"):
        rewrite_docs(broken, "x", [], "cmd")


def test_a_tiny_study_trains_and_retimes_the_trained_models(tmp_path: Path) -> None:
    """Two merge modes x two seeds of the study's own config, shrunk; then the post-sweep timing."""
    pytest.importorskip("hydra_plugins.hydra_joblib_launcher")
    from models.training.loop import train

    tiny = ["data.num_train=96", "data.num_val=32", "data.num_test=32", "data.min_len=4", "data.max_len=8",
            "data.batch_size=32", "model.hidden_size=8", "model.embed_dim=8", "trainer.max_epochs=1",
            "trainer.infer_batches=1"]
    number = 0
    for mode in ("concat", "mul"):
        for seed in (0, 1):
            cfg = composed("experiment=study", "study=first_last", f"model.merge_mode={mode}", f"seed={seed}", *tiny,
                           hydra=False)
            train(cfg, tmp_path / str(number))
            number += 1
    outputs = write_study(tmp_path, rounds=2, batch_size=16)
    study = json.loads(outputs["study.json"].read_text())
    assert [c["merge_mode"] for c in study["cells"]] == ["concat", "mul"]
    assert all(c["speed_source"] == "post-sweep timing" and c["train_tokens_per_s"]["mean"] > 0 for c in study["cells"])
    timed = [t for path, t in study["timings"].items() if path != "_settings"]
    assert len(timed) == 4 and all(t["trained_weights"] for t in timed)
    assert study["timing_settings"]["batches"]["synthetic-first_last"]["shape"][0] == 16
    assert "re-timed after the sweep on one fixed batch per task (synthetic-first_last: 16x" in (
        tmp_path / "study.md").read_text()


def test_one_seed_shows_no_spread_and_no_test(tmp_path: Path) -> None:
    from models.training.study.report import machine, markdown

    write_fake_run(tmp_path / "0", "first_last", "bilstm", "concat", 0, 0.5)
    write_fake_run(tmp_path / "1", "first_last", "bilstm", "mul", 0, 0.9)
    study = summarize_study(load_results(tmp_path)[0])
    assert study["comparisons"][0]["p"] is None and not study["comparisons"][0]["differs"]
    text = markdown({**study, "command": "python train.py", "machine": machine()})
    assert "| bilstm | concat | 1 | 1,000 | 50.0 | 100 | 500 |" in text and "+- 0" not in text
    assert "| concat - mul | 1 | -40.00 | n/a | n/a | n/a |" in text and "no spread to compare against" in text
