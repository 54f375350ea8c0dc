"""A tiny TREC-format dataset written on the fly (no download, no shared files) and a tiny run trained on it.

Six question templates, one per TREC class, with words drawn from small lists: a hidden size 8 model learns most
of them in a few epochs. ``tiny_text_run(folder)`` trains ``python train.py data=trec`` on it in this process (a
couple of seconds) and returns the run folder and the data root.
"""

import random
from pathlib import Path
from typing import List, Tuple

from helpers.composing import compose_config

TEMPLATES = {
    "LOC:city": "What is the capital of {} ?",
    "HUM:ind": "Who wrote {} ?",
    "NUM:count": "How many {} are there in the world ?",
    "ABBR:exp": "What does {} stand for ?",
    "DESC:def": "What is a {} ?",
    "ENTY:color": "What color is the {} ?",
}
WORDS = ["peru", "France", "hamlet", "NASA", "walrus", "apples", "Mozart", "the sea", "1984", "Paris", "tigers",
         "IBM", "the moon", "Kenya", "grass", "bicycles"]


def lines(count: int, seed: int) -> List[str]:
    rng = random.Random(seed)
    labels = sorted(TEMPLATES)
    return [f"{label} {TEMPLATES[label].format(rng.choice(WORDS))}" for label in
            (labels[i % len(labels)] for i in range(count))]


def write_tiny_trec(root: Path, train: int = 240, test: int = 36, seed: int = 0) -> Path:
    """``root/trec/{train_5500.label, TREC_10.label}`` in the TREC format; returns ``root``."""
    (root / "trec").mkdir(parents=True, exist_ok=True)
    (root / "trec" / "train_5500.label").write_text("\n".join(lines(train, seed)) + "\n", encoding="latin-1")
    (root / "trec" / "TREC_10.label").write_text("\n".join(lines(test, seed + 1)) + "\n", encoding="latin-1")
    return root


def tiny_text_overrides(root: Path, *extra: str, unk_shapes: bool = True) -> Tuple[str, ...]:
    return ("data=trec", f"data.root={root}", "data.download=false", "data.verify_checksum=false",
            "data.batch_size=16", f"data.unk_shapes={str(unk_shapes).lower()}", "model.embed_dim=8",
            "model.hidden_size=8",
            "optim.lr=0.03", "optim.warmup_steps=0", "trainer.max_epochs=4", "trainer.num_threads=1",
            "trainer.tensorboard=false", "trainer.infer_batches=1",
            *extra)


def tiny_text_run(folder: Path, *extra: str, unk_shapes: bool = True) -> Tuple[Path, Path]:
    """Train the tiny text run into ``folder / "run"``; returns ``(run folder, data root)``."""
    from models.training.loop import train

    root = write_tiny_trec(folder / "data")
    run_dir = folder / "run"
    train(compose_config(*tiny_text_overrides(root, *extra, unk_shapes=unk_shapes)), run_dir)
    return run_dir, root
