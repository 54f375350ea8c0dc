"""Every test path a documented ``pytest`` command names exists: a command in README or docs whose paths went
stale when the tests moved (``tests/test_blocks*.py`` -> ``tests/blocks/``) would select nothing, or fail."""

import glob
import re
from pathlib import Path
from typing import List, Tuple

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEST_PATH = re.compile(r"(?<![\w/.-])(tests/[\w./*{},-]*[\w*}])")


def expand_braces(path: str) -> List[str]:
    """``tests/a_{x,y}.py`` -> ``["tests/a_x.py", "tests/a_y.py"]`` (one brace group, as the docs use)."""
    match = re.search(r"\{([^{}]*)\}", path)
    if match is None:
        return [path]
    return [path[:match.start()] + part + path[match.end():] for part in match.group(1).split(",")]


def named_test_paths() -> List[Tuple[str, str]]:
    """``(where, path)`` for each ``tests/...`` path on a line of README.md or docs/ that runs pytest or configures
    mutmut's pytest selection; a placeholder (``test_mutation_<module>.py``) stands for any name (a glob's ``*``)."""
    found = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            if "pytest" not in line:
                continue
            for path in TEST_PATH.findall(re.sub(r"<[\w-]+>", "*", line)):
                found += [(f"{doc.relative_to(ROOT)}:{number}", p.split("::")[0]) for p in expand_braces(path)]
    return found


def test_the_scan_finds_the_documented_commands() -> None:
    paths = {path for _, path in named_test_paths()}
    assert "tests/test_cuda.py" in paths and len(paths) > 3
    assert expand_braces("tests/t_{a,b}.py") == ["tests/t_a.py", "tests/t_b.py"]


@pytest.mark.parametrize(("where", "path"), named_test_paths(), ids=lambda value: value)
def test_a_documented_test_path_exists(where: str, path: str) -> None:
    assert glob.glob(str(ROOT / path)), f"{where} names {path}, which matches no file"
