"""Tests of tests/support/gobuild.py: every build mode yields the binary it claims, the cache works, the service runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from elftools.elf.dynamic import DynamicSection
from elftools.elf.elffile import ELFFile

from support import gobuild
from gotrace.binary.encoding import read_uvarint

EXPECTED_MACHINE = {"amd64": "EM_X86_64", "arm64": "EM_AARCH64"}


def go_version_string(version: str) -> str:
    """What `go version` calls a matrix toolchain ("1.19" is Debian's 1.19.8)."""
    return "go1.19.8" if version == "1.19" else f"go{version}"


def buildinfo(elf: ELFFile) -> tuple[str, str]:
    """(Go version, module and build-settings text) from .go.buildinfo (Go 1.18+ inline layout)."""
    section = elf.get_section_by_name(".go.buildinfo")
    assert section is not None, "no .go.buildinfo section"
    data = section.data()
    assert data[:14] == b"\xff Go buildinf:"
    assert data[15] & 2, "expected the Go 1.18+ inline buildinfo layout"
    n, pos = read_uvarint(data, 32)
    version = data[pos : pos + n].decode()
    n, pos = read_uvarint(data, pos + n)
    return version, data[pos : pos + n].decode(errors="replace")


def symbol_names(elf: ELFFile) -> set[str]:
    symtab = elf.get_section_by_name(".symtab")
    return {sym.name for sym in symtab.iter_symbols()} if symtab else set()


def needed_libraries(elf: ELFFile) -> list[str]:
    for section in elf.iter_sections():
        if isinstance(section, DynamicSection):
            return [tag.needed for tag in section.iter_tags() if tag.entry.d_tag == "DT_NEEDED"]
    return []


# --- the matrix --------------------------------------------------------------


def test_matrix_covers_every_mode_on_amd64_and_cross_modes_on_arm64():
    combos = gobuild.matrix()
    assert len(combos) == len(gobuild.TOOLCHAINS) * (len(gobuild.MODES) + len(gobuild.CROSS_MODES))
    for version in gobuild.TOOLCHAINS:
        assert {m for v, m, a in combos if v == version and a == "amd64"} == {
            "default", "stripped", "pie", "extlink", "stripped-pie"}
        assert {m for v, m, a in combos if v == version and a == "arm64"} == {
            "default", "stripped", "pie", "stripped-pie"}
    assert gobuild.matrix(arches=("amd64",)) == [c for c in combos if c[2] == "amd64"]


def test_impossible_combinations_are_refused():
    with pytest.raises(ValueError, match="amd64 only"):
        gobuild.build("service", "1.25.5", "extlink", "arm64")
    with pytest.raises(ValueError, match="unknown build mode"):
        gobuild.build("service", "1.25.5", "race")
    with pytest.raises(gobuild.GoBuildError, match="no Go program"):
        gobuild.build("no-such-program", "1.25.5")


# --- what each build is ------------------------------------------------------


def test_binary_is_what_its_mode_and_arch_claim(go_target):
    path = go_target.binary()
    assert path.name == "service" and os.access(path, os.X_OK)
    with open(path, "rb") as f:
        elf = ELFFile(f)
        assert elf["e_machine"] == EXPECTED_MACHINE[go_target.arch]
        version, settings = buildinfo(elf)
        names = symbol_names(elf)
        has_debug_info = any(elf.get_section_by_name(s) for s in (".debug_info", ".zdebug_info"))
        interp = [seg for seg in elf.iter_segments() if seg["p_type"] == "PT_INTERP"]
        needed = needed_libraries(elf)
        comment = elf.get_section_by_name(".comment")
        comment = comment.data() if comment else b""
        elf_type = elf["e_type"]

    assert version == go_version_string(go_target.version)
    assert f"GOARCH={go_target.arch}" in settings
    cgo = go_target.mode == "extlink"
    assert f"CGO_ENABLED={int(cgo)}" in settings

    if go_target.mode in gobuild.STRIPPED_MODES:
        assert not names, "stripped binary still has a .symtab"
        assert not has_debug_info, "stripped binary still has DWARF"
    else:
        assert "main.(*Server).handle" in names
        assert has_debug_info

    if go_target.mode in ("pie", "stripped-pie"):
        assert elf_type == "ET_DYN"
    else:
        assert elf_type == "ET_EXEC"

    if go_target.mode == "extlink":
        assert interp, "externally linked binary has no PT_INTERP"
        assert "libc.so.6" in needed
        assert b"GCC" in comment, "no .comment from gcc: not linked by the external linker"
        assert "linkmode=external" in settings
        assert any(n.endswith("_Cfunc_gotrace_add") for n in names), "the cgo call of cgo.go is missing"
    else:
        assert b"GCC" not in comment, "linked by gcc, not by Go's internal linker"
        assert not any(n.endswith("_Cfunc_gotrace_add") for n in names)
    if go_target.mode in ("default", "stripped"):
        assert not interp and not needed, "default and stripped builds should be static"


# --- the service runs ----------------------------------------------------------


def run_service(path: Path, *args: str) -> str:
    proc = subprocess.run([str(path), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def parse_calls(stdout: str) -> dict[str, int]:
    return {m[1]: int(m[2]) for m in re.finditer(r"^calls (\S+) (\d+)$", stdout, re.M)}


@pytest.mark.parametrize("mode", ["loop", "http"])
def test_service_runs_and_reports_exact_call_counts(go_target_amd64, mode):
    stdout = run_service(go_target_amd64.binary(), "-mode", mode, "-n", "200", "-fib", "10", "-depth", "32",
                         "-sleep-us", "100")
    cgo = go_target_amd64.mode == "extlink"
    summary = stdout.splitlines()[0]
    assert summary.startswith(f"service summary: mode={mode} rounds=1 requests=200 handled=200 ")
    # i%50 == 49 for i < 200: 49, 99, 149, 199; kind 2 (fail) is 20 of 200.
    assert " work_errors=4 recovered=20 " in summary
    assert f" cgo={str(cgo).lower()} " in summary
    calls = parse_calls(stdout)
    assert calls["main.(*Server).handle"] == 200
    assert calls["main.Request.Weight"] == 200
    assert calls["main.work"] == 200
    assert calls["main.fib"] == 20 * 177  # fib(10) makes 177 calls, for 20 requests of kind 0
    assert calls["main.grow"] == 20 * 32
    assert calls["main.makeScaler.func1"] == 20 * 3
    assert calls["main.shout.func1"] == 20 * 2
    for name in ("main.fail", "main.readFD", "main.(*Wrapped).Describe", "main.(*Base).Describe",
                 "main.(*Server).slowPath", "main.cgoAdd", "main.Map[int]", "main.Map[string]"):
        assert calls[name] == 20, name


def test_service_json_summary_and_bad_flag():
    path = gobuild.build("service", "1.25.5")
    import json

    summary = json.loads(run_service(path, "-n", "30", "-json"))
    assert summary["handled"] == 30 and summary["calls"]["main.work"] == 30
    proc = subprocess.run([str(path), "-mode", "nosuch"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown -mode" in proc.stderr


def test_service_waits_for_sigusr1_when_asked():
    path = gobuild.build("service", "1.25.5")
    proc = subprocess.Popen([str(path), "-wait", "-n", "10"], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == f"ready pid={proc.pid}"
        time.sleep(0.2)
        assert proc.poll() is None, "service did not wait for SIGUSR1"
        os.kill(proc.pid, 10)  # SIGUSR1
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    assert proc.returncode == 0 and "handled=10 " in out


def test_tiny_is_inlined_everywhere_and_wrappers_exist():
    """Facts other tests rely on: main.tiny has no symbol; the promoted-method wrappers do."""
    for version in gobuild.TOOLCHAINS:
        names = {name for name, _, _ in gobuild.go_tool_nm(gobuild.build("service", version), version)}
        assert "main.tiny" not in names, version
        assert {"main.(*Wrapped).Describe", "main.fail", "main.grow", "main.makeScaler.func1"} <= names, version
        assert any(n.startswith("main.Map[go.shape.int") for n in names), version


# --- go tool nm ----------------------------------------------------------------


def test_go_tool_nm_agrees_with_the_elf_symtab():
    path = gobuild.build("service", "1.23.9")
    nm = {name: (vaddr, kind) for name, vaddr, kind in gobuild.go_tool_nm(path, "1.23.9")}
    with open(path, "rb") as f:
        symtab = ELFFile(f).get_section_by_name(".symtab")
        handle = symtab.get_symbol_by_name("main.(*Server).handle")[0]["st_value"]
    assert nm["main.(*Server).handle"] == (handle, "T")
    assert gobuild.go_tool_nm(gobuild.build("service", "1.23.9", "stripped"), "1.23.9") == []


# --- the cache -------------------------------------------------------------------


def test_cache_hit_returns_the_same_file_without_rebuilding():
    first = gobuild.build("service", "1.21.13", "pie")
    before = first.stat()
    second = gobuild.build("service", "1.21.13", "pie")
    assert second == first
    after = second.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # the same file, not rebuilt


HELLO = """\
package main

import "fmt"

func main() { fmt.Println("%s") }
"""


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A private testdata/ and build cache (the Go build cache stays shared)."""
    testdata, builds = tmp_path / "testdata", tmp_path / "builds"
    (testdata / "hello").mkdir(parents=True)
    (testdata / "hello" / "go.mod").write_text("module example.com/hello\n\ngo 1.17\n")
    (testdata / "hello" / "main.go").write_text(HELLO % "one")
    monkeypatch.setattr(gobuild, "TESTDATA", testdata)
    monkeypatch.setattr(gobuild, "BUILD_DIR", builds)
    return testdata / "hello"


def test_changed_sources_get_a_new_binary(scratch):
    one = gobuild.build("hello", "1.25.5")
    assert subprocess.run([one], capture_output=True, text=True).stdout == "one\n"
    (scratch / "main.go").write_text(HELLO % "two")
    two = gobuild.build("hello", "1.25.5")
    assert two != one
    assert subprocess.run([two], capture_output=True, text=True).stdout == "two\n"
    assert one.exists(), "the old build stays cached"


def test_compile_errors_raise_with_the_compiler_output(scratch):
    (scratch / "main.go").write_text("package main\n\nfunc main() { undefinedThing() }\n")
    with pytest.raises(gobuild.GoBuildError, match="undefined: undefinedThing"):
        gobuild.build("hello", "1.19")
    assert not [p for p in (scratch.parent.parent / "builds").rglob("*") if p.is_file() and p.name != ".lock"]


def test_two_processes_building_at_once_get_one_good_binary(scratch, tmp_path):
    (scratch / "main.go").write_text(HELLO % "together")
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(gobuild.__file__).parent)!r})
        import gobuild
        gobuild.TESTDATA = Path({str(gobuild.TESTDATA)!r})
        gobuild.BUILD_DIR = Path({str(gobuild.BUILD_DIR)!r})
        path = gobuild.build("hello", "1.23.9", "extlink")
        print(path, path.stat().st_ino)
        """
    )
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    assert outputs[0] == outputs[1], "the second process should reuse the first one's build"
    path = Path(outputs[0].split()[0])
    assert subprocess.run([path], capture_output=True, text=True).stdout == "together\n"
    assert [p.name for p in path.parent.iterdir() if not p.name.startswith(".lock")] == ["hello"]
