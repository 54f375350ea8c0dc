"""Function-level tests of models/blocks/cpu_kernel/build.py written for mutation testing (issue 37): the CPU's
flags from a fake ``/proc/cpuinfo``, the capabilities offered, the compiler command and identity (a recording
``subprocess.run``: no compiler runs), the private-folder checks and every refusal word for word, the library's
record and its checks, and ``load``'s name, fallback and vector-width check on stubbed steps. No real compile: a few
seconds in all."""

import builtins
import functools
import hashlib
import os
import re
import stat
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import torch

from models.blocks.cpu_kernel import build

ELF = build.ELF_MAGIC


def exact(message: str) -> str:
    return "^" + re.escape(message) + "$"


# -- the CPU and the capabilities -----------------------------------------------------------------------------

def fake_cpuinfo(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: Optional[bytes]) -> None:
    """``/proc/cpuinfo`` read from a file holding ``content`` (None: unreadable), opened as build opens it."""
    path = tmp_path / "cpuinfo"
    if content is not None:
        path.write_bytes(content)

    def opener(name: Any, *args: Any, **kwargs: Any) -> Any:
        assert name == "/proc/cpuinfo"
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(build, "open", opener, raising=False)


def test_the_cpu_flags_are_the_first_flags_line_split_on_its_first_colon(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Path) -> None:
    text = (b"processor\t: 0\nmodel name\t: Xeon: fast\nflags\t\t: fpu avx2 fma a:b\n"
            b"bugs\t\t: none\nflags\t\t: other\n")
    fake_cpuinfo(monkeypatch, tmp_path, text)
    assert build._cpu_flags() == {"fpu", "avx2", "fma", "a:b"}


def test_undecodable_bytes_in_cpuinfo_are_replaced_not_fatal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake_cpuinfo(monkeypatch, tmp_path, b"model name\t: \xff\xfe\nflags\t: sse fma\n")
    assert build._cpu_flags() == {"sse", "fma"}


@pytest.mark.parametrize("content", [None, b"processor\t: 0\n", b""], ids=["unreadable", "no-flags", "empty"])
def test_no_flags_line_gives_no_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, content: Optional[bytes]
                                      ) -> None:
    fake_cpuinfo(monkeypatch, tmp_path, content)
    assert build._cpu_flags() == set()


@pytest.mark.parametrize("flags,avx512,avx2,expected", [
    ({"fma", "avx2"}, True, True, ["avx512", "avx2"]),
    ({"fma"}, False, True, ["avx2"]),
    ({"fma"}, True, False, ["avx512"]),
    ({"avx2", "sse"}, True, True, []),        # no FMA: neither library can run
    (set(), True, True, ["avx512", "avx2"]),  # no /proc/cpuinfo: torch's check alone
    (set(), False, False, []),
])
def test_the_capabilities_are_torchs_checks_with_fma(monkeypatch: pytest.MonkeyPatch, flags: set, avx512: bool,
                                                     avx2: bool, expected: List[str]) -> None:
    monkeypatch.setattr(build.sys, "platform", "linux")
    monkeypatch.setattr(build.platform, "machine", lambda: "x86_64")
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: True)
    monkeypatch.setattr(build, "_cpu_flags", lambda: set(flags))
    monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda: avx512)
    monkeypatch.setattr(torch.cpu, "_is_avx2_supported", lambda: avx2)
    assert build.supported_capabilities() == expected


@pytest.mark.parametrize("platform_,machine,expected", [("linux", "AMD64", True), ("linux2", "x86_64", True),
                                                        ("darwin", "x86_64", False), ("linux", "arm64", False),
                                                        ("win32", "AMD64", False)])
def test_only_linux_on_x86_64_is_supported(monkeypatch: pytest.MonkeyPatch, platform_: str, machine: str,
                                           expected: bool) -> None:
    monkeypatch.setattr(build.sys, "platform", platform_)
    monkeypatch.setattr(build.platform, "machine", lambda: machine)
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: True)
    monkeypatch.setattr(build, "_cpu_flags", lambda: {"fma"})
    monkeypatch.setattr(torch.cpu, "_is_avx512_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx2_supported", lambda: True)
    assert build.supported_capabilities() == (["avx2"] if expected else [])


