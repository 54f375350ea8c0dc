"""Rewrite the generated part of ``docs/study.md`` from a study report.

The file keeps its hand-written text; only what lies between :data:`BEGIN` and :data:`END` is replaced (the
whole file is created, with a title, when it does not exist). The figures are copied into a folder beside it
(``docs/study/``) and linked from the generated part.
"""

import shutil
from pathlib import Path
from typing import Dict, Sequence

BEGIN = "<!-- BEGIN generated study report: do not edit by hand; see the command below -->"
END = "<!-- END generated study report -->"


def generated_block(report_md: str, figures: Sequence[str], regenerate: str) -> str:
    """The text between the markers: how to regenerate it, the figures, the report."""
    links = "\n".join(f"![{Path(f).stem}](study/{Path(f).name})" for f in figures)
    return (f"{BEGIN}\n\nRegenerate this section with `{regenerate}`.\n\n" + (links + "\n\n" if links else "")
            + report_md.rstrip() + f"\n\n{END}")


def rewrite_docs(docs_path: Path, report_md: str, figures: Sequence[Path], regenerate: str) -> Dict[str, Path]:
    """Replace the generated block of ``docs_path`` (or append it / create the file); copy ``figures`` into
    ``<docs dir>/study/``. Raises ``ValueError`` when the file holds a BEGIN marker without its END."""
    docs_path = Path(docs_path)
    figure_dir = docs_path.parent / "study"
    figure_dir.mkdir(parents=True, exist_ok=True)
    copied = {}
    for figure in figures:
        target = figure_dir / Path(figure).name
        shutil.copyfile(figure, target)
        copied[Path(figure).name] = target
    block = generated_block(report_md, [str(f) for f in figures], regenerate)
    if docs_path.is_file():
        text = docs_path.read_text()
        if BEGIN in text:
            head, _, rest = text.partition(BEGIN)
            if END not in rest:
                raise ValueError(f"{docs_path} holds the line {BEGIN!r} but not {END!r}; restore it or delete the "
                                 f"broken generated part")
            text = head + block + rest.partition(END)[2]
        else:
            text = text.rstrip() + "\n\n## Results\n\n" + block + "\n"
    else:
        text = "# The merge-mode study\n\n## Results\n\n" + block + "\n"
    docs_path.write_text(text)
    return {"docs": docs_path, **copied}
