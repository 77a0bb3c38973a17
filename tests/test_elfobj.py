"""gotrace.bpf.elfobj and gotrace.bpf.compiler: the probes compile with plain clang and no kernel headers, for both architectures, and the loader reads exactly what LLVM's own tools read in the objects.

No root needed. The objects are compiled here the way setup.py compiles
them. LLVM's llvm-objdump is the independent reader: the sequence of maps
each program's relocations name must be the sequence of map references the
loader made. The map layouts are checked against the constants of gotrace.h
and the structs Python packs (the C compiler's sizeof, not ours). Objects
the loader cannot load faithfully (global data, non-inlined calls, no
license, not BPF) are refused with a reason.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from gotrace import header
from gotrace.trace.latency import CALLER_KEY, HIST_KEY
from gotrace.bpf import compiler, elfobj
from gotrace.bpf.image import map_references
from gotrace.trace import args as args_tracer
from gotrace.trace.tracer import CONFIG_STRUCT

pytestmark = pytest.mark.skipif(compiler.find_clang() is None, reason="clang is not installed (scripts/install)")

PROGRAMS = {"latency": {"gt_entry", "gt_return", "gt_goexit"}, "latency_stacks": {"gt_entry", "gt_return", "gt_goexit"},
            "count": {"gt_count_entry"},
            "args128": {"gt_args_entry", "gt_args_return"}}
OBJDUMP = shutil.which("llvm-objdump") or shutil.which("llvm-objdump-14")

# Byte offsets in the probe's context of the goroutine register and SP (uapi/asm/ptrace.h):
# x86_64 pt_regs: r14 is the 2nd word, sp the 20th; arm64 user_pt_regs: regs[28], then sp after regs[31].
CTX_OFFSETS = {"amd64": {8, 152}, "arm64": {224, 248}}


@pytest.fixture(scope="module")
def objects(tmp_path_factory) -> dict[tuple[str, str], Path]:
    out = tmp_path_factory.mktemp("objects")
    built = {}
    for program in PROGRAMS:
        for arch in compiler.ARCHES:
            path = out / compiler.object_name(program, arch)
            result = compiler.compile_program(program, header.CHECKOUT_PROBES_DIR, arch, path)
            assert result.peak_rss_kb > 0
            built[program, arch] = path
    return built


@pytest.mark.parametrize("arch", compiler.ARCHES)
@pytest.mark.parametrize("program", PROGRAMS)
def test_object_has_its_programs_maps_and_license(objects, program, arch):
    image = elfobj.read_object_file(objects[program, arch])
    assert set(image.programs) == PROGRAMS[program]
    assert image.license == "GPL"
    names = [spec.name for spec in image.maps]
    assert len(names) == len(set(names)) and "gt_config" in names
    for insns in image.programs.values():
        assert all(0 <= index < len(image.maps) for _, index in map_references(insns))


@pytest.mark.skipif(OBJDUMP is None, reason="llvm-objdump is not installed")
@pytest.mark.parametrize("arch", compiler.ARCHES)
@pytest.mark.parametrize("program", PROGRAMS)
def test_map_references_are_the_maps_llvm_objdump_sees_relocated(objects, program, arch):
    image = elfobj.read_object_file(objects[program, arch])
    listing = subprocess.run([OBJDUMP, "-dr", str(objects[program, arch])], capture_output=True, text=True,
                             check=True).stdout
    relocated: dict[str, list[str]] = {}
    current = None
    for line in listing.splitlines():
        function = re.match(r"^[0-9a-f]+ <(gt_\w+)>:", line)
        if function:
            current = function.group(1)
            relocated[current] = []
        reloc = re.search(r"R_BPF_64_64\s+(\w+)", line)
        if reloc:
            relocated[current].append(reloc.group(1))
    assert set(relocated) == set(image.programs)
    for name, insns in image.programs.items():
        ours = [image.maps[index].name for _, index in map_references(insns)]
        assert ours == relocated[name], name
        assert ours  # every program reads gt_config at least


@pytest.mark.skipif(OBJDUMP is None, reason="llvm-objdump is not installed")
@pytest.mark.parametrize("arch", compiler.ARCHES)
def test_each_arch_reads_its_own_pt_regs_layout(objects, arch):
    """The one compile-time setting: where g and SP are in the probe's context."""
    listing = subprocess.run([OBJDUMP, "-d", "--no-show-raw-insn", str(objects["latency", arch])],
                             capture_output=True, text=True, check=True).stdout
    body = listing.split("<gt_entry>:", 1)[1].split("Disassembly of section", 1)[0]
    ctx = re.search(r"\d+:\s+(r\d+) = r1\n", body).group(1)  # where the program keeps its context
    read = {int(n) for n in re.findall(rf"= \*\(u64 \*\)\({ctx} \+ (\d+)\)", body)}
    assert CTX_OFFSETS[arch] <= read
    other = next(a for a in compiler.ARCHES if a != arch)
    assert not CTX_OFFSETS[other] <= read