@pytest.mark.parametrize("forced,supported,expected", [(" AVX2 ", ["avx512", "avx2"], "avx2"),
                                                       ("", [], None), ("", ["avx2"], "avx2"),
                                                       ("None", ["avx2"], None)])
def test_the_forced_capability_is_trimmed_and_lower_cased(monkeypatch: pytest.MonkeyPatch, forced: str,
                                                          supported: List[str], expected: Optional[str]) -> None:
    monkeypatch.setenv("BIRNN_ZOO_CPU_CAPABILITY", forced)
    monkeypatch.setattr(build, "supported_capabilities", lambda: list(supported))
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert build.choose_capability() == expected


def test_unset_the_best_supported_capability_is_chosen(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BIRNN_ZOO_CPU_CAPABILITY", raising=False)
    monkeypatch.setattr(build, "supported_capabilities", lambda: ["avx512", "avx2"])
    assert build.choose_capability() == "avx512"


@pytest.mark.parametrize("supported,message", [
    (["avx2"], "birnn-zoo: BIRNN_ZOO_CPU_CAPABILITY=avx512 but this CPU supports ['avx2']; using avx2"),
    ([], "birnn-zoo: BIRNN_ZOO_CPU_CAPABILITY=avx512 but this CPU supports neither; using PyTorch kernels"),
])
def test_forcing_a_capability_the_cpu_lacks_warns_with_what_is_used(monkeypatch: pytest.MonkeyPatch,
                                                                     supported: List[str], message: str) -> None:
    monkeypatch.setenv("BIRNN_ZOO_CPU_CAPABILITY", "avx512")
    monkeypatch.setattr(build, "supported_capabilities", lambda: list(supported))
    with pytest.warns(RuntimeWarning, match=exact(message)):
        build.choose_capability()


def test_an_unknown_capability_is_refused_word_for_word(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIRNN_ZOO_CPU_CAPABILITY", "SSE9")
    with pytest.raises(ValueError, match=exact("BIRNN_ZOO_CPU_CAPABILITY='sse9' is not a capability; expected one "
                                               "of avx512, avx2, none")):
        build.choose_capability()


# -- the compiler ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value,words", [(None, ["c++"]), ("", ["c++"]), ("clang++", ["clang++"])])
def test_the_compiler_defaults_to_cpp(monkeypatch: pytest.MonkeyPatch, value: Optional[str], words: List[str]
                                      ) -> None:
    if value is None:
        monkeypatch.delenv("CXX", raising=False)
    else:
        monkeypatch.setenv("CXX", value)
    assert build._compiler() == words


def test_a_blank_or_unsplittable_cxx_is_a_kernel_problem_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXX", "   ")
    with pytest.raises(build.KernelUnavailable, match=exact("CXX is set but empty")):
        build._compiler()
    monkeypatch.setenv("CXX", "g++ '-O2")
    with pytest.raises(build.KernelUnavailable, match=exact(
            "CXX=\"g++ '-O2\" cannot be split like a shell command (No closing quotation)")) as caught:
        build._compiler()
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


class Runs:
    """A recording stand-in for ``subprocess.run``: each call's command and keywords; ``answer(cmd)`` gives
    stdout or raises."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, answer: Any) -> None:
        self.calls: List[Any] = []
        self.answer = answer
        monkeypatch.setattr(build.subprocess, "run", self)

    def __call__(self, cmd: List[str], **kwargs: Any) -> subprocess.CompletedProcess:
        self.calls.append((list(cmd), kwargs))
        return subprocess.CompletedProcess(cmd, 0, self.answer(cmd), "")


def test_the_compiler_identity_is_its_version_and_target(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = Runs(monkeypatch, lambda cmd: {"--version": "g++ 13.2\n", "-dumpmachine": "x86_64-linux-gnu\n"}[cmd[-1]])
    assert build._compiler_identity(["ccache", "g++"]) == b"g++ 13.2\nx86_64-linux-gnu\n"
    keywords = {"capture_output": True, "text": True, "timeout": 60, "check": True}
    assert runs.calls == [(["ccache", "g++", "--version"], keywords), (["ccache", "g++", "-dumpmachine"], keywords)]


@pytest.mark.parametrize("error", [FileNotFoundError(2, "No such file"),
                                   subprocess.CalledProcessError(1, ["g++"]), subprocess.TimeoutExpired("g++", 60)],
                         ids=["missing", "fails", "hangs"])
def test_a_compiler_that_does_not_answer_is_named(monkeypatch: pytest.MonkeyPatch, error: Exception) -> None:
    def fail(cmd: List[str]) -> str:
        raise error
    Runs(monkeypatch, fail)
    with pytest.raises(build.KernelUnavailable, match=exact(f"no working C++ compiler 'my g++': {error}")):
        build._compiler_identity(["my", "g++"])


# -- private folders and files ----------------------------------------------------------------------------------

def test_is_private_accepts_only_this_users_own_unshared_dir_or_file(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    folder, file = tmp_path / "d", tmp_path / "f"
    folder.mkdir(mode=0o700)
    file.write_text("x")
    file.chmod(0o644)
    assert build._is_private(folder, "dir") is None and build._is_private(file, "file") is None
    assert build._is_private(folder, "file") == f"{folder} is not a regular file"
    assert build._is_private(file, "dir") == f"{file} is not a folder"
    link = tmp_path / "link"
    link.symlink_to(folder)
    assert build._is_private(link, "dir") == f"{link} is a symbolic link"
    missing = tmp_path / "missing"
    assert build._is_private(missing, "dir") == (f"{missing} cannot be read ([Errno 2] No such file or directory: "
                                                 f"'{missing}')")
    for mode in (0o720, 0o702, 0o722):
        folder.chmod(mode)
        assert build._is_private(folder, "dir") == f"{folder} is writable by other users (mode {mode:o})"
    folder.chmod(0o755)  # readable by others is fine: only writing matters
    assert build._is_private(folder, "dir") is None
    uid = os.getuid()
    monkeypatch.setattr(build.os, "getuid", lambda: uid + 1)
    assert build._is_private(folder, "dir") == f"{folder} belongs to another user (uid {uid})"


def test_the_default_cache_is_the_variable_then_xdg_then_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path
                                                              ) -> None:
    monkeypatch.setenv("BIRNN_ZOO_KERNEL_CACHE", str(tmp_path / "k"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert build.default_cache_dir() == tmp_path / "k"
    monkeypatch.setenv("BIRNN_ZOO_KERNEL_CACHE", "")
    assert build.default_cache_dir() == tmp_path / "xdg" / "birnn-zoo-kernels"
    monkeypatch.delenv("BIRNN_ZOO_KERNEL_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert build.default_cache_dir() == tmp_path / "home" / ".cache" / "birnn-zoo-kernels"


def test_cache_dir_makes_the_folder_and_its_parents_private(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "a" / "b" / "cache"
    assert build.cache_dir(root) == root
    assert stat.S_IMODE(root.stat().st_mode) == 0o700 and root.parent.is_dir()
    assert build.cache_dir(root) == root  # an existing private folder is taken as it is
    monkeypatch.setenv("BIRNN_ZOO_KERNEL_CACHE", str(tmp_path / "from-env"))
    assert build.cache_dir() == tmp_path / "from-env" and (tmp_path / "from-env").is_dir()


def test_cache_dir_refuses_a_shared_or_uncreatable_folder_naming_it(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(PermissionError, match=exact(f"{shared} is writable by other users (mode 777)")):
        build.cache_dir(shared)
    (tmp_path / "file").write_text("")
    (tmp_path / "file").chmod(0o600)
    with pytest.raises(PermissionError, match=exact(f"{tmp_path / 'file'} is not a folder")):
        build.cache_dir(tmp_path / "file")
    bad = tmp_path / "file" / "cache"  # under a file: mkdir says it exists; the check says why it is unusable
    with pytest.raises(PermissionError, match=exact(f"{bad} cannot be read ([Errno 20] Not a directory: '{bad}')")):
        build.cache_dir(bad)

    def full(self: Path, *args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device", str(self))

    monkeypatch.setattr(Path, "mkdir", full)
    new = tmp_path / "new"
    with pytest.raises(PermissionError, match=exact(f"{new} cannot be created ([Errno 28] No space left on device: "
                                                    f"'{tmp_path}')")):
        build.cache_dir(new)


def test_a_folder_made_by_another_process_first_is_checked_like_any(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "race"
    real_mkdir = Path.mkdir

    def racing(self: Path, *args: Any, **kwargs: Any) -> None:
        if self == root:
            real_mkdir(self, 0o700)  # the other process wins
            raise FileExistsError(17, "File exists", str(self))
        real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", racing)
    assert build.cache_dir(root) == root


def test_the_compile_is_announced_once_naming_the_folder(capsys: pytest.CaptureFixture,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build, "_announced", False)
    build._announce("avx2", Path("/some/folder"))
    build._announce("avx512", Path("/other"))
    assert capsys.readouterr() == ("", "birnn-zoo: compiling the CPU kernel (avx2) once for this machine, cached in "
                                       "/some/folder ($BIRNN_ZOO_KERNEL_CACHE sets the folder)\n")


# -- the compile, on a recording subprocess.run ------------------------------------------------------------------

class Compiler:
    """``subprocess.run`` for ``_compile``: records the command, writes ``output`` to its ``-o`` file, or raises."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, output: bytes = ELF + b"rest of a library",
                 error: Optional[Exception] = None) -> None:
        self.calls: List[Any] = []
        self.output, self.error = output, error
        self.fsynced: List[int] = []
        monkeypatch.setattr(build.subprocess, "run", self)
        monkeypatch.setattr(build, "_announced", True)

    def __call__(self, cmd: List[str], **kwargs: Any) -> None:
        self.calls.append((list(cmd), kwargs))
        Path(cmd[cmd.index("-o") + 1]).write_bytes(self.output)
        if self.error is not None:
            raise self.error


def test_the_compile_command_and_its_temporary_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture) -> None:
    compiler = Compiler(monkeypatch)
    monkeypatch.setattr(build, "_announced", False)  # the first compile of this process says where it goes
    synced: List[Any] = []
    monkeypatch.setattr(build, "_fsync_folder", synced.append)
    target = tmp_path / "lib.so"
    build._compile(["ccache", "g++"], "avx2", target)
    ((cmd, kwargs),) = compiler.calls
    partial = cmd[cmd.index("-o") + 1]
    torch_lib = Path(torch.__file__).resolve().parent / "lib"
    assert cmd == ["ccache", "g++", "-O3", "-fopenmp", "-shared", "-fPIC", "-std=c++17", "-Wl,--no-undefined",
                   "-mavx2", "-mfma", f"-I{build.CSRC}", str(build.CSRC / "birnn_cpu.cpp"), "-o", partial,
                   f"-L{torch_lib}", "-ltorch_cpu", f"-Wl,-rpath,{torch_lib}"]
    assert kwargs == {"check": True, "capture_output": True, "text": True, "timeout": 600}
    assert Path(partial).parent == tmp_path and partial.endswith(".so.partial")
    assert target.read_bytes() == compiler.output and stat.S_IMODE(target.stat().st_mode) == 0o755
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib.so"] and synced == [tmp_path]
    assert capsys.readouterr().err == (f"birnn-zoo: compiling the CPU kernel (avx2) once for this machine, cached "
                                       f"in {tmp_path} ($BIRNN_ZOO_KERNEL_CACHE sets the folder)\n")


