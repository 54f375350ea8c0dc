"""Build and load the CPU kernel (``models/blocks/cpu_kernel/csrc/``): one library per instruction set, chosen at run time.

Why not ``-march=native``: a library built for the builder's CPU dies with SIGILL on a CPU without those
instructions, and a home folder shared by cluster nodes hands it to every node. Instead the same source is
compiled per *capability* (``avx512``: AVX-512 F/DQ/BW/VL + FMA; ``avx2``: AVX2 + FMA), the one the CPU
supports is chosen when the kernel is first needed, and the capability is part of the file name and cache key,
with the compiler's identity, the flags, the sources and torch's version.

Where nothing applies (not Linux x86-64, a torch without MKL: the kernel calls MKL's packed GEMM that
``libtorch_cpu`` exports) no compile is attempted and the blocks use PyTorch's kernels.

Safety of what gets loaded (a shared library runs with the user's rights):
- the cache folder, ``$BIRNN_ZOO_CACHE`` or ``~/.cache/birnn-zoo``, is created private (0700); a folder or
  library that is a symlink, owned by another user, or group/world-writable is refused with one warning, and
  the kernel is built in a fresh private temporary folder for this process instead;
- a build writes a temporary file and renames it into place, under an exclusive lock on the folder, so N
  processes starting at once (``torchrun``, sweeps) compile once and never load a half-written file;
- the link fails on undefined symbols (``-Wl,--no-undefined``) rather than loading a library that cannot run.
"""

import ctypes
import fcntl
import hashlib
import os
import platform
import shlex
import stat
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Dict, List, Optional

import torch

from . import abi

CSRC = Path(__file__).resolve().parent / "csrc"
SOURCES = (CSRC / "birnn_cpu.cpp", *sorted(CSRC.glob("*.h")))  # the first is compiled; all are hashed
CAPABILITIES = ("avx512", "avx2")  # best first
_TARGET_FLAGS: Dict[str, List[str]] = {
    "avx512": ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma"],
    "avx2": ["-mavx2", "-mfma"],
}
_VECTOR_WIDTH = {"avx512": 16, "avx2": 8}
_FLAGS = ["-O3", "-fopenmp", "-shared", "-fPIC", "-std=c++17", "-Wl,--no-undefined"]
FORCE_ENV = "BIRNN_ZOO_CPU_CAPABILITY"


class KernelUnavailable(Exception):
    """The kernel cannot be built or loaded here; the message says why (shown once, in a warning)."""


