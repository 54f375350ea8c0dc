"""Small labelled text files for the ``data=text_files`` tests and the runs that train on them: ``n`` rows, the label
told by one word of its class among filler words."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

WORDS = {"pos": ["good", "great", "fine", "nice"], "neg": ["bad", "awful", "poor", "sad"]}
FILLER = ["the", "a", "day", "film", "was", "very", "it", "so"]


def example_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (text, label) rows, the label told by one word of its class among filler words."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = ("pos", "neg")[i % 2]
        words = list(rng.choice(FILLER, size=int(rng.integers(3, 9))))
        words.insert(int(rng.integers(0, len(words))), str(rng.choice(WORDS[label])))
        rows.append((" ".join(words), label))
    return rows


def write_csv(path: Path, n: int, seed: int = 0, delimiter: str = ",") -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(["text", "label"])
        writer.writerows(example_rows(n, seed))
    return path


def write_jsonl(path: Path, n: int, seed: int = 0) -> Path:
    path.write_text("".join(json.dumps({"text": t, "label": y}) + "\n" for t, y in example_rows(n, seed)))
    return path