def test_the_avx512_compile_adds_its_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    compiler = Compiler(monkeypatch)
    build._compile(["c++"], "avx512", tmp_path / "lib.so")
    cmd = compiler.calls[0][0]
    assert cmd[7:13] == ["-mavx512f", "-mavx512dq", "-mavx512bw", "-mavx512vl", "-mavx2", "-mfma"]


def test_a_failed_compile_names_the_compilers_last_words_and_leaves_nothing(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    stderr = "x" * 100 + "e" * 2000
    Compiler(monkeypatch, error=subprocess.CalledProcessError(1, ["c++"], "", stderr))
    with pytest.raises(build.KernelUnavailable, match=exact("compiling the CPU kernel failed:\n" + "e" * 2000)):
        build._compile(["c++"], "avx2", tmp_path / "lib.so")
    assert list(tmp_path.iterdir()) == []
    Compiler(monkeypatch, error=subprocess.TimeoutExpired(["c++"], 600))
    with pytest.raises(build.KernelUnavailable, match=exact("compiling the CPU kernel failed: Command '['c++']' "
                                                            "timed out after 600 seconds")):
        build._compile(["c++"], "avx2", tmp_path / "lib.so")
    assert list(tmp_path.iterdir()) == []


def test_a_compile_that_writes_no_library_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    Compiler(monkeypatch, output=b"\x7fELG and more")
    with pytest.raises(build.KernelUnavailable, match=exact("compiling the CPU kernel with 'my cxx' produced no "
                                                            "library")):
        build._compile(["my", "cxx"], "avx2", tmp_path / "lib.so")
    assert list(tmp_path.iterdir()) == []


def test_fsync_folder_syncs_and_closes_a_handle_on_the_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                              ) -> None:
    synced: List[int] = []
    real = os.fsync
    monkeypatch.setattr(build.os, "fsync", lambda fd: synced.append(fd) or real(fd))
    build._fsync_folder(tmp_path)
    (fd,) = synced
    with pytest.raises(OSError):
        os.fstat(fd)  # closed


