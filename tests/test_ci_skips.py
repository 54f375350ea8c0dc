"""Which skips CI must not have (tests/conftest.py): a missing ``dev`` module or shared data fails under
``BIRNN_ZOO_CI=1``; a missing GPU, a CPU without a bf16 LSTM or an extra outside ``dev`` stays a skip."""

import sys

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


# -- per-test skips: a missing module skips each test with its reason; CI fails the ones it should have prevented --
pytest_plugins = ("pytester",)

NEEDS_A_MODULE = '''
import sys

import pytest
from helpers.optional import optional_import

module, needs_it = optional_import("{name}", "the tests of this file need it")
pytestmark = needs_it
TABLE = [module.first, module.second]                # module-level use of the missing module still imports


@pytest.mark.parametrize("entry", TABLE)
def test_each(entry):
    assert entry is not None


@module.decorator(setting=1)
def test_decorated():
    assert module.compute() == 1
'''


@pytest.mark.parametrize(("name", "ci", "outcomes"), [
    ("keras", "0", {"skipped": 3}),           # a dev module: a skip outside CI...
    ("keras", "1", {"errors": 3}),            # ...and a failure of each test in CI
    ("onnx", "1", {"skipped": 3}),            # not in the dev extra: a skip, even in CI
])
def test_a_missing_module_skips_each_test_with_the_reason(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch,
                                                          name: str, ci: str, outcomes: dict) -> None:
    monkeypatch.setitem(sys.modules, name, None)       # as if not installed
    monkeypatch.setenv("BIRNN_ZOO_CI", ci)
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")    # the inner run needs no installed plugin
    pytester.makepyfile(test_inner=NEEDS_A_MODULE.format(name=name))
    result = pytester.runpytest_inprocess("-p", "conftest", "-rs", "-p", "no:cacheprovider")
    result.assert_outcomes(**outcomes)
    reason = f"could not import '{name}': import of {name} halted; None in sys.modules; the tests of this file need it"
    result.stdout.fnmatch_lines([f"*{reason}*"])
    if ci == "1" and name == "keras":
        result.stdout.fnmatch_lines(["*BIRNN_ZOO_CI=1: skipped for a reason CI must prevent*"])


def test_an_installed_module_runs_the_tests(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    pytester.makepyfile(test_inner=NEEDS_A_MODULE.replace("module.first, module.second", "[1], [2]").replace(
        "@module.decorator(setting=1)\n", "").replace("module.compute()", "len(module.path.join('a'))").format(
        name="os"))
    pytester.runpytest_inprocess("-p", "conftest", "-p", "no:cacheprovider").assert_outcomes(passed=3)
