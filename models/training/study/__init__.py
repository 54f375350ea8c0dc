"""The merge-mode study (``python train.py -m experiment=study``), run after a sweep, never by the training loop.

- ``report``: :class:`~models.training.study.report.StudyCallback` (Hydra runs it when the sweep ends) and the
  command ``python -m models.training.study <sweep dir> [--docs docs/study.md]`` write ``study.json``,
  ``study.md`` and the figures;
- ``timing``: every trained model re-timed after the sweep, interleaved, one thread;
- ``stats``: mean +- std over seeds and paired comparisons of merge modes by seed;
- ``figures``: the two matplotlib figures;
- ``docs``: the generated part of ``docs/study.md``.

Importing this package imports none of them.
"""