# -- the record and its checks ------------------------------------------------------------------------------------

def test_digest_and_record_cover_every_chunk(tmp_path: Path) -> None:
    data = os.urandom((1 << 20) * 2 + 12345)
    target = tmp_path / "lib.so"
    target.write_bytes(data)
    assert build._digest(target) == (hashlib.sha256(data).hexdigest(), len(data))
    build._record(target)
    assert (tmp_path / "lib.so.sha256").read_text() == f"{hashlib.sha256(data).hexdigest()} {len(data)}\n"


def recorded(tmp_path: Path, data: bytes = ELF + b"\x00" * 60) -> Path:
    target = tmp_path / "lib.so"
    target.write_bytes(data)
    build._record(target)
    return target


def test_verify_accepts_the_recorded_library(tmp_path: Path) -> None:
    assert build.verify(recorded(tmp_path)) is None


def test_verify_names_each_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "lib.so"
    assert build.verify(target) == "missing"
    target.write_bytes(ELF + b"abc")
    assert build.verify(target) == "it has no readable record lib.so.sha256"
    (tmp_path / "lib.so.sha256").write_text("onlyoneword\n")
    assert build.verify(target) == "it has no readable record lib.so.sha256"
    (tmp_path / "lib.so.sha256").write_text("abc notanumber\n")
    assert build.verify(target) == "it has no readable record lib.so.sha256"
    target = recorded(tmp_path)
    target.write_bytes(ELF + b"\x00" * 59)
    assert build.verify(target) == "its size is 63 bytes, 64 were recorded at build"
    target.write_bytes(b"\x7fELG" + b"\x00" * 60)
    assert build.verify(target) == "it is not an ELF library"
    target.write_bytes(ELF + b"\x01" + b"\x00" * 59)
    assert build.verify(target) == "its SHA-256 differs from the one recorded at build"
    target = recorded(tmp_path)

    def unreadable(path: Any, *args: Any, **kwargs: Any) -> Any:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(build, "open", unreadable, raising=False)
    assert build.verify(target) == f"it cannot be read ([Errno 13] Permission denied: '{target}')"


