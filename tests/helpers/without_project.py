"""Run code as a machine without birnn-zoo would: ``python -I`` in a given folder, with ``models`` unimportable."""

import os
import subprocess
import sys
from pathlib import Path

# The project is installed (editable) in this environment: block it, as a machine without it would be.
BLOCK_THE_PROJECT = "import sys\nsys.modules['models'] = None   # any import of birnn-zoo now fails\n"


def isolated(code: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -I`` (no cwd, no PYTHONPATH, no user site) in a folder without the project, ``models`` blocked."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    return subprocess.run([sys.executable, "-I", "-c", BLOCK_THE_PROJECT + code], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**env, "OMP_NUM_THREADS": "1"})
