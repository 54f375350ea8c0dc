"""Which skips CI must not have (tests/conftest.py): a missing ``dev`` module or shared data fails under
``BIRNN_ZOO_CI=1``; a missing GPU, a CPU without a bf16 LSTM or an extra outside ``dev`` stays a skip."""

import pytest
from conftest import ci_should_have_prevented


@pytest.mark.parametrize(("reason", "fails"), [
    ("could not import 'keras': No module named 'keras'", True),
    ("could not import 'hydra_plugins.hydra_joblib_launcher' (pip install -e '.[dev]')", True),
    ("the property tests need hypothesis (pip install -e '.[dev]')", True),
    ("needs the shared TREC files", True),
    ("shared data folder /x/shared/data is missing (see shared/README.md)", True),
    ("needs CUDA", False),
    ("could not import 'onnx': No module named 'onnx'", False),
    ("submitit comes with the sweep extra (pip install -e '.[sweep]')", False),
    ("nn.LSTM has no bf16 autocast on this CPU", False),
])
def test_ci_fails_exactly_the_skips_it_should_have_prevented(reason: str, fails: bool) -> None:
    assert ci_should_have_prevented(reason) is fails