# -- _build_in and load on stubbed compiles ------------------------------------------------------------------------

def fake_compiles(monkeypatch: pytest.MonkeyPatch, data: bytes = ELF + b"\x00" * 60) -> List[Any]:
    calls: List[Any] = []

    def compile_(cxx: List[str], capability: str, target: Path) -> None:
        calls.append((cxx, capability, target))
        target.write_bytes(data)
        target.chmod(0o755)

    monkeypatch.setattr(build, "_compile", compile_)
    return calls


def test_build_in_compiles_a_missing_library_once_and_records_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                 ) -> None:
    calls = fake_compiles(monkeypatch)
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # missing, or no record: built without a warning
        assert build._build_in(tmp_path, "k.so", ["c++"], "avx2") == tmp_path / "k.so"
        assert calls == [(["c++"], "avx2", tmp_path / "k.so")]
        assert build.verify(tmp_path / "k.so") is None and (tmp_path / "k.so.lock").exists()
        assert build._build_in(tmp_path, "k.so", ["c++"], "avx2") == tmp_path / "k.so"
        assert len(calls) == 1  # verified: loaded as it is
        (tmp_path / "k.so.sha256").unlink()
        build._build_in(tmp_path, "k.so", ["c++"], "avx2")
        assert len(calls) == 2


