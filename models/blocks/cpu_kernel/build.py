"""Build and load the CPU kernel (``models/blocks/cpu_kernel/csrc/``): one library per instruction set, chosen at run
time.

Why not ``-march=native``: a library built for the builder's CPU dies with SIGILL on a CPU without those
instructions, and a home folder shared by cluster nodes hands it to every node. Instead the same source is
compiled per *capability* (``avx512``: AVX-512 F/DQ/BW/VL + FMA; ``avx2``: AVX2 + FMA), the one the CPU
supports is chosen when the kernel is first needed, and the capability is part of the file name and cache key,
with the compiler's identity, the flags, the sources and torch's version.

Where nothing applies (not Linux x86-64, a torch without MKL: the kernel calls the BLAS (``sgemm``, ``dgemm``)
and the thread setting of the MKL that ``libtorch_cpu`` exports) no compile is attempted and the blocks use
PyTorch's kernels.

When: the first forward that can take the kernel path builds or loads it (``cpu_kernel.available``), never the
construction of a block. The first compile in a process prints one line on stderr, naming the cache folder (it
takes seconds); loading a cached library prints nothing.

Safety of what gets loaded (a shared library runs with the user's rights):
- the kernel cache folder, ``$BIRNN_ZOO_KERNEL_CACHE`` or ``~/.cache/birnn-zoo-kernels`` (``$XDG_CACHE_HOME``
  honoured; separate from the data cache ``$BIRNN_ZOO_CACHE``), is created private (0700); a folder or library
  that is a symlink, owned by another user, or group/world-writable is refused with one warning, and the kernel
  is built in this user's private fallback folder (``<tmp>/birnn-zoo-kernels-<uid>``, reused by later
  processes) instead;
- a build writes a temporary file, checks it is a non-empty ELF library, fsyncs it and renames it into place,
  under an exclusive lock on the folder, so N processes starting at once (``torchrun``, sweeps) compile once and
  never load a half-written file; its size and SHA-256 go to ``<library>.sha256`` beside it;
- before every load the library is checked against that record in Python (a truncated library would kill the
  process with SIGBUS inside ``dlopen``); a damaged or unrecorded one is rebuilt, with a warning when damaged;
- a read-only cache holding a verified library is used as it is (no lock needed to read);
- the link fails on undefined symbols (``-Wl,--no-undefined``) rather than loading a library that cannot run.
"""

import atexit
import ctypes
import fcntl
import hashlib
import importlib.machinery
import importlib.util
import os
import platform
import shlex
import shutil
import stat
import subprocess
import sys
import sysconfig
import tempfile
import warnings
from pathlib import Path
from types import ModuleType
from typing import Dict, List, Optional, Tuple

import torch

from ...atomic import write_atomically
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
# The serving call (csrc/fast_call.cpp): a Python extension module built against this torch's headers and
# libraries, as torch.utils.cpp_extension builds one (its C++ standard and ABI flag), without importing that module.
FAST_CALL = "fast_call"
FAST_CALL_SOURCE = CSRC / "fast_call.cpp"
_FAST_CALL_FLAGS = ["-O2", "-shared", "-fPIC", "-std=c++20",
                    f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]


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
    value = os.environ.get("CXX", "") or "c++"
    try:
        words = shlex.split(value)
    except ValueError as error:                        # an unbalanced quote: the kernel is unavailable, not a crash
        raise KernelUnavailable(f"CXX={value!r} cannot be split like a shell command ({error})") from None
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


KERNEL_CACHE_ENV = "BIRNN_ZOO_KERNEL_CACHE"
RECORD_SUFFIX = ".sha256"


