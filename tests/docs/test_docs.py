"""README.md and docs/*.md cannot go stale: their code runs here, and what they show it printing is checked.

- Every ```python block runs: one fresh namespace per page, the page's blocks in order, in a temporary folder.
  A ```text block right after a ```python block is that block's printed output (``...`` matches anything).
- Every ``python train.py ...`` command (in ```bash blocks, and inline in the prose where it has no
  placeholder) composes with Hydra's compose API, each option of a config-group sweep (``model=a,b``) once.
- A ```text block of ``$ python train.py ...`` lines is a transcript: each command runs through ``train.py``'s
  own entry point (all of them in one subprocess), and the lines under it must appear in what it prints.
- Relative links (files, and ``#anchors`` into Markdown pages) resolve.

A block opts out only with a marker comment on the line before its fence that says why:
``<!-- test_docs: skip: needs a CUDA GPU -->``. ``<!-- test_docs: requires: keras -->`` skips the rest of the
page where a dev-extra package is missing. ``<!-- test_docs: files: runs/a/results.json -->`` creates empty
files before a transcript runs (a run folder that already holds a run).
"""

import contextlib
import importlib.util
import io
import json
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser

import models.training  # noqa: F401  (registers the config schemas in Hydra's ConfigStore)

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"^<!--\s*test_docs:\s*(\w+):\s*(.+?)\s*-->\s*$")
MARKER_KINDS = ("skip", "requires", "files")
TRANSCRIPT_LIMIT_S = 300  # all transcripts together; each command is expected to stop at start-up


@dataclass
class Block:
    page: Path
    line: int              # 1-based line of the opening fence
    lang: str
    text: str
    marker: Optional[tuple] = None   # (kind, argument) of a test_docs marker right above the fence
    output: Optional[str] = None     # a python block: the ```text block that follows it

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> List[Block]:
    """The fenced blocks of a page in order, each with its marker; python blocks with their shown output."""
    found: List[Block] = []
    lines = page.read_text().splitlines()
    marker, index, since_python = None, 0, None
    while index < len(lines):
        line = lines[index]
        if line.startswith("```"):
            lang, start = line[3:].strip(), index
            index += 1
            body = []
            while index < len(lines) and not lines[index].startswith("```"):
                body.append(lines[index])
                index += 1
            block = Block(page, start + 1, lang, "\n".join(body) + "\n", marker)
            if lang == "text" and since_python is not None and marker is None:
                since_python.output = block.text
            else:
                found.append(block)
            since_python = block if lang == "python" else None
            marker = None
        elif MARKER.match(line):
            kind, argument = MARKER.match(line).groups()
            if kind not in MARKER_KINDS:
                raise ValueError(f"{page}:{index + 1}: unknown test_docs marker {kind!r}; one of {MARKER_KINDS}")
            marker = (kind, argument)
        elif line.strip():
            marker, since_python = None, None
        index += 1
    return found


def wildcard(shown: str) -> "re.Pattern[str]":
    """Shown output as a pattern: ``...`` stands for anything (over lines too), whitespace runs are flexible."""
    parts = [r"\s+".join(re.escape(word) for word in part.split()) for part in shown.strip().split("...")]
    return re.compile(r"\s*.*?\s*".join(parts), re.S)


# -- python blocks -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_blocks_run_and_print_what_the_page_shows(page: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace: Dict[str, object] = {"__name__": "__docs__"}
    ran = 0
    for block in blocks(page):
        if block.marker and block.marker[0] == "requires":
            for module in block.marker[1].split(","):
                if importlib.util.find_spec(module.strip()) is None:
                    pytest.skip(f"{block.where()} and the rest of the page need {module.strip()}")
        if block.lang != "python":
            continue
        if block.marker and block.marker[0] == "skip":
            assert len(block.marker[1]) >= 10, f"{block.where()}: a skip marker must say why"
            continue
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            try:
                exec(compile(block.text, block.where(), "exec"), namespace)
            except Exception as error:
                raise AssertionError(f"{block.where()}: the block raised {error!r}") from error
        if block.output is not None:
            same = wildcard(block.output).fullmatch(printed.getvalue().strip()) is not None
            assert same, f"{block.where()} printed\n{printed.getvalue()}\nbut the page shows\n{block.output}"
        ran += 1
    if page.name == "README.md" or page.name in {"blocks.md", "zoo-and-deployment.md", "keras-import.md"}:
        assert ran, f"{page.name}: no python block ran"


