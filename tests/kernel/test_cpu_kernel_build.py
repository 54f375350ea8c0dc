"""Building and loading the kernel safely: private cache folders, one build per capability and compiler,
capability forcing, CXX with arguments, no compile where it cannot link, concurrent first use."""

import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List

import pytest
import torch

from models.blocks import cpu_kernel
from models.blocks.cpu_kernel import build as cpu_kernel_build

ROOT = Path(__file__).resolve().parents[2]
needs_kernel = pytest.mark.skipif(not cpu_kernel.available(), reason="CPU kernel not built")


@pytest.fixture
def fake_compile(monkeypatch: pytest.MonkeyPatch) -> List[Path]:
    """Compiling is replaced by copying the library this process already loaded (the folder logic is what is
    tested, not the compiler): returns the list of targets 'compiled'."""
    built = Path(cpu_kernel._library._name)
    targets: List[Path] = []

    def copy(cxx: List[str], capability: str, target: Path) -> None:
        targets.append(target)
        shutil.copy(built, target)
        os.chmod(target, 0o755)

    monkeypatch.setattr(cpu_kernel_build, "_compile", copy)
    return targets


def loaded_from(library: object) -> Path:
    return Path(library._name)  # type: ignore[attr-defined]


@needs_kernel
def test_a_new_cache_folder_is_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fake_compile: list) -> None:
    monkeypatch.setenv("BIRNN_ZOO_KERNEL_CACHE", str(tmp_path / "new" / "cache"))
    library = cpu_kernel_build.load(cpu_kernel.capability())
    folder = tmp_path / "new" / "cache"
    assert (folder.stat().st_mode & 0o777) == 0o700
    assert loaded_from(library).parent == folder
    assert f"-{cpu_kernel.capability()}-" in loaded_from(library).name
    assert not list(folder.glob("*.partial"))


@needs_kernel
@pytest.mark.parametrize("plant", ["world-writable folder", "group-writable library", "symlinked folder",
                                   "foreign folder", "folder cannot be made"])
def test_an_unsafe_cache_is_refused_with_one_warning(plant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    fake_compile: list) -> None:
    cache = tmp_path / "cache"
    capability = cpu_kernel.capability()
    if plant == "world-writable folder":
        cache.mkdir()
        cache.chmod(0o777)
    elif plant == "group-writable library":
        cache.mkdir(mode=0o700)
        monkeypatch.setenv("BIRNN_ZOO_KERNEL_CACHE", str(tmp_path / "learn"))  # the name the library is looked up by
        name = loaded_from(cpu_kernel_build.load(capability)).name
        # A new file, not the loaded one rewritten: truncating a mapped library kills the process (SIGBUS).
        planted = cache / name
        planted.write_bytes(b"not a library")  # would make ctypes raise if it were ever loaded
        planted.chmod(0o775)
    elif plant == "symlinked folder":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        cache.symlink_to(tmp_path / "elsewhere")
    elif plant == "foreign folder":
        if not hasattr(os, "getuid") or os.getuid() != 0:
            pytest.skip("needs root to give a folder to another user")
        cache.mkdir(mode=0o700)
        os.chown(cache, 65534, 65534)
    else:
        (tmp_path / "a-file").write_text("")
        cache = tmp_path / "a-file" / "cache"
    monkeypatch.setenv("BIRNN_ZOO_KERNEL_CACHE", str(cache))
    with pytest.warns(RuntimeWarning, match="refusing the CPU kernel cache") as caught:
        library = cpu_kernel_build.load(capability)
    assert len(caught) == 1
    used = loaded_from(library).parent
    assert used != cache and (used.stat().st_mode & 0o777) == 0o700 and used.stat().st_uid == os.getuid()
    if plant == "world-writable folder":
        assert not list(cache.iterdir())  # nothing written where others could swap it


@needs_kernel
def test_the_cache_key_holds_capability_and_compiler_identity(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                              fake_compile: list) -> None:
    monkeypatch.setenv("BIRNN_ZOO_KERNEL_CACHE", str(tmp_path))
    first = loaded_from(cpu_kernel_build.load(cpu_kernel.capability())).name
    monkeypatch.setattr(cpu_kernel_build, "_compiler_identity", lambda cxx: b"another compiler 99.0")
    second = loaded_from(cpu_kernel_build.load(cpu_kernel.capability())).name
    assert first != second and len(fake_compile) == 2


def test_cxx_may_hold_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "ccache  g++ -Wall")
    assert cpu_kernel_build._compiler() == ["ccache", "g++", "-Wall"]
    monkeypatch.setenv("CXX", "'/opt/my compilers/g++'")
    assert cpu_kernel_build._compiler() == ["/opt/my compilers/g++"]
    if shutil.which("c++") and shutil.which("env"):
        monkeypatch.setenv("CXX", "env LC_ALL=C c++")  # a command with arguments really runs
        assert cpu_kernel_build._compiler_identity(cpu_kernel_build._compiler())


