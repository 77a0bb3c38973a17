"""runtime.g offsets: the per-version table agrees with DWARF of real builds; unknown versions are refused."""

from __future__ import annotations

import pytest

from support.dwarf_programs import ARCHES, TOOLCHAINS, build_snippet, version_tuple
from gotrace.binary.buildinfo import read_buildinfo
from gotrace.binary.dwarfinfo import DwarfInfo
from gotrace.binary.elffile import ElfImage
from gotrace.errors import BinaryError
from gotrace.binary.runtime_offsets import RuntimeOffsets, runtime_offsets, table_goid_offset

# What design.md section 4 states, independent of the module's own table.
EXPECTED_GOID = {17: 152, 18: 152, 19: 152, 20: 152, 21: 152, 22: 152,
                 23: 160, 24: 160, 25: 152, 26: 152, 27: 152}


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("version", TOOLCHAINS)
def test_table_matches_dwarf_of_real_build(version, arch):
    binary = build_snippet("minimal", version, arch)
    with ElfImage(binary) as elf:
        go_version = read_buildinfo(elf).version_tuple
    assert go_version[:2] == version_tuple(version)[:2]

    with DwarfInfo.open(binary) as dwarf:
        goid = dwarf.struct_member_offset("runtime.g", "goid")
        stack_hi = dwarf.struct_member_offset("runtime.g", "stack.hi")
        assert dwarf.go_version[:2] == go_version[:2]
        from_dwarf = runtime_offsets(go_version, dwarf)

    assert goid == EXPECTED_GOID[go_version[1]], f"Go {version} {arch}: DWARF says goid at {goid}"
    assert stack_hi == 8
    assert table_goid_offset(go_version) == goid
    assert from_dwarf == RuntimeOffsets(goid=goid, stack_hi=8, source="dwarf")
    assert runtime_offsets(go_version, None) == RuntimeOffsets(goid=goid, stack_hi=8, source="table")


def test_binary_without_dwarf_uses_table():
    binary = build_snippet("minimal", "1.23.9", "amd64", ldflags="-s -w")
    assert DwarfInfo.open(binary) is None
    assert runtime_offsets((1, 23, 9), None) == RuntimeOffsets(goid=160, stack_hi=8, source="table")


@pytest.mark.parametrize("minor, goid", sorted(EXPECTED_GOID.items()))
def test_table_per_version(minor, goid):
    assert runtime_offsets((1, minor, 0), None) == RuntimeOffsets(goid, 8, "table")


def test_newer_version_without_dwarf_is_refused_with_advice():
    with pytest.raises(BinaryError) as info:
        runtime_offsets((1, 28, 0), None)
    message = str(info.value)
    assert "go1.28.0 is newer than gotrace knows" in message
    assert "DWARF" in message and "upgrade gotrace" in message
    assert "\n" not in message


def test_older_version_is_refused():
    with pytest.raises(BinaryError, match="older than Go 1.17"):
        runtime_offsets((1, 16, 15), None)


class _FakeDwarf:
    """Stands in for DwarfInfo: a runtime whose g has other offsets than the table."""

    def __init__(self, members):
        self.members = members

    def struct_member_offset(self, struct_name, member):
        return self.members.get((struct_name, member))


def test_dwarf_wins_over_table_and_covers_unknown_versions():
    dwarf = _FakeDwarf({("runtime.g", "goid"): 200, ("runtime.g", "stack.hi"): 8})
    assert runtime_offsets((1, 23, 0), dwarf) == RuntimeOffsets(200, 8, "dwarf")
    assert runtime_offsets((1, 30, 0), dwarf) == RuntimeOffsets(200, 8, "dwarf")


def test_dwarf_without_the_members_falls_back_to_table():
    assert runtime_offsets((1, 25, 5), _FakeDwarf({})) == RuntimeOffsets(152, 8, "table")