def test_map_layouts_are_those_of_gotrace_h_and_of_what_python_packs(objects, tmp_path):
    latency = {spec.name: spec for spec in elfobj.read_object_file(objects["latency", "amd64"]).maps}
    args = {spec.name: spec for spec in elfobj.read_object_file(objects["args128", "amd64"]).maps}
    c = header.constant
    assert (latency["gt_config"].map_type, latency["gt_config"].value_size, latency["gt_config"].max_entries) == \
        (2, CONFIG_STRUCT.size, 1)
    assert (latency["gt_starts"].map_type, latency["gt_starts"].key_size, latency["gt_starts"].max_entries) == \
        (1, 16, c("GT_START_ENTRIES"))  # a plain hash, not an LRU: no start is dropped without a trace
    assert (latency["gt_hist"].map_type, latency["gt_hist"].key_size, latency["gt_hist"].flags) == \
        (5, HIST_KEY.size, 1)
    assert (latency["gt_stats"].map_type, latency["gt_stats"].max_entries) == (6, c("GT_STAT_N"))
    # --slow and --by caller are only in the stack build: plain latency carries none of their maps
    stacks = {spec.name: spec for spec in elfobj.read_object_file(objects["latency_stacks", "amd64"]).maps}
    extra = {"gt_slow_events", "gt_slow_rate", "gt_slow_stats", "gt_caller_hist", "gt_entry_ips"}
    assert set(stacks) == set(latency) | extra and not extra & set(latency)
    slow_ring = stacks["gt_slow_events"]
    assert (slow_ring.map_type, slow_ring.max_entries) == (27, c("GT_SLOW_RINGBUF_PAGES") * 4096)
    assert (stacks["gt_caller_hist"].map_type, stacks["gt_caller_hist"].key_size) == (5, CALLER_KEY.size)
    ring = args["gt_args_events"]
    assert (ring.map_type, ring.key_size, ring.value_size, ring.max_entries) == \
        (27, 0, 0, c("GT_ARGS_RINGBUF_PAGES") * 4096)
    plan_size = args_tracer.PLAN_HEADER.size + c("GT_ARGS_MAX_OPS") * args_tracer.OP_STRUCT.size
    assert args["gt_arg_plans"].value_size == plan_size == len(args_tracer.pack_plan([]))
    event_size = args_tracer.EVENT_HEADER.size + c("GT_EVENT_DATA")
    assert args["gt_args_event_scratch"].value_size == event_size


# -- objects the loader must refuse -------------------------------------------------------

PRELUDE = '#define GT_CFG_ARCH GT_ARCH_AMD64\n#include "bpf_abi.h"\n'


def compile_c(tmp_path: Path, text: str) -> bytes:
    source = tmp_path / "t.bpf.c"
    source.write_text(PRELUDE + text)
    for name in ("bpf_abi.h", "gotrace.h"):
        shutil.copy(header.CHECKOUT_PROBES_DIR / name, tmp_path / name)
    output = tmp_path / "t.o"
    subprocess.run([compiler.find_clang(), *compiler.CFLAGS, f"-I{tmp_path}", "-c", str(source), "-o", str(output)],
                   check=True, capture_output=True)
    return output.read_bytes()


LICENSE = 'char _license[] SEC("license") = "GPL";\n'
MAP = "GT_MAP(m, BPF_MAP_TYPE_ARRAY, 4, 8, 4, 0);\n"


def test_a_minimal_object_loads_with_its_reference_patched(tmp_path):
    image = elfobj.read_object(compile_c(tmp_path, MAP + LICENSE + (
        'SEC("uprobe/p") int p(void *ctx) { __u32 k = 1; __u64 *v = bpf_map_lookup_elem(&m, &k); '
        'return v ? (int)*v : 0; }\n')))
    assert [spec.name for spec in image.maps] == ["m"]
    (offset, index), = map_references(image.programs["p"])
    assert index == 0
    code, regs = struct.unpack_from("<BB", image.programs["p"], offset)
    assert code == 0x18 and regs >> 4 == 1  # ld_imm64 of a map (BPF_PSEUDO_MAP_FD)


@pytest.mark.parametrize("text,reason", [
    ('__u64 table[4] = {1, 2, 3, 4};\nSEC("uprobe/p") int p(void *ctx) '
     '{ return table[bpf_get_current_pid_tgid() & 3]; }\n', "global data"),
    ('static __attribute__((noinline)) int helper(int x) { return x * (int)bpf_ktime_get_ns(); }\n'
     'SEC("uprobe/p") int p(void *ctx) { return helper(3); }\n', "inline it"),
])
def test_objects_needing_more_than_maps_are_refused_with_the_reason(tmp_path, text, reason):
    with pytest.raises(ValueError, match=reason):
        elfobj.read_object(compile_c(tmp_path, LICENSE + text))


def test_object_without_a_license_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no license"):
        elfobj.read_object(compile_c(tmp_path, 'SEC("uprobe/p") int p(void *ctx) { return 0; }\n'))


@pytest.mark.parametrize("data", [b"", b"\x7fELF\x02\x01\x01" + b"\0" * 9, b"not an object at all"])
def test_garbage_is_a_value_error(data):
    with pytest.raises(ValueError):
        elfobj.read_object(data)


def test_an_object_for_another_machine_is_refused():
    with pytest.raises(ValueError, match="not a little-endian 64-bit BPF object"):
        elfobj.read_object(Path("/bin/true").read_bytes())