def test_the_block_parser_pairs_output_and_markers(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("text\n<!-- test_docs: skip: needs a CUDA GPU -->\n```python\nprint(1)\n```\n\n```text\n1\n```\n"
                    "```bash\npython train.py a=1\n```\n")
    found = blocks(page)
    assert [b.lang for b in found] == ["python", "bash"]
    assert found[0].marker == ("skip", "needs a CUDA GPU") and found[0].output == "1\n" and found[1].marker is None
    assert wildcard("a ... c").fullmatch("a b\nb c") and not wildcard("a c").fullmatch("a b c")
    page.write_text("<!-- test_docs: skipp: a typo -->\n```python\n```\n")
    with pytest.raises(ValueError, match="skipp"):
        blocks(page)


# -- train.py commands ---------------------------------------------------------------------------------------
def train_commands(page: Path) -> List[tuple]:
    """``(where, overrides)`` of every ``train.py`` command of a page: bash blocks, and inline code."""
    commands = []
    for block in blocks(page):
        if block.lang != "bash" or (block.marker and block.marker[0] == "skip"):
            continue
        for number, line in enumerate(block.text.replace("\\\n", " ").splitlines()):
            words = shlex.split(line, comments=True)
            if any(word.endswith("train.py") for word in words):
                commands.append((f"{block.where()}+{number + 1}", words))
    for number, line in enumerate(page.read_text().splitlines()):
        for code in re.findall(r"`([^`]*train\.py[^`]*)`", line):
            if code.startswith(("python ", "torchrun ")) and not re.search(r"<|\.\.\.|\$\{|\bN\b", code):
                commands.append((f"{page.relative_to(ROOT)}:{number + 1} (inline)", shlex.split(code)))
    found = []
    for where, words in commands:
        overrides = words[[w.endswith("train.py") for w in words].index(True) + 1:]
        found.append((where, [w for w in overrides if w not in ("-m", "--multirun")]))
    return found


def expanded(overrides: List[str]) -> Iterator[List[str]]:
    """The override lists to compose for one command: every sweep at its first value, then each further option
    of a config-group sweep (``model=bilstm,bigru``: another file); a key's further values (``a.b=1,2``) share
    the first one's type, so they are not composed again."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    firsts = [o.input_line if not o.is_sweep_override() else f"{o.get_key_element()}={next(o.sweep_string_iterator())}"
              for o in parsed]
    yield firsts
    for index, override in enumerate(parsed):
        if override.is_sweep_override() and "." not in override.key_or_group:
            for value in list(override.sweep_string_iterator())[1:]:
                yield [*firsts[:index], f"{override.get_key_element()}={value}", *firsts[index + 1:]]


LAUNCHER_PLUGINS = {"hydra/launcher=slurm": "hydra_plugins.hydra_submitit_launcher",
                    "hydra/launcher=parallel": "hydra_plugins.hydra_joblib_launcher",
                    "hydra/launcher=joblib": "hydra_plugins.hydra_joblib_launcher"}
COMPOSED: set = set()   # override lists already composed (by another command or page): each once


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_train_commands_compose(page: Path) -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        for where, overrides in train_commands(page):
            plugins = [LAUNCHER_PLUGINS[o] for o in overrides if o in LAUNCHER_PLUGINS]
            if any(importlib.util.find_spec(plugin) is None for plugin in plugins):
                continue   # the [sweep] extra; tests/training/test_sweep_launchers.py composes them where installed
            for job in expanded(overrides):
                if tuple(job) in COMPOSED:
                    continue
                COMPOSED.add(tuple(job))
                try:
                    compose(config_name="config", overrides=job, return_hydra_config=True)
                except Exception as error:
                    raise AssertionError(f"{where}: python train.py {' '.join(job)} does not compose: {error}") \
                        from error


def test_the_readme_shows_train_commands() -> None:
    where = [w for w, _ in train_commands(ROOT / "README.md")]
    assert len(where) >= 3, where


# -- transcripts of train.py ---------------------------------------------------------------------------------
def transcripts() -> List[tuple]:
    """``(block, files, [(command words, shown lines)])`` of every ``$ python train.py`` transcript."""
    found = []
    for page in PAGES:
        for block in blocks(page):
            if block.lang != "text" or not block.text.lstrip().startswith("$ "):
                continue
            files = block.marker[1].split() if block.marker and block.marker[0] == "files" else []
            steps: List[tuple] = []
            for line in block.text.splitlines():
                if line.startswith("$ "):
                    steps.append((shlex.split(line[2:], comments=True), []))
                elif steps:
                    steps[-1][1].append(line)
            found.append(pytest.param(block, files, steps, id=block.where()))
    return found


# One subprocess runs every transcript's commands (one torch import, not one per command), each through
# train.py's own entry point as `python train.py ARGS` would: Hydra reconfigures logging for every app run,
# which must not happen inside the pytest process.
RUNNER = """
import contextlib, io, json, os, runpy, sys
from hydra.core.global_hydra import GlobalHydra
printed, train_py = [], os.path.join(sys.argv[1], "train.py")
for cwd, arguments in json.loads(sys.stdin.read()):
    os.chdir(cwd)
    sys.argv = [train_py, *arguments]
    out, err = io.StringIO(), io.StringIO()
    GlobalHydra.instance().clear()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), contextlib.suppress(SystemExit):
        runpy.run_path(train_py, run_name="__main__")
    printed.append(out.getvalue() + err.getvalue())
