"""A checkpoint's temporary file lives beside the checkpoint, never in ``$TMPDIR`` (issue 37): a run folder on
another filesystem (scratch, NFS) than ``/tmp`` would make the final rename fail with ``EXDEV`` or, through a
copy, stop being atomic. And a failed write leaves the previous checkpoint and no temporary behind."""

import os
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest
import torch

from models.training.checkpoint import REQUIRED_KEYS, load_checkpoint, save_checkpoint


def checkpoint(value: float) -> Dict[str, Any]:
    state: Dict[str, Any] = {key: {} for key in REQUIRED_KEYS}
    state.update(format="birnn-zoo/checkpoint/v1", model={"w": torch.full((3,), value)}, progress={"step": 1})
    return state


def test_the_temporary_file_is_created_beside_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    renames: List[Tuple[str, str]] = []
    for name in ("replace", "rename"):                  # whichever the atomic write uses
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda src, dst, real=real, **kw: renames.append((str(src), str(dst)))
                            or real(src, dst, **kw))
    # $TMPDIR (tempfile's default folder) is a place nothing can be created in: a temporary put there fails loudly
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmpdir"))
    target = tmp_path / "run" / "checkpoints" / "last.pt"
    save_checkpoint(checkpoint(1.0), target)
    assert [Path(dst) for _, dst in renames] == [target]
    assert Path(renames[0][0]).parent == target.parent, "renamed from a file in the target's own folder"
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.pt"], "no temporary left behind"
    assert load_checkpoint(target)["model"]["w"].tolist() == [1.0, 1.0, 1.0]


def test_a_failed_write_keeps_the_old_checkpoint_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "last.pt"
    save_checkpoint(checkpoint(1.0), target)
    broken = checkpoint(2.0)
    broken["progress"] = {"step": 2, "callback": lambda: None}    # torch.save cannot write a function
    with pytest.raises(Exception):  # noqa: B017 - whatever torch.save raises; the point is what is left
        save_checkpoint(broken, target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]
    assert load_checkpoint(target)["model"]["w"].tolist() == [1.0, 1.0, 1.0]
