"""``python -m models.training.study <sweep dir> [--docs docs/study.md]``: the study report of a finished sweep."""

from .report import main

main()
