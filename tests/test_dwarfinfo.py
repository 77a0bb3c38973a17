"""DWARF reading: opening, struct offsets, and signatures with the type model, on real builds."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from support.dwarf_programs import ARCHES, TOOLCHAINS, build_snippet
from gotrace.binary.dwarfinfo import DwarfInfo, package_of, takes_dictionary
from gotrace.errors import BinaryError
from gotrace.binary.gotypes import Kind


@pytest.fixture(scope="module")
def dwarf125():
    with DwarfInfo.open(build_snippet("abicases", "1.25.5", "amd64")) as dwarf:
        yield dwarf


def test_open_without_dwarf_gives_none():
    assert DwarfInfo.open(build_snippet("minimal", "1.23.9", "amd64", ldflags="-s -w")) is None


def test_open_rejects_files_that_are_not_elf(tmp_path):
    junk = tmp_path / "notelf"
    junk.write_bytes(b"#!/bin/sh\necho hi\n" * 10)
    with pytest.raises(BinaryError, match="Go executable"):
        DwarfInfo.open(junk)
    with pytest.raises(BinaryError, match="cannot open"):
        DwarfInfo.open(tmp_path / "missing")


def test_open_takes_a_file_object_and_leaves_it_open():
    path = build_snippet("minimal", "1.25.5", "amd64")
    with open(path, "rb") as file:
        dwarf = DwarfInfo.open(file)
        assert dwarf.struct_member_offset("runtime.g", "goid") == 152
        dwarf.close()
        assert not file.closed


@pytest.mark.parametrize("version, dwarf_version", [("1.19", 4), ("1.24.11", 4), ("1.25.5", 5), ("1.27.3", 5)])
def test_compressed_dwarf_4_and_5(version, dwarf_version):
    path = build_snippet("minimal", version, "amd64")
    with DwarfInfo.open(path) as dwarf:
        assert dwarf.producer.startswith("Go cmd/compile go" + version)
        assert dwarf._dwarf.get_CU_at(0)["version"] == dwarf_version
        assert dwarf.struct_member_offset("runtime.g", "stack.hi") == 8
        assert dwarf.struct_member_offset("runtime.stack", "lo") == 0


@pytest.mark.parametrize("flag, section", [("--compress-debug-sections=zlib-gnu", ".zdebug_info"),
                                           ("--decompress-debug-sections", ".debug_info")])
def test_old_style_zdebug_and_uncompressed_sections(tmp_path, flag, section):
    # Go before 1.19 wrote .zdebug_* sections; objcopy rewrites a build that way.
    if shutil.which("objcopy") is None:
        pytest.skip("objcopy (binutils) not installed")
    copy = tmp_path / "minimal"
    subprocess.run(["objcopy", flag, str(build_snippet("minimal", "1.21.13", "amd64")), str(copy)], check=True)
    sections = subprocess.run(["readelf", "-S", str(copy)], capture_output=True, text=True).stdout
    assert section in sections
    with DwarfInfo.open(copy) as dwarf:
        assert dwarf.struct_member_offset("runtime.g", "goid") == 152
        assert [p.name for p in dwarf.function_signature("main.main").params] == []


def test_damaged_dwarf_is_a_one_line_binary_error_and_offsets_fall_back_to_table(tmp_path):
    if shutil.which("objcopy") is None:
        pytest.skip("objcopy (binutils) not installed")
    from elftools.elf.elffile import ELFFile

    from gotrace.binary.runtime_offsets import RuntimeOffsets, runtime_offsets

    damaged = tmp_path / "minimal"
    subprocess.run(["objcopy", "--decompress-debug-sections",
                    str(build_snippet("minimal", "1.25.5", "amd64")), str(damaged)], check=True)
    with open(damaged, "rb") as file:
        info_offset = ELFFile(file).get_section_by_name(".debug_info")["sh_offset"]
    with open(damaged, "r+b") as file:
        file.seek(info_offset + 4)  # the first CU's DWARF version
        file.write(b"\x63\x00")
    with DwarfInfo.open(damaged) as dwarf:
        with pytest.raises(BinaryError) as info:
            dwarf.struct_member_offset("runtime.g", "goid")
        assert "DWARF debug info is damaged" in str(info.value) and "\n" not in str(info.value)
        assert runtime_offsets((1, 25, 5), dwarf) == RuntimeOffsets(152, 8, "table")


def test_struct_member_offset_absent_cases(dwarf125):
    assert dwarf125.struct_member_offset("runtime.g", "no_such_member") is None
    assert dwarf125.struct_member_offset("runtime.no_such_type", "goid") is None
    assert dwarf125.struct_member_offset("runtime.g", "goid.deeper") is None  # goid is not a struct
    assert dwarf125.struct_member_offset("main.Pair", "C") == 16


def test_signature_types(dwarf125):
    sig = dwarf125.function_signature("main.Args")
    assert [(p.name, p.type.name, p.type.kind, p.type.size) for p in sig.params] == [
        ("i", "int", Kind.INT, 8),
        ("s", "string", Kind.STRING, 16),
        ("sl", "[]uint8", Kind.SLICE, 24),
        ("f", "float64", Kind.FLOAT64, 8),
        ("p", "main.Pair", Kind.STRUCT, 32),
        ("e", "error", Kind.INTERFACE, 16),
        ("arr", "[2]int", Kind.ARRAY, 16),
    ]
    assert [(r.name, r.type.name, r.is_result) for r in sig.results] == [("~r0", "int", True), ("~r1", "string", True)]
    assert sig.go_version == (1, 25, 5) and sig.complete
    sl, p, e, arr = sig.params[2].type, sig.params[4].type, sig.params[5].type, sig.params[6].type
    assert sl.elem.kind is Kind.UINT8
    assert [(f.name, f.offset, f.type.kind) for f in p.fields] == [("A", 0, Kind.INT64), ("B", 8, Kind.FLOAT64),
                                                                   ("C", 16, Kind.STRING)]
    assert p.align == 8
    assert e.is_error and e.empty is False
    assert (arr.length, arr.elem.kind, arr.align) == (2, Kind.INT, 8)


def test_signature_kinds_of_reference_types(dwarf125):
    sig = dwarf125.function_signature("main.(*T).Method")
    kinds = {p.name: p.type for p in sig.params}
    assert kinds["t"].kind is Kind.POINTER and kinds["t"].elem.name == "main.T"
    assert (kinds["a"].kind, kinds["a"].size, kinds["a"].align) == (Kind.INT8, 1, 1)
    assert (kinds["b"].kind, kinds["b"].align) == (Kind.UINT16, 2)
    assert (kinds["c"].kind, kinds["c"].size, kinds["c"].align) == (Kind.COMPLEX128, 16, 8)
    assert kinds["m"].kind is Kind.MAP and kinds["m"].key.kind is Kind.STRING and kinds["m"].elem.kind is Kind.INT
    assert kinds["ch"].kind is Kind.CHAN and kinds["ch"].elem.kind is Kind.INT and kinds["ch"].size == 8
    assert kinds["fn"].kind is Kind.FUNC and kinds["fn"].size == 8
    assert kinds["x"].kind is Kind.INTERFACE and kinds["x"].empty is True
    assert [(r.name, r.type.kind) for r in sig.results] == [("ok", Kind.BOOL), ("err", Kind.INTERFACE)]


def test_structs_small_empty_recursive_and_unsafe(dwarf125):
    sig = dwarf125.function_signature("main.Structs")
    t = {p.name: p.type for p in sig.params}
    assert [(f.name, f.offset) for f in t["s"].fields] == [("X", 0), ("Y", 2), ("Z", 4), ("W", 8)]
    assert (t["s"].size, t["s"].align) == (12, 4)
    assert (t["e"].kind, t["e"].size, t["e"].align) == (Kind.STRUCT, 0, 1)
    node = t["n"].elem
    assert node.fields[0].name == "Next" and node.fields[0].type.elem is node  # recursion resolved, not copied
    assert t["u"].kind is Kind.UNSAFE_POINTER
    assert t["o"].fields[0].type.length == 1


@pytest.mark.parametrize("version", TOOLCHAINS)
def test_unnamed_and_blank_parameters(version):
    with DwarfInfo.open(build_snippet("abicases", version, "amd64")) as dwarf:
        sig = dwarf.function_signature("main.Blank")
        results = [r.name for r in sig.results]
        params = [p.name for p in sig.params]
        if dwarf.go_version[:2] >= (1, 22):
            assert params == ["~p0", "b", "~p2", "c"] and results == ["~r0", "named", "~r2"]
            assert sig.complete
        else:  # older compilers drop `_` parameters and name blank results ~b<n>
            assert params == ["b", "c"] and results == ["~b0", "named", "~b2"]
            assert not sig.complete


@pytest.mark.parametrize("version", TOOLCHAINS)
def test_generic_shape_instantiation_gets_its_dictionary_first(version):
    with DwarfInfo.open(build_snippet("abicases", version, "amd64")) as dwarf:
        for shape, kind in (("int", Kind.INT), ("float64", Kind.FLOAT64)):
            sig = (dwarf.function_signature(f"main.Gen[go.shape.{shape}]")
                   or dwarf.function_signature(f"main.Gen[go.shape.{shape}_0]"))
            assert [(p.name, p.hidden) for p in sig.params] == [(".dict", True), ("a", False), ("b", False)]
            assert sig.params[1].type.kind is kind and sig.params[2].type.elem.kind is kind


def test_inlined_function_with_out_of_line_copy_keeps_its_unnamed_results(dwarf125):
    sig = dwarf125.function_signature("main.Inlinable")
    assert [p.name for p in sig.params] == ["a", "s"]
    assert [(r.name, r.type.name) for r in sig.results] == [("~r0", "int"), ("~r1", "error")]
    assert sig.complete


def test_unknown_function_is_none(dwarf125):
    assert dwarf125.function_signature("main.DoesNotExist") is None
    assert dwarf125.function_signature("nosuchpkg.F") is None


def test_runtime_function_found_in_its_package(dwarf125):
    sig = dwarf125.function_signature("runtime.casgstatus")
    assert [(p.name, p.type.name) for p in sig.params] == [("gp", "*runtime.g"), ("oldval", "uint32"),
                                                          ("newval", "uint32")]


@pytest.mark.parametrize("name, package", [
    ("main.main", "main"),
    ("net/http.(*Server).Serve", "net/http"),
    ("github.com/caddyserver/caddy/v2.(*App).Start", "github.com/caddyserver/caddy/v2"),
    ("gopkg.in/yaml%2ev3.Unmarshal", "gopkg.in/yaml%2ev3"),
    ("example.com/m/pkg.F[go.shape.struct { example.com/x.A int }]", "example.com/m/pkg"),
    ("main.Gen[...]", "main"),
])
def test_package_of(name, package):
    assert package_of(name) == package


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("version", TOOLCHAINS)
def test_assembly_functions_have_no_signature(version, arch):
    # DWARF lists no arguments for assembly: an empty signature would be a wrong one.
    with DwarfInfo.open(build_snippet("abicases", version, arch)) as dwarf:
        assert dwarf.subprogram_die("runtime.memequal") is not None
        assert dwarf.function_signature("runtime.memequal") is None
        assert dwarf.function_signature("main.Args") is not None


@pytest.mark.parametrize("name, expected", [
    ("main.Gen[go.shape.int]", True),
    ("main.Gen[go.shape.int_0]", True),
    ("main.Gen[...]", True),
    ("pkg.(*T[go.shape.int]).M", True),
    ("pkg.T[go.shape.string].M", True),
    ("pkg.(*T[go.shape.int]).M.func1", False),
    ("pkg.F[go.shape.int].func1", False),
    ("pkg.F[go.shape.int].gowrap2", False),
    ("pkg.F[go.shape.int].func1.1", False),
    ("type:.eq.pkg.T[go.shape.int]", False),
    ("main.Args", False),
    ("pkg.F[int]", False),  # a fully instantiated name in .symtab only: not a shape
])
def test_takes_dictionary(name, expected):
    assert takes_dictionary(name) is expected
