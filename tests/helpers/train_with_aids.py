"""``python tests/helpers/train_with_aids.py <train.py arguments>`` (also as ``torchrun``'s script): ``train.py``
itself, run with the testing aids the environment asks for (``tests/helpers/testing_aids.py``) as a callback of the run.

The aids reach the loop the way any code adds to a run, through ``train(..., callbacks=[...])``; the production
``train.py`` and loop carry none of them.
"""

import functools
import os
import runpy
import sys
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")    # as train.py does, before torch loads OpenMP

HERE = Path(__file__).resolve().parent
ROOT = next(folder for folder in HERE.parents if (folder / "train.py").is_file())
sys.path[:0] = [str(ROOT), str(HERE)]                  # this checkout's models/, then the aids beside this file

from testing_aids import TestingAids  # noqa: E402

from models.training import loop  # noqa: E402

loop.train = functools.partial(loop.train, callbacks=[TestingAids.from_environment()])
sys.argv[0] = str(ROOT / "train.py")
runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