def default_cache_dir() -> Path:
    """``$BIRNN_ZOO_KERNEL_CACHE``, else ``$XDG_CACHE_HOME/birnn-zoo-kernels`` (``~/.cache/birnn-zoo-kernels``)."""
    if os.environ.get(KERNEL_CACHE_ENV):
        return Path(os.environ[KERNEL_CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "birnn-zoo-kernels"


def cache_dir(root: Optional[Path] = None) -> Path:
    """The private kernel cache folder (created 0700); raises ``PermissionError`` naming the problem when it is
    not private."""
    root = default_cache_dir() if root is None else root
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


def _fsync_folder(folder: Path) -> None:
    handle = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(handle)
    finally:
        os.close(handle)


_announced = False  # the compile message is printed once per process


def _announce(capability: str, folder: Path) -> None:
    """One line on stderr before the first kernel compile in this process, and before the serving call's (each
    takes seconds; loading from the cache says nothing)."""
    global _announced
    if capability == FAST_CALL:  # built once per process at most (inference.py keeps the module)
        print(f"birnn-zoo: compiling the CPU kernel's serving call (a Python extension) once for this machine and "
              f"torch, cached in {folder} (${KERNEL_CACHE_ENV} sets the folder)", file=sys.stderr, flush=True)
        return
    if not _announced:
        _announced = True
        print(f"birnn-zoo: compiling the CPU kernel ({capability}) once for this machine, cached in {folder} "
              f"(${KERNEL_CACHE_ENV} sets the folder)", file=sys.stderr, flush=True)


def _arguments(capability: str, output: str) -> List[str]:
    """The compiler's arguments for ``capability``'s library (or ``FAST_CALL``'s extension module) at ``output``."""
    torch_lib = Path(torch.__file__).resolve().parent / "lib"
    if capability == FAST_CALL:
        return [*_FAST_CALL_FLAGS, *(f"-I{folder}" for folder in _fast_call_includes()), str(FAST_CALL_SOURCE), "-o",
                output, f"-L{torch_lib}", "-lc10", "-ltorch_cpu", "-ltorch_python", f"-Wl,-rpath,{torch_lib}"]
    return [*_FLAGS, *_TARGET_FLAGS[capability], f"-I{CSRC}", str(SOURCES[0]), "-o", output, f"-L{torch_lib}",
            "-ltorch_cpu", f"-Wl,-rpath,{torch_lib}"]


def _compile(cxx: List[str], capability: str, target: Path) -> None:
    """Compile to ``target`` through a temporary file in the same folder: checked (a non-empty ELF library),
    fsynced, renamed into place, the folder fsynced."""
    _announce(capability, target.parent)
    fd, partial = tempfile.mkstemp(suffix=".so.partial", dir=target.parent)
    os.close(fd)
    cmd = [*cxx, *_arguments(capability, partial)]
    try:
        subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=600)
        with open(partial, "rb") as built:
            if built.read(4) != ELF_MAGIC:             # CXX=true "succeeds" and writes nothing
                raise KernelUnavailable(f"compiling the CPU kernel with {' '.join(cxx)!r} produced no library")
            os.fsync(built.fileno())
        os.chmod(partial, 0o755)
        os.replace(partial, target)
        _fsync_folder(target.parent)
    except subprocess.CalledProcessError as error:
        raise KernelUnavailable(f"compiling the CPU kernel failed:\n{error.stderr[-2000:]}") from error
    except (OSError, subprocess.SubprocessError) as error:
        raise KernelUnavailable(f"compiling the CPU kernel failed: {error}") from error
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


ELF_MAGIC = b"\x7fELF"


def _digest(path: Path) -> Tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _record(target: Path) -> None:
    """Write ``<target>.sha256``: the library's SHA-256 and size, checked before every load."""
    digest, size = _digest(target)
    write_atomically(target.with_name(target.name + RECORD_SUFFIX), f"{digest} {size}\n")


def verify(target: Path) -> Optional[str]:
    """None when ``target`` is the library its record describes; else why not (``"missing"`` when absent)."""
    if not target.exists():
        return "missing"
    record = target.with_name(target.name + RECORD_SUFFIX)
    try:
        want_digest, want_size = record.read_text().split()
        want = (want_digest, int(want_size))
    except (OSError, ValueError):
        return f"it has no readable record {record.name}"
    try:
        size = target.stat().st_size
        if size != want[1]:
            return f"its size is {size} bytes, {want[1]} were recorded at build"
        with open(target, "rb") as file:
            if file.read(4) != ELF_MAGIC:
                return "it is not an ELF library"
        if _digest(target)[0] != want[0]:
            return "its SHA-256 differs from the one recorded at build"
    except OSError as error:
        return f"it cannot be read ({error})"
    return None


def _build_in(folder: Path, name: str, cxx: List[str], capability: str) -> Path:
    target = folder / name
    try:
        lock = open(folder / (name + ".lock"), "a")    # one compile per folder; the others wait, then load it
    except OSError as error:                            # a read-only cache: usable only if it holds a good library
        problem = verify(target)
        if problem is not None:
            raise PermissionError(f"{folder} is not writable ({error.strerror}) and its library is unusable "
                                  f"({problem})") from None
    else:
        with lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if os.path.lexists(target) and _is_private(target, "file"):
                raise PermissionError(_is_private(target, "file"))   # planted by someone else: refuse the cache
            problem = verify(target)
            if problem is not None:
                if problem != "missing" and not problem.startswith("it has no readable record"):
                    warnings.warn(f"birnn-zoo: the CPU kernel library {target} is damaged ({problem}); rebuilding "
                                  "it", RuntimeWarning, stacklevel=5)
                _compile(cxx, capability, target)
                _record(target)
    problem = _is_private(target, "file")
    if problem:
        raise PermissionError(problem)
    problem = verify(target)                            # the last check before dlopen
    if problem is not None:
        raise KernelUnavailable(f"{target} cannot be loaded: {problem}")
    return target


def _fallback_dir() -> Path:
    """This user's private folder for the kernel when the cache is refused: one fixed folder reused by every
    process (no recompile per process); a fresh temporary folder, removed at exit, if even that is not private."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    try:
        return cache_dir(Path(tempfile.gettempdir()) / f"birnn-zoo-kernels-{uid}")
    except PermissionError:
        private = Path(tempfile.mkdtemp(prefix="birnn-zoo-"))   # 0700, unpredictable name
        atexit.register(shutil.rmtree, private, True)
        return private


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
    path = _cached(name, cxx, capability)
    library = ctypes.CDLL(str(path))
    abi.declare(library)
    width = library.birnn_vector_width()
    if width != _VECTOR_WIDTH[capability]:
        raise KernelUnavailable(f"{path} was built for vector width {width}, expected {_VECTOR_WIDTH[capability]}")
    return library


def _fast_call_includes() -> List[Path]:
    """torch's C++ headers and Python's, for the serving call's extension module."""
    include = Path(torch.__file__).resolve().parent / "include"
    return [include, include / "torch" / "csrc" / "api" / "include", Path(sysconfig.get_paths()["include"])]


def _cached(name: str, cxx: List[str], capability: str) -> Path:
    """``name`` built for ``capability`` in the private cache, or in this user's fallback folder (with one warning)
    when the cache is refused."""
    try:
        return _build_in(cache_dir(), name, cxx, capability)
    except PermissionError as problem:
        private = _fallback_dir()
        warnings.warn(f"birnn-zoo: refusing the CPU kernel cache ({problem}); building in {private} instead. "
                      f"Point {KERNEL_CACHE_ENV} at a folder only you can write.", RuntimeWarning, stacklevel=4)
        return _build_in(private, name, cxx, capability)


def load_fast_call() -> ModuleType:
    """Build (once per machine, compiler, Python and torch) and import the serving call's extension module,
    ``birnn_fast_call`` (``csrc/fast_call.cpp``). Raises ``KernelUnavailable`` where Python's or torch's headers
    are missing or the compile fails."""
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    if not headers.is_file():
        raise KernelUnavailable(f"Python's C headers are not installed ({headers} is missing)")
    cxx = _compiler()
    digest = hashlib.sha256(FAST_CALL_SOURCE.read_bytes())
    digest.update(" ".join(_FAST_CALL_FLAGS).encode() + torch.__version__.encode() + sys.version.encode())
    digest.update(str(sysconfig.get_config_var("EXT_SUFFIX")).encode() + _compiler_identity(cxx))
    path = _cached(f"birnn_fast_call-{digest.hexdigest()[:16]}.so", cxx, FAST_CALL)
    loader = importlib.machinery.ExtensionFileLoader("birnn_fast_call", str(path))
    spec = importlib.util.spec_from_file_location("birnn_fast_call", path, loader=loader)
    if spec is None:
        raise KernelUnavailable(f"{path} cannot be imported as an extension module")
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module