def test_a_damaged_library_is_rebuilt_with_a_warning_naming_the_damage(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_compiles(monkeypatch)
    build._build_in(tmp_path, "k.so", ["c++"], "avx2")
    (tmp_path / "k.so").write_bytes(ELF)
    with pytest.warns(RuntimeWarning, match=exact(f"birnn-zoo: the CPU kernel library {tmp_path / 'k.so'} is damaged "
                                                  "(its size is 4 bytes, 64 were recorded at build); rebuilding it")):
        build._build_in(tmp_path, "k.so", ["c++"], "avx2")
    assert len(calls) == 2 and build.verify(tmp_path / "k.so") is None


def test_a_planted_library_is_refused_before_anything_is_built(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                               ) -> None:
    calls = fake_compiles(monkeypatch)
    (tmp_path / "k.so").write_bytes(ELF)
    (tmp_path / "k.so").chmod(0o666)
    with pytest.raises(PermissionError, match=exact(f"{tmp_path / 'k.so'} is writable by other users (mode 666)")):
        build._build_in(tmp_path, "k.so", ["c++"], "avx2")
    (tmp_path / "d.so").mkdir(mode=0o700)  # not a file at all: refused as such, not compiled over
    with pytest.raises(PermissionError, match=exact(f"{tmp_path / 'd.so'} is not a regular file")):
        build._build_in(tmp_path, "d.so", ["c++"], "avx2")
    assert calls == []


def test_a_library_left_shared_or_unverifiable_after_the_build_is_not_loaded(tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def shared(cxx: List[str], capability: str, target: Path) -> None:
        target.write_bytes(ELF)
        target.chmod(0o775)

    monkeypatch.setattr(build, "_compile", shared)
    with pytest.raises(PermissionError, match=exact(f"{tmp_path / 'k.so'} is writable by other users (mode 775)")):
        build._build_in(tmp_path, "k.so", ["c++"], "avx2")
    fake_compiles(monkeypatch)
    monkeypatch.setattr(build, "_record", lambda target: None)  # a record that never gets written
    with pytest.raises(build.KernelUnavailable, match=exact(f"{tmp_path / 'k2.so'} cannot be loaded: it has no "
                                                            "readable record k2.so.sha256")):
        build._build_in(tmp_path, "k2.so", ["c++"], "avx2")


def test_a_read_only_folder_is_used_only_with_a_good_library(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_open = builtins.open

    def read_only(path: Any, *args: Any, **kwargs: Any) -> Any:
        if str(path).endswith(".lock"):
            raise OSError(30, "Read-only file system", str(path))
        return real_open(path, *args, **kwargs)

    calls = fake_compiles(monkeypatch)
    monkeypatch.setattr(build, "open", read_only, raising=False)
    with pytest.raises(PermissionError, match=exact(f"{tmp_path} is not writable (Read-only file system) and its "
                                                    "library is unusable (missing)")):
        build._build_in(tmp_path, "k.so", ["c++"], "avx2")
    recorded(tmp_path).rename(tmp_path / "k.so")
    (tmp_path / "lib.so.sha256").rename(tmp_path / "k.so.sha256")
    (tmp_path / "k.so").chmod(0o755)
    assert build._build_in(tmp_path, "k.so", ["c++"], "avx2") == tmp_path / "k.so" and calls == []


def test_the_fallback_folder_is_one_per_user_else_a_fresh_private_one(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    if os.getuid() == 0:  # root's uid is 0, the default: name the folder after another uid (which must own it)
        (tmp_path / "birnn-zoo-kernels-4321").mkdir(mode=0o700)
        os.chown(tmp_path / "birnn-zoo-kernels-4321", 4321, -1)
        with monkeypatch.context() as patched:
            patched.setattr(build.os, "getuid", lambda: 4321)
            assert build._fallback_dir() == tmp_path / "birnn-zoo-kernels-4321"
    folder = build._fallback_dir()
    assert folder == tmp_path / f"birnn-zoo-kernels-{os.getuid()}"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and build._fallback_dir() == folder
    folder.chmod(0o777)
    registered: List[Any] = []
    monkeypatch.setattr(build.atexit, "register", lambda *args: registered.append(args))
    private = build._fallback_dir()
    assert private.parent == tmp_path and private.name.startswith("birnn-zoo-") and private != folder
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert registered == [(build.shutil.rmtree, private, True)]


class Library:
    def __init__(self, path: str, width: int) -> None:
        self._name, self.width = path, width

    def birnn_vector_width(self) -> int:
        return self.width


def stub_load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, width: int = 8) -> Dict[str, Any]:
    seen: Dict[str, Any] = {"declared": []}
    monkeypatch.setenv("BIRNN_ZOO_KERNEL_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(build, "_compiler", lambda: ["c++"])
    seen["identity_of"] = []
    monkeypatch.setattr(build, "_compiler_identity", lambda cxx: seen["identity_of"].append(cxx) or b"compiler 1")
    monkeypatch.setattr(build.ctypes, "CDLL", lambda path: Library(path, width))
    monkeypatch.setattr(build.abi, "declare", seen["declared"].append)
    seen["compiles"] = fake_compiles(monkeypatch)
    return seen


def test_load_names_the_library_by_everything_that_makes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = stub_load(monkeypatch, tmp_path)
    library = build.load("avx2")
    digest = hashlib.sha256()
    for source in build.SOURCES:
        digest.update(source.read_bytes())
    digest.update(" ".join(build._FLAGS + build._TARGET_FLAGS["avx2"]).encode() + torch.__version__.encode())
    digest.update(b"compiler 1")
    path = tmp_path / "cache" / f"birnn_cpu-avx2-{digest.hexdigest()[:16]}.so"
    assert library._name == str(path) and seen["declared"] == [library]
    assert seen["compiles"] == [(["c++"], "avx2", path)] and seen["identity_of"] == [["c++"]]


def test_load_refuses_an_unknown_capability_and_a_library_of_another_width(tmp_path: Path,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=exact("capability must be one of ('avx512', 'avx2'), got 'sse'")):
        build.load("sse")
    stub_load(monkeypatch, tmp_path, width=16)
    with pytest.raises(build.KernelUnavailable, match=r"^.*birnn_cpu-avx2-[0-9a-f]{16}\.so was built for vector width "
                                                      r"16, expected 8$"):
        build.load("avx2")


def test_load_falls_back_to_the_private_folder_with_one_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    seen = stub_load(monkeypatch, tmp_path, width=16)
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache").chmod(0o777)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    monkeypatch.setattr(build, "_fallback_dir", lambda: private)
    message = (f"birnn-zoo: refusing the CPU kernel cache ({tmp_path / 'cache'} is writable by other users (mode "
               f"777)); building in {private} instead. Point BIRNN_ZOO_KERNEL_CACHE at a folder only you can write.")
    with pytest.warns(RuntimeWarning, match=exact(message)) as caught:
        library = build.load("avx512")
    assert len(caught) == 1 and Path(library._name).parent == private
    assert seen["compiles"] == [(["c++"], "avx512", Path(library._name))]


# -- where the warnings point --------------------------------------------------------------------------------------

def under_mutmut() -> bool:
    return "mutants" in Path(build.__file__).parts


def via_caller(call: Any) -> Any:
    """Stands for ``cpu_kernel.available``, the one caller of ``choose_capability`` and ``load``: the warnings name
    the line that called it (here, the test's)."""
    return call()


def test_the_warnings_point_at_the_line_that_asked_for_the_kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    """``choose_capability`` warns with ``stacklevel=3`` (past ``available``), ``_cached`` with 4 (past ``load``
    and ``available``), ``_build_in`` with 5 (past ``_cached`` too): each names this file at the line calling
    ``via_caller``."""
    if under_mutmut():
        pytest.skip("under mutmut each function is wrapped in a trampoline: more frames")
    import inspect
    monkeypatch.setenv("BIRNN_ZOO_CPU_CAPABILITY", "avx512")
    monkeypatch.setattr(build, "supported_capabilities", lambda: ["avx2"])
    with pytest.warns(RuntimeWarning) as caught:
        line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        via_caller(build.choose_capability)
    assert [(w.filename, w.lineno) for w in caught] == [(__file__, line)]
    seen = stub_load(monkeypatch, tmp_path, width=8)
    via_caller(functools.partial(build.load, "avx2"))
    library = Path(seen["compiles"][0][2])
    library.write_bytes(ELF)  # damaged: rebuilt with a warning
    with pytest.warns(RuntimeWarning, match="is damaged") as caught:
        line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        via_caller(functools.partial(build.load, "avx2"))
    assert [(w.filename, w.lineno) for w in caught] == [(__file__, line)]
    (tmp_path / "cache").chmod(0o777)
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    monkeypatch.setattr(build, "_fallback_dir", lambda: private)
    with pytest.warns(RuntimeWarning, match="refusing") as caught:
        line = inspect.currentframe().f_lineno + 1  # type: ignore[union-attr]
        via_caller(functools.partial(build.load, "avx2"))
    assert [(w.filename, w.lineno) for w in caught] == [(__file__, line)]


# -- the serving call's extension module (csrc/fast_call.cpp) ------------------------------------------------------

def test_the_serving_call_compiles_against_torchs_and_pythons_headers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                       capsys: pytest.CaptureFixture) -> None:
    compiler = Compiler(monkeypatch)
    monkeypatch.setattr(build, "_announced", True)  # after a kernel compile, the serving call still says it compiles
    build._compile(["g++"], build.FAST_CALL, tmp_path / "ext.so")
    ((cmd, _),) = compiler.calls
    partial = cmd[cmd.index("-o") + 1]
    torch_root = Path(torch.__file__).resolve().parent
    abi_flag = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    assert cmd == ["g++", "-O2", "-shared", "-fPIC", "-std=c++20", abi_flag, f"-I{torch_root / 'include'}",
                   f"-I{torch_root / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
                   f"-I{sysconfig.get_paths()['include']}", str(build.CSRC / "fast_call.cpp"), "-o", partial,
                   f"-L{torch_root / 'lib'}", "-lc10", "-ltorch_cpu", "-ltorch_python",
                   f"-Wl,-rpath,{torch_root / 'lib'}"]
    assert capsys.readouterr().err == (f"birnn-zoo: compiling the CPU kernel's serving call (a Python extension) once "
                                       f"for this machine and torch, cached in {tmp_path} ($BIRNN_ZOO_KERNEL_CACHE "
                                       f"sets the folder)\n")


def test_the_serving_call_needs_pythons_headers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(build.sysconfig, "get_paths", lambda: {"include": str(tmp_path)})
    monkeypatch.setattr(build, "_compile", lambda *args: pytest.fail("no compile without Python.h"))
    with pytest.raises(build.KernelUnavailable, match=exact(f"Python's C headers are not installed "
                                                            f"({tmp_path / 'Python.h'} is missing)")):
        build.load_fast_call()


def test_the_serving_call_is_named_by_its_source_flags_torch_python_and_compiler(monkeypatch: pytest.MonkeyPatch,
                                                                                  tmp_path: Path) -> None:
    """One cached module per (source, flags, torch, Python, compiler): a change of any builds another."""
    names: List[str] = []

    def cached(name: str, cxx: List[str], capability: str) -> Path:
        names.append(name)
        raise build.KernelUnavailable("stop here")

    monkeypatch.setattr(build, "_cached", cached)
    monkeypatch.setattr(build, "_compiler_identity", lambda cxx: b"g++ 12")

    def name() -> str:
        with pytest.raises(build.KernelUnavailable):
            build.load_fast_call()
        return names[-1]

    first = name()
    assert first.startswith("birnn_fast_call-") and first.endswith(".so") and name() == first
    monkeypatch.setattr(build, "_compiler_identity", lambda cxx: b"g++ 13")
    assert name() != first
    monkeypatch.setattr(build.torch, "__version__", "0.0")
    monkeypatch.setattr(build, "_compiler_identity", lambda cxx: b"g++ 12")
    assert name() != first
    monkeypatch.undo()
    monkeypatch.setattr(build, "_cached", cached)
    monkeypatch.setattr(build, "_compiler_identity", lambda cxx: b"g++ 12")
    monkeypatch.setattr(build.sys, "version", "3.99")
    assert name() != first
    monkeypatch.setattr(build.sys, "version", sys.version)
    source = tmp_path / "fast_call.cpp"
    source.write_text("// another source\n")
    monkeypatch.setattr(build, "FAST_CALL_SOURCE", source)
    assert name() != first
