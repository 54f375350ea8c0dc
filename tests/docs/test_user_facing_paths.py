"""What a user reads names only folders a user's clone has: no development-only paths.

The offline copy of the text datasets lives beside the development checkout only; tests and CI find it through a
fixture or an environment variable. README, docs, ``conf/``, notebooks and the package's messages and comments
must not send a user there, and the data errors must suggest a folder of the user's own and the download cache.
"""

import re
from pathlib import Path
from typing import List

import pytest

from models.data import download
from models.data.bundle import resolve_config

ROOT = Path(__file__).resolve().parents[2]
# The development checkout's sibling data folder, and this development machine's own folders.
DEV_ONLY = re.compile(r"\.\./shared\b|\bshared/data\b|/work/|\bstudylogs\b|/wt/i\d+")
SUFFIXES = {".md", ".py", ".yaml", ".yml", ".ipynb", ".toml", ".txt", ".cfg"}


def user_facing_files() -> List[Path]:
    """README, pyproject, train.py, and every text file under docs/, conf/, notebooks/ and models/."""
    found = [ROOT / "README.md", ROOT / "pyproject.toml", ROOT / "train.py"]
    for folder in ("docs", "conf", "notebooks", "models"):
        found += sorted(p for p in (ROOT / folder).rglob("*") if p.is_file() and p.suffix in SUFFIXES)
    return found


def test_the_scan_covers_what_users_read() -> None:
    names = {str(p.relative_to(ROOT)) for p in user_facing_files()}
    for expected in ("README.md", "docs/study.md", "conf/data/trec.yaml", "models/data/bundle.py",
                     "models/data/download.py", "notebooks/01_quickstart.ipynb", "train.py"):
        assert expected in names
    assert DEV_ONLY.search("data.root=../shared/data") and DEV_ONLY.search("BIRNN_ZOO_CACHE=/work/shared/data")
    assert not DEV_ONLY.search("data.root=/path/to/data") and not DEV_ONLY.search("a shared machine")


@pytest.mark.parametrize("path", user_facing_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_development_only_paths(path: Path) -> None:
    hits = [f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}"
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1) if DEV_ONLY.search(line)]
    assert not hits, "development-only paths in user-facing text:\n" + "\n".join(hits)


def test_a_missing_data_root_suggests_a_users_folder_and_the_cache(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such"
    with pytest.raises(ValueError) as error:
        resolve_config({"name": "trec", "root": str(missing)})
    message = str(error.value)
    assert "\n" not in message and not DEV_ONLY.search(message)
    assert f"data.root='{missing}' does not exist" in message
    assert "data.root=/path/to/data" in message and "~/.cache/birnn-zoo" in message and download.CACHE_ENV in message


def test_a_missing_file_without_download_suggests_a_users_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        download.ensure_files("trec", tmp_path, download=False)
    assert "data.root=/path/to/data" in str(error.value) and not DEV_ONLY.search(str(error.value))


def test_a_failed_download_says_what_to_do_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args: object, **kwargs: object) -> None:
        raise OSError("network is unreachable")

    monkeypatch.setattr(download, "download_file", offline)
    with pytest.raises(download.DownloadError) as error:
        download.ensure_files("trec", tmp_path, download=True, progress=False)
    message = str(error.value)
    assert "\n" not in message and "data.root" in message and not DEV_ONLY.search(message)


def test_the_study_report_records_the_command_without_this_machines_folders(monkeypatch: pytest.MonkeyPatch) -> None:
    from models.training.study import report as study

    monkeypatch.setenv(download.CACHE_ENV, "/work/shared/data")
    monkeypatch.setattr("sys.argv", ["/x/train.py", "-m", "experiment=study", "hydra.sweep.dir=/work/studylogs/s"])
    command = study._typed_command()
    assert command == "BIRNN_ZOO_CACHE=<data folder> python train.py -m experiment=study hydra.sweep.dir=<folder>"


def test_the_readme_study_command_is_the_one_docs_study_runs() -> None:
    """The README's study command runs as written: docs/study.md's sweep command is the same, with no prefix
    that only the development checkout could satisfy."""
    readme = (ROOT / "README.md").read_text()
    study_page = (ROOT / "docs" / "study.md").read_text()
    shown = re.search(r"`([^`]*experiment=study[^`]*)`", readme.split("## The study, in short", 1)[1]).group(1)
    first_line = study_page.split("```bash\n", 1)[1].splitlines()[0]
    assert shown == first_line == "python train.py -m experiment=study"


def test_the_setup_text_says_which_torch_build_the_pin_installs() -> None:
    setup = (ROOT / "README.md").read_text().split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = [line for line in setup.split("```bash\n", 1)[1].split("```", 1)[0].splitlines() if line.strip()]
    assert len(commands) == 2 and commands[0].startswith("pip install torch==2.13.0")   # what .ci/run parses
    assert "CPU build" not in setup.split("```", 1)[0]        # the pin alone does not pick the CPU build
    assert "CUDA build" in setup
    cpu_only = re.search(r"`(pip install torch==2\.13\.0 --index-url https://download\.pytorch\.org/whl/cpu[^`]*)`",
                         setup)
    assert cpu_only and 'pip install -e ".[dev]"' in cpu_only.group(1)


def test_the_suggested_data_root_parses_on_the_command_line() -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    with pytest.raises(ValueError) as error:
        resolve_config({"name": "trec", "root": "/no/such/folder"})
    suggested = re.search(r"e\.g\. (data\.root=\S+?)\)", str(error.value)).group(1)
    assert OverridesParser.create().parse_overrides([suggested])[0].value() == "/path/to/data"


JUPYTER_COMMANDS = {"execute": "nbclient", "lab": "jupyterlab", "nbconvert": "nbconvert", "notebook": "notebook"}


def test_every_jupyter_command_the_docs_give_is_installed_by_the_extra_they_name() -> None:
    import tomllib

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    text = (ROOT / "docs" / "contributing.md").read_text()
    installed: set = set()
    checked = 0
    lines = [line for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S) for line in block.splitlines()]
    for line in lines + re.findall(r"`([^`\n]+)`", text):
        for extra in re.findall(r"pip install -e '\.\[(\w+)\]'", line):
            installed |= {re.split(r"[<>=\[]", requirement)[0] for requirement in extras[extra]}
        command = re.match(r"\s*jupyter (\w+)", line)
        if command:
            assert JUPYTER_COMMANDS[command.group(1)] in installed, f"{line.strip()}: not installed by the extras named"
            checked += 1
    assert checked >= 2


PROCESS_TEXT = re.compile(r"this session|previous session|the issue (asks|rules)|measured before presets|"
                          r"\b(first|second|third|fourth|fifth|sixth) session\b|session lent", re.I)


@pytest.mark.parametrize("page", [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))],
                         ids=lambda p: p.name)
def test_docs_do_not_narrate_how_the_work_was_done(page: Path) -> None:
    hits = [f"{page.name}:{n}: {line.strip()[:100]}" for n, line in enumerate(page.read_text().splitlines(), 1)
            if PROCESS_TEXT.search(line)]
    assert not hits, "text about how the work was done:\n" + "\n".join(hits)