@pytest.mark.parametrize("where", ["no MKL", "aarch64"])
def test_no_compile_is_attempted_where_it_cannot_link(where: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if where == "no MKL":
        monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: False)
    else:
        monkeypatch.setattr(cpu_kernel_build.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(cpu_kernel_build, "_compile", lambda *a: pytest.fail("compiled"))
    assert cpu_kernel_build.supported_capabilities() == []
    assert cpu_kernel_build.choose_capability() is None


def test_the_link_fails_on_undefined_symbols(tmp_path: Path) -> None:
    cxx = shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    source = tmp_path / "undefined.cpp"
    source.write_text('extern "C" void not_defined_anywhere();\nextern "C" void f() { not_defined_anywhere(); }\n')
    result = subprocess.run([cxx, *cpu_kernel_build._FLAGS, str(source), "-o", str(tmp_path / "u.so")],
                            capture_output=True, text=True)
    assert result.returncode != 0 and "not_defined_anywhere" in result.stderr


@pytest.mark.parametrize("forced,supported,expected,warns", [
    ("", ["avx512", "avx2"], "avx512", False),
    ("avx2", ["avx512", "avx2"], "avx2", False),
    ("none", ["avx512", "avx2"], None, False),
    ("avx512", ["avx2"], "avx2", True),
    ("AVX2", ["avx2"], "avx2", False),
    ("avx2", [], None, True),
])
def test_capability_can_be_forced(forced: str, supported: list, expected: object, warns: bool,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu_kernel_build.FORCE_ENV, forced)
    monkeypatch.setattr(cpu_kernel_build, "supported_capabilities", lambda: list(supported))
    if warns:
        with pytest.warns(RuntimeWarning, match="supports"):
            assert cpu_kernel_build.choose_capability() == expected
    else:
        assert cpu_kernel_build.choose_capability() == expected


def test_an_unknown_forced_capability_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(cpu_kernel_build.FORCE_ENV, "sse9")
    with pytest.raises(ValueError, match=r"BIRNN_ZOO_CPU_CAPABILITY='sse9'.*avx512, avx2, none"):
        cpu_kernel_build.choose_capability()


def run_isolated(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT), **env})


@needs_kernel
def test_concurrent_first_builds_compile_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              fake_compile: list) -> None:
    """Four loaders at once on an empty folder: one compile (a slow one), every loader gets the finished file."""
    slow_copy = cpu_kernel_build._compile

    def slow(cxx: List[str], capability: str, target: Path) -> None:
        time.sleep(0.3)
        slow_copy(cxx, capability, target)

    monkeypatch.setattr(cpu_kernel_build, "_compile", slow)
    monkeypatch.setenv("BIRNN_ZOO_KERNEL_CACHE", str(tmp_path))
    with ThreadPoolExecutor(4) as pool:
        libraries = list(pool.map(lambda _: cpu_kernel_build.load(cpu_kernel.capability()), range(4)))
    assert len(fake_compile) == 1
    assert len({loaded_from(lib) for lib in libraries}) == 1
    assert all(lib.birnn_vector_width() > 1 for lib in libraries)


@needs_kernel
@pytest.mark.slow
def test_forced_capability_in_a_fresh_process_and_concurrent_first_builds(tmp_path: Path) -> None:
    """Three processes start at once on an empty cache (torchrun, sweeps): one compile, all load it, nothing
    half-written; the forced capability is the one in use; 'none' means PyTorch's kernels."""
    code = ("import torch\nfrom models import BiGRU\nfrom models.blocks import cpu_kernel\n"
            "BiGRU(3, 4)(torch.randn(5, 2, 3))\nprint('capability', cpu_kernel.capability())\n")
    capability = cpu_kernel.capability()
    runs = [run_isolated(code, BIRNN_ZOO_KERNEL_CACHE=str(tmp_path), BIRNN_ZOO_CPU_CAPABILITY=capability)
            for _ in range(3)]
    runs.append(run_isolated(code, BIRNN_ZOO_KERNEL_CACHE=str(tmp_path / "none"), BIRNN_ZOO_CPU_CAPABILITY="none"))
    results = [(run.wait(timeout=300), *run.communicate()) for run in runs]
    for code_, out, err in results[:3]:
        assert code_ == 0, err
        assert f"capability {capability}" in out
        assert "unavailable" not in err
    assert results[3][0] == 0 and "capability None" in results[3][1]
    assert len(list(tmp_path.glob("*.so"))) == 1 and not list(tmp_path.glob("*.partial"))