sys.__stdout__.write(json.dumps(printed))
"""


@pytest.fixture(scope="module")
def transcript_outputs(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, List[str]]:
    """What each transcript's commands print, by block: all run in one subprocess, each block in its own
    temporary folder holding the block's ``files``."""
    jobs, owners = [], []
    for param in transcripts():
        block, files, steps = param.values
        folder = tmp_path_factory.mktemp("transcript")
        for name in files:
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            (folder / name).touch()
        for words, _ in steps:
            assert words[:2] == ["python", "train.py"], f"{block.where()}: only python train.py transcripts run here"
            jobs.append((str(folder), words[2:]))
            owners.append(block.where())
    result = subprocess.run([sys.executable, "-c", RUNNER, str(ROOT)], input=json.dumps(jobs), capture_output=True,
                            text=True, timeout=TRANSCRIPT_LIMIT_S, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    outputs: Dict[str, List[str]] = {}
    for owner, printed in zip(owners, json.loads(result.stdout), strict=True):
        outputs.setdefault(owner, []).append(printed)
    return outputs


@pytest.mark.parametrize(("block", "files", "steps"), transcripts())
def test_transcripts_of_train_py_print_what_the_page_shows(block: Block, files: List[str], steps: List[tuple],
                                                           transcript_outputs: Dict[str, List[str]]) -> None:
    for (words, shown), printed in zip(steps, transcript_outputs[block.where()], strict=True):
        shown_in_printed = wildcard("\n".join(shown)).search(printed) is not None
        assert shown_in_printed, (
            f"{block.where()}: {' '.join(words)} printed\n{printed[-3000:]}\nbut the page shows\n" + "\n".join(shown))


# -- the presets table ----------------------------------------------------------------------------------------
def test_the_readme_presets_table_is_what_create_model_builds() -> None:
    """One row per registered preset; cell, layers, pooling and parameter counts as ``create_model`` builds them."""
    import models

    section = ROOT.joinpath("README.md").read_text().split("## Presets", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.startswith("| `")]
    assert sorted(row[0].strip(" `") for row in rows) == list(models.list_models())
    blocks_by_cell = {"LSTM": models.BiLSTM, "GRU": models.BiGRU, "RNN (tanh)": models.BiRNN}
    for name, cell, layers, pooling, parameters, _ in ([c.strip() for c in row] for row in rows):
        model = models.create_model(name.strip("`"))
        block = next(m for m in model.modules() if isinstance(m, (models.BiLSTM, models.BiGRU, models.BiRNN)))
        total = sum(p.numel() for p in model.parameters()) / 1e6
        recurrent = sum(p.numel() for p in block.parameters()) / 1e6
        shown = f"{total:.2f} M ({recurrent:.2f} M recurrent)"
        assert (type(block), block.num_layers, model.pooling, parameters) == (
            blocks_by_cell[cell], int(layers), pooling, shown), f"README presets row {name}"


# -- links ---------------------------------------------------------------------------------------------------
def anchors(page: Path) -> set:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    found = set()
    for line in page.read_text().splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            found.add(re.sub(r"\s", "-", re.sub(r"[^\w\- ]", "", title)))
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue   # http(s), mailto: not checked offline
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.relative_to(ROOT)}: link {target} -> {file} does not exist"
        if anchor and file.suffix == ".md":
            assert anchor in anchors(file), f"{page.relative_to(ROOT)}: no heading #{anchor} in {file.name}"
