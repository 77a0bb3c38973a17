"""Acceptance tests of `gotrace funcs` as a user meets it: JSON schema, text output, patterns, errors.

Uses the service (testdata/service) built by the newest toolchain of the
matrix, unstripped and stripped, for amd64. Errors are checked through
`python -m gotrace` subprocesses, as a shell user sees them: exit status 2,
exactly one line on stderr naming the problem, nothing on stdout, never a
traceback. The CLI contract is /work/shared/cli-contract.md.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest

from support import gobuild
from support.cli import run_gotrace, run_gotrace_process

VERSION = gobuild.TOOLCHAINS[-1]

CONTRACT_TOP_KEYS = {"binary", "go_version", "arch", "functions"}
EXTRA_TOP_KEYS = {"module"}  # gotrace extension: the main module path from .go.buildinfo
CONTRACT_FUNCTION_KEYS = {"name", "entry", "size", "returns", "traceable", "reason"}
# Extra keys gotrace adds (the contract allows additions): offset of the
# post-prologue entry probe from the entry, and the file offset of the entry.
EXTRA_FUNCTION_KEYS = {"entry_site", "file_offset"}


@pytest.fixture(scope="module")
def binary() -> Path:
    return gobuild.build("service", VERSION, "default", "amd64")


@pytest.fixture(scope="module")
def stripped() -> Path:
    return gobuild.build("service", VERSION, "stripped", "amd64")




def funcs_json(path: Path | str, *patterns: str) -> dict:
    code, out, err = run_gotrace("funcs", str(path), *patterns, "--json")
    assert code == 0, err
    return json.loads(out)


@lru_cache(maxsize=None)
def all_functions(path: Path) -> tuple[dict, ...]:
    return tuple(funcs_json(path)["functions"])


def names(doc: dict) -> list[str]:
    return [f["name"] for f in doc["functions"]]


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    """Exit 2, nothing on stdout, one `gotrace: ...` line on stderr holding every fragment."""
    assert "Traceback" not in proc.stderr
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == ""
    assert proc.stderr.endswith("\n") and proc.stderr.count("\n") == 1, proc.stderr
    line = proc.stderr.rstrip("\n")
    assert line.startswith("gotrace: ")
    assert "internal error" not in line
    for fragment in fragments:
        assert fragment in line
    return line


def load_segment_file_offset(path: Path, vaddr: int) -> int:
    """vaddr -> file offset through the PT_LOAD that holds it (pyelftools)."""
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        for seg in ELFFile(f).iter_segments():
            if seg["p_type"] == "PT_LOAD" and seg["p_vaddr"] <= vaddr < seg["p_vaddr"] + seg["p_filesz"]:
                return vaddr - seg["p_vaddr"] + seg["p_offset"]
    raise AssertionError(f"{vaddr:#x} is in no PT_LOAD of {path}")


def section_file_range(path: Path, name: str) -> tuple[int, int]:
    from elftools.elf.elffile import ELFFile

    with open(path, "rb") as f:
        section = ELFFile(f).get_section_by_name(name)
        assert section is not None, f"{path} has no {name}"
        return section["sh_offset"], section["sh_size"]


# --- JSON -----------------------------------------------------------------------------


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def test_json_schema_of_every_function(binary):
    code, out, err = run_gotrace("funcs", str(binary), "--json")
    assert code == 0 and err == ""
    assert out.count("\n") == 1  # one JSON object on one line
    doc = json.loads(out)
    assert set(doc) == CONTRACT_TOP_KEYS | EXTRA_TOP_KEYS
    assert doc["module"] == "example.com/service"  # testdata/service/go.mod
    assert doc["binary"] == str(binary)
    assert doc["go_version"] == f"go{VERSION}"
    assert doc["arch"] == "amd64"
    functions = doc["functions"]
    assert len(functions) > 5000
    entries = [f["entry"] for f in functions]
    assert entries == sorted(entries) and len(set(entries)) == len(entries)
    untraceable = 0
    for fn in functions:
        assert set(fn) == CONTRACT_FUNCTION_KEYS | EXTRA_FUNCTION_KEYS, fn["name"]
        assert isinstance(fn["name"], str) and fn["name"]
        assert is_int(fn["entry"]) and is_int(fn["size"]) and fn["size"] > 0
        assert isinstance(fn["returns"], list) and all(is_int(r) for r in fn["returns"])
        assert fn["returns"] == sorted(set(fn["returns"]))
        assert all(0 <= r < fn["size"] for r in fn["returns"]), fn["name"]
        assert isinstance(fn["traceable"], bool)
        if fn["traceable"]:
            assert fn["reason"] is None
            assert fn["returns"], fn["name"]
            assert is_int(fn["entry_site"]) and 0 <= fn["entry_site"] < fn["size"]
        else:
            untraceable += 1
            assert isinstance(fn["reason"], str) and fn["reason"] and "\n" not in fn["reason"]
            assert fn["entry_site"] is None or is_int(fn["entry_site"])
        assert is_int(fn["file_offset"])
    assert 0 < untraceable < len(functions) // 4
    # file_offset follows the PT_LOAD mapping (checked on a few functions: pyelftools is slow per call).
    for fn in functions[:: len(functions) // 7]:
        assert fn["file_offset"] == load_segment_file_offset(binary, fn["entry"]), fn["name"]


def test_json_values_of_a_known_function(binary):
    doc = funcs_json(binary, "main.work")
    [work] = doc["functions"]
    assert work["name"] == "main.work"
    assert work["traceable"] is True and work["reason"] is None
    assert len(work["returns"]) == 2
    assert work["entry_site"] > 0  # after the stack-check prologue
    assert work == [f for f in all_functions(binary) if f["name"] == "main.work"][0]


# --- text output ------------------------------------------------------------------------

ROW = re.compile(r"^0x([0-9a-f]{16}) +(\d+) +(\d+|-)  (.+?)(?:  \[not traceable: (.+)\])?$")


def parse_rows(lines: list[str]) -> list[tuple[int, int, int, str, str | None]]:
    rows = []
    for line in lines:
        m = ROW.match(line)
        assert m, f"unexpected row: {line!r}"
        rets = 0 if m.group(3) == "-" else int(m.group(3))
        rows.append((int(m.group(1), 16), int(m.group(2)), rets, m.group(4), m.group(5)))
    return rows


def json_rows(functions) -> list[tuple[int, int, int, str, str | None]]:
    return [(f["entry"], f["size"], len(f["returns"]), f["name"], f["reason"]) for f in functions]


def test_text_output_of_a_pattern(binary):
    code, out, err = run_gotrace("funcs", str(binary), "main.*")
    assert code == 0 and err == ""
    lines = out.splitlines()
    expected = funcs_json(binary, "main.*")["functions"]
    total = len(all_functions(binary))
    assert lines[0] == f"{binary}: go{VERSION} amd64, module example.com/service, {total} functions, {len(expected)} match main.*"
    assert lines[1].split() == ["ENTRY", "SIZE", "RETS", "FUNCTION"]
    # With a pattern, untraceable matches are listed too, with their reason.
    rows = parse_rows(lines[2:])
    assert rows == json_rows(expected)
    assert ("main.fail", "no return instruction (never returns)") in [(r[3], r[4]) for r in rows]


def test_text_output_hides_untraceable_unless_all(binary):
    functions = all_functions(binary)
    traceable = [f for f in functions if f["traceable"]]
    hidden = len(functions) - len(traceable)

    code, out, err = run_gotrace("funcs", str(binary))
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == (f"{binary}: go{VERSION} amd64, module example.com/service, {len(functions)} functions, all listed "
                        f"({hidden} not traceable hidden; --all shows them)")
    assert parse_rows(lines[2:]) == json_rows(traceable)

    code, out, err = run_gotrace("funcs", str(binary), "--all")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0] == f"{binary}: go{VERSION} amd64, module example.com/service, {len(functions)} functions, all listed"
    assert parse_rows(lines[2:]) == json_rows(functions)

    # With a pattern every match is listed anyway: --all says so instead of silently doing nothing.
    code, out, err = run_gotrace("funcs", str(binary), "main.*", "--all")
    code_plain, out_plain, _ = run_gotrace("funcs", str(binary), "main.*")
    assert code == code_plain == 0 and out.splitlines()[2:] == out_plain.splitlines()[2:]
    assert out.splitlines()[0] == out_plain.splitlines()[0] + (
        " (--all: with a pattern every match is listed, traceable or not, as without it)")


# --- patterns ---------------------------------------------------------------------------


def matching(binary, *patterns) -> set[str]:
    return set(names(funcs_json(binary, *patterns)))


def every_name(binary) -> list[str]:
    return [f["name"] for f in all_functions(binary)]


@pytest.mark.parametrize("build", ["binary", "stripped"])
def test_exact_name_with_parentheses_matches_only_itself(build, request):
    path = request.getfixturevalue(build)
    doc = funcs_json(path, "main.(*Server).handle")
    assert names(doc) == ["main.(*Server).handle"]
    assert names(funcs_json(path, "main.Request.Weight")) == ["main.Request.Weight"]


def test_glob_patterns(binary):
    everything = every_name(binary)
    assert matching(binary, "main.*") == {n for n in everything if n.startswith("main.")}
    assert len(matching(binary, "main.*")) >= 40
    assert matching(binary, "*Describe") == {"main.(*Base).Describe", "main.Wrapped.Describe",
                                              "main.(*Wrapped).Describe"}
    assert matching(binary, "*Describe") == {n for n in everything if n.endswith("Describe")}
    assert matching(binary, "main.fi?") == {"main.fib"}
    assert matching(binary, "main.wor?") == {"main.work"}
    assert matching(binary, "?ain.work") == {"main.work"}
    assert matching(binary, "main.(*Server).*") == {n for n in everything if n.startswith("main.(*Server).")}
    assert "main.(*Server).handle" in matching(binary, "main.(*Server).*")
    assert matching(binary, "main.Map[*]") == {"main.Map[go.shape.int]", "main.Map[go.shape.string]"}
    assert matching(binary, "main.Map[...]") == {"main.Map[go.shape.int]", "main.Map[go.shape.string]"}
    assert matching(binary, "*.(*Server).handle") == {"main.(*Server).handle"}


def test_several_patterns_give_the_union_in_entry_order(binary):
    doc = funcs_json(binary, "main.work", "main.w*", "main.fib")
    assert sorted(names(doc)) == ["main.fib", "main.work"]
    entries = [f["entry"] for f in doc["functions"]]
    assert entries == sorted(entries)


@pytest.mark.parametrize("pattern", [
    "main.(*Server).handl",   # a prefix is not a match
    "main.Ma[p]",             # brackets are literal, not a character class
    "main.+",                 # + is literal, not regex repetition
    "main.work|main.fib",     # | is literal, not alternation
    "main\\.work",            # backslash is literal
    "main.(.*)",              # no regex groups
    "MAIN.WORK",              # names are case-sensitive
])
def test_regex_syntax_is_literal(binary, pattern):
    proc = run_gotrace_process("funcs", str(binary), pattern)
    assert_one_line_error(proc, "no function matches", repr(pattern))


def test_typo_gets_a_suggestion(binary):
    proc = run_gotrace_process("funcs", str(binary), "main.wrok")
    line = assert_one_line_error(proc, "no function matches 'main.wrok'")
    assert re.search(r"did you mean [^?]*\bmain\.work\b", line)


def test_inlined_function_is_diagnosed(stripped):
    proc = run_gotrace_process("funcs", str(stripped), "main.tiny")
    assert_one_line_error(proc, "main.tiny is inlined at every call site")


# --- errors -------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    assert_one_line_error(run_gotrace_process("funcs", str(tmp_path / "nope"), "main.work"), "no such file")


def test_directory(tmp_path):
    assert_one_line_error(run_gotrace_process("funcs", str(tmp_path)), "is a directory")


def test_text_file(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("hello, this is not a program\n" * 20)
    assert_one_line_error(run_gotrace_process("funcs", str(path), "--json"), "not an ELF")


def test_empty_file(tmp_path):
    path = tmp_path / "empty"
    path.write_bytes(b"")
    assert_one_line_error(run_gotrace_process("funcs", str(path)), "not an ELF")


def test_non_go_elf():
    ls = shutil.which("ls") or "/bin/ls"
    assert_one_line_error(run_gotrace_process("funcs", ls), "not a Go binary")


@pytest.mark.parametrize("cut", ["64", "1024", "half"])
def test_truncated_go_binary(binary, tmp_path, cut):
    data = binary.read_bytes()
    size = len(data) // 2 if cut == "half" else int(cut)
    path = tmp_path / f"service-{cut}"
    path.write_bytes(data[:size])
    assert_one_line_error(run_gotrace_process("funcs", str(path), "main.work"), str(path), "truncated")
    assert_one_line_error(run_gotrace_process("funcs", str(path), "--json"), "truncated")


# pcHeader fields overwritten in a copy: (offset in the header, bytes, what the error says).
PCLNTAB_DAMAGE = {
    "magic": (0, b"\0\0\0\0", "no Go function table (pclntab) found"),
    "ptrsize": (7, b"\x04", "no Go function table (pclntab) found"),
    "nfunc": (8, struct.pack("<Q", 1 << 40), "corrupt or truncated Go function table"),
    "funcnameOff": (32, struct.pack("<Q", 1 << 33), "corrupt or truncated Go function table"),
    "pclnOff": (64, struct.pack("<Q", 1 << 33), "corrupt or truncated Go function table"),
}


@pytest.mark.parametrize("field", sorted(PCLNTAB_DAMAGE))
@pytest.mark.parametrize("build", ["binary", "stripped"])
def test_corrupt_pclntab(build, field, tmp_path, request):
    source = request.getfixturevalue(build)
    offset, blob, message = PCLNTAB_DAMAGE[field]
    header, _ = section_file_range(source, ".gopclntab")
    data = bytearray(source.read_bytes())
    data[header + offset:header + offset + len(blob)] = blob
    path = tmp_path / "service"
    path.write_bytes(data)
    assert_one_line_error(run_gotrace_process("funcs", str(path), "main.work"), str(path), message)
    assert_one_line_error(run_gotrace_process("funcs", str(path), "--json"), message)


def test_go_version_too_old(binary, tmp_path):
    """The build info's version string patched to go1.16.1 (same length, so the layout holds)."""
    start, size = section_file_range(binary, ".go.buildinfo")
    data = bytearray(binary.read_bytes())
    info = data[start:start + size]
    assert info.startswith(b"\xff Go buildinf:") and info[15] & 2  # inline strings (Go 1.18+)
    old = f"go{VERSION}".encode()
    assert info[32] == len(old) and info[33:33 + len(old)] == old
    new = b"go1.16.1"
    assert len(new) == len(old)
    data[start + 33:start + 33 + len(new)] = new
    path = tmp_path / "service"
    path.write_bytes(data)
    assert_one_line_error(run_gotrace_process("funcs", str(path), "main.work"), "built by go1.16.1", "Go 1.17 or newer")


