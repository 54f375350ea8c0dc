"""The real-model suite (``tests/helpers/keras_real_models.py``): 25 published model shapes, saved as ``.keras`` and
``.h5``, must import exactly (<= 1e-5) from Keras 3, and from ``tf_keras`` where TensorFlow is installed."""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
SCRIPT = Path(__file__).resolve().parents[1] / "helpers" / "keras_real_models.py"


@pytest.mark.slow
def test_real_models_from_keras3() -> None:
    pytest.importorskip("keras")
    env = {**os.environ, "KERAS_BACKEND": "torch", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, env=env, timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert result.stdout.count(" ok ") == 50 and "all exact" in result.stdout


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("tf_keras") is None,
                    reason="TensorFlow and tf_keras are not installed (not dependencies of this project); the "
                           "tf_keras half of the real-model suite runs where they are")
def test_real_models_from_tf_keras() -> None:
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--tf-keras"], capture_output=True, text=True, env=env,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert result.stdout.count(" ok ") == 50 and "all exact" in result.stdout    # attention and TimeDistributed too


def test_the_suite_covers_at_least_20_models() -> None:
    keras = pytest.importorskip("keras")
    from helpers import keras_real_models

    assert len(keras_real_models.builders(keras)) >= 20