def _cpu_flags() -> set:
    """The CPU's feature flags from /proc/cpuinfo (Linux), empty where unreadable."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as file:
            for line in file:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def supported_capabilities() -> List[str]:
    """The capabilities this CPU can run, best first (``[]`` off x86-64 Linux or without MKL in torch)."""
    if not sys.platform.startswith("linux") or platform.machine().lower() not in ("x86_64", "amd64"):
        return []
    if not torch.backends.mkl.is_available():
        return []
    flags = _cpu_flags()
    has_fma = "fma" in flags or not flags  # trust torch's check alone where /proc/cpuinfo is missing
    found = []
    if torch.cpu._is_avx512_supported() and has_fma:
        found.append("avx512")
    if torch.cpu._is_avx2_supported() and has_fma:
        found.append("avx2")
    return found


def choose_capability() -> Optional[str]:
    """The capability to build for: the best the CPU supports, or ``$BIRNN_ZOO_CPU_CAPABILITY``
    (``avx512 | avx2 | none``, as PyTorch's ``ATEN_CPU_CAPABILITY``); forcing one the CPU lacks warns and uses
    the best it has. None: no kernel."""
    supported = supported_capabilities()
    forced = os.environ.get(FORCE_ENV, "").strip().lower()
    if forced and forced not in (*CAPABILITIES, "none"):
        raise ValueError(f"{FORCE_ENV}={forced!r} is not a capability; expected one of avx512, avx2, none")
    if forced == "none":
        return None
    if forced and forced not in supported:
        best = supported[0] if supported else None
        warnings.warn(f"birnn-zoo: {FORCE_ENV}={forced} but this CPU supports {supported or 'neither'}; "
                      f"using {best or 'PyTorch kernels'}", RuntimeWarning, stacklevel=3)
        return best
    return forced or (supported[0] if supported else None)


def _compiler() -> List[str]:
    """``$CXX`` split like a shell (``CXX="ccache g++"``), else ``c++``."""
    words = shlex.split(os.environ.get("CXX", "") or "c++")
    if not words:
        raise KernelUnavailable("CXX is set but empty")
    return words


def _compiler_identity(cxx: List[str]) -> bytes:
    try:
        run = subprocess.run([*cxx, "--version"], capture_output=True, text=True, timeout=60, check=True)
        machine = subprocess.run([*cxx, "-dumpmachine"], capture_output=True, text=True, timeout=60, check=True)
    except (OSError, subprocess.SubprocessError) as error:
        raise KernelUnavailable(f"no working C++ compiler {' '.join(cxx)!r}: {error}") from error
    return (run.stdout + machine.stdout).encode()


def _is_private(path: Path, kind: str) -> Optional[str]:
    """None when ``path`` is a real ``kind`` ('dir' or 'file') owned by this user and not writable by others;
    else why not."""
    try:
        info = os.lstat(path)
    except OSError as error:
        return f"{path} cannot be read ({error})"
    if stat.S_ISLNK(info.st_mode):
        return f"{path} is a symbolic link"
    if (kind == "dir" and not stat.S_ISDIR(info.st_mode)) or (kind == "file" and not stat.S_ISREG(info.st_mode)):
        return f"{path} is not a {'folder' if kind == 'dir' else 'regular file'}"
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        return f"{path} belongs to another user (uid {info.st_uid})"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{path} is writable by other users (mode {stat.S_IMODE(info.st_mode):o})"
    return None


def cache_dir() -> Path:
    """The private cache folder (created 0700); raises ``PermissionError`` naming the problem when it is not
    private."""
    root = Path(os.environ.get("BIRNN_ZOO_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "birnn-zoo"))
    if not os.path.lexists(root):
        try:
            root.parent.mkdir(parents=True, exist_ok=True)
            root.mkdir(mode=0o700)
        except FileExistsError:
            pass  # another process made it first; checked below like any existing folder
        except OSError as error:
            raise PermissionError(f"{root} cannot be created ({error})") from error
    problem = _is_private(root, "dir")
    if problem:
        raise PermissionError(problem)
    return root


def _compile(cxx: List[str], capability: str, target: Path) -> None:
    """Compile to ``target`` through a temporary file in the same folder, renamed into place."""
    torch_lib = Path(torch.__file__).resolve().parent / "lib"
    fd, partial = tempfile.mkstemp(suffix=".so.partial", dir=target.parent)
    os.close(fd)
    cmd = [*cxx, *_FLAGS, *_TARGET_FLAGS[capability], f"-I{CSRC}", str(SOURCES[0]), "-o", partial,
           f"-L{torch_lib}", "-ltorch_cpu", f"-Wl,-rpath,{torch_lib}"]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
        os.chmod(partial, 0o755)
        os.replace(partial, target)
    except subprocess.CalledProcessError as error:
        raise KernelUnavailable(f"compiling the CPU kernel failed:\n{error.stderr[-2000:]}") from error
    except (OSError, subprocess.SubprocessError) as error:
        raise KernelUnavailable(f"compiling the CPU kernel failed: {error}") from error
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


def _build_in(folder: Path, name: str, cxx: List[str], capability: str) -> Path:
    target = folder / name
    with open(folder / (name + ".lock"), "w") as lock:  # one compile per folder; the others wait, then load it
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            _compile(cxx, capability, target)
    problem = _is_private(target, "file")
    if problem:
        raise PermissionError(problem)
    return target


def load(capability: str) -> ctypes.CDLL:
    """Build (once per machine, compiler, torch and capability) and load the kernel for ``capability``."""
    if capability not in CAPABILITIES:
        raise ValueError(f"capability must be one of {CAPABILITIES}, got {capability!r}")
    cxx = _compiler()
    digest = hashlib.sha256()
    for source in SOURCES:
        digest.update(source.read_bytes())
    digest.update(" ".join(_FLAGS + _TARGET_FLAGS[capability]).encode() + torch.__version__.encode())
    digest.update(_compiler_identity(cxx))
    name = f"birnn_cpu-{capability}-{digest.hexdigest()[:16]}.so"
    try:
        path = _build_in(cache_dir(), name, cxx, capability)
    except PermissionError as problem:
        private = Path(tempfile.mkdtemp(prefix="birnn-zoo-"))  # 0700, unpredictable name
        warnings.warn(f"birnn-zoo: refusing the CPU kernel cache ({problem}); building in {private} for this "
                      "process. Point BIRNN_ZOO_CACHE at a folder only you can write.", RuntimeWarning, stacklevel=3)
        path = _build_in(private, name, cxx, capability)
    library = ctypes.CDLL(str(path))
    abi.declare(library)
    width = library.birnn_vector_width()
    if width != _VECTOR_WIDTH[capability]:
        raise KernelUnavailable(f"{path} was built for vector width {width}, expected {_VECTOR_WIDTH[capability]}")
    return library