@pytest.mark.parametrize("pattern, message", [
    ("", "empty function pattern"),
    ("   ", "empty function pattern"),
    ("zz((", "no function matches 'zz(('"),
    ("\u2603.snowman", "no function matches"),
])
def test_bad_patterns(binary, pattern, message):
    assert_one_line_error(run_gotrace_process("funcs", str(binary), pattern), message)


def test_missing_target():
    assert_one_line_error(run_gotrace_process("funcs"), "missing TARGET")
    assert_one_line_error(run_gotrace_process("funcs", "--json"), "missing TARGET")


def test_bad_option(binary):
    assert_one_line_error(run_gotrace_process("funcs", "--bogus", str(binary)), "--bogus", "gotrace funcs --help")
    assert_one_line_error(run_gotrace_process("funcs", "-p", "abc", "main.work"), "-p", "gotrace funcs --help")


def test_pid_that_does_not_exist():
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    assert not Path(f"/proc/{pid_max + 1}").exists()
    assert_one_line_error(run_gotrace_process("funcs", "-p", str(pid_max + 1), "main.work"), f"no process with pid {pid_max + 1}")


# --- success paths ------------------------------------------------------------------------


def test_python_m_gotrace_funcs(binary):
    proc = run_gotrace_process("funcs", str(binary), "main.*", "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert json.loads(proc.stdout) == funcs_json(binary, "main.*")

    proc = run_gotrace_process("funcs", str(binary), "main.work")
    assert proc.returncode == 0 and proc.stderr == ""
    assert proc.stdout.splitlines()[-1].split()[-1] == "main.work"


def test_pid_of_a_running_process(binary):
    proc = subprocess.Popen([str(binary), "-wait"], stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line == f"ready pid={proc.pid}\n"
        doc = funcs_json_pid(proc.pid, "main.work")
        assert doc["binary"].startswith(f"pid {proc.pid}")
        assert doc["go_version"] == f"go{VERSION}"
        assert doc["functions"] == funcs_json(binary, "main.work")["functions"]
    finally:
        proc.kill()
        proc.wait(timeout=10)


def funcs_json_pid(pid: int, *patterns: str) -> dict:
    code, out, err = run_gotrace("funcs", "-p", str(pid), *patterns, "--json")
    assert code == 0, err
    return json.loads(out)


def test_help_has_examples():
    proc = run_gotrace_process("funcs", "--help")
    assert proc.returncode == 0
    assert "Examples:" in proc.stdout
    assert "gotrace funcs ./server 'main.*'" in proc.stdout
