"""The struct layouts Python and probes/gotrace.h share: the C compiler's offsetof/sizeof against Python's formats.

Python packs capture plans and unpacks call records and histogram keys with
`struct` formats (gotrace.trace.args, gotrace.trace.latency); the BPF
programs use the C structs of probes/gotrace.h. A field added, moved or
resized on one side only would make every value wrong without an error, so
this test compiles a small host program that prints the C layout, and
compares it with the offsets and sizes the Python formats imply.
"""

from __future__ import annotations

import shutil
import struct
import subprocess

import pytest

from gotrace import header
from gotrace.trace import args as args_trace
from gotrace.trace import latency as latency_trace
from gotrace.trace import tracer as tracer_trace

# struct name -> its fields in order, as Python reads them (field name, struct format code of the field).
PYTHON_LAYOUTS = {
    "gt_arg_op": (args_trace.OP_STRUCT,
                  ["kind", "arg", "flags", "reserved", "dep", "dst", "size", "src", "len_src", "mul", "offset"]),
    "gt_arg_plan": (args_trace.PLAN_HEADER, ["nops", "base", "send", "flags"]),
    "gt_args_event": (args_trace.EVENT_HEADER, ["start_ns", "end_ns", "goid", "entry_ip", "tgid", "func_id"]),
    "gt_hist_key": (latency_trace.HIST_KEY, ["func_id", "bucket", "tgid"]),
    "gt_start_key": (latency_trace.START_KEY, ["goid", "tgid", "depth"]),
    "gt_start_val": (latency_trace.START_VAL, ["start_ns", "func_id", "reserved"]),
    "gt_exit_rec": (latency_trace.EXIT_REC, ["goid", "tgid", "reserved", "exit_ns", "seq"]),
    "gt_start_slot": (latency_trace.START_SLOT, ["tag", "key.goid", "key.tgid", "key.depth", "val.start_ns",
                                                 "val.func_id", "val.reserved", "hash_added", "hash_deleted"]),
    "gt_slot_reaped": (latency_trace.SLOT_REAPED, ["tag", "start_ns", "hash_removed"]),
    "gt_config": (tracer_trace.CONFIG_STRUCT, ["target_tgid", "nfuncs", "goid_offset", "stack_hi_offset", "slow_ns",
                                               "slow_rate", "stack_depth", "by", "start_slot_mask"]),
    "gt_caller_key": (latency_trace.CALLER_KEY, ["func_id", "bucket", "caller"]),
    "gt_slow_event": (latency_trace.SLOW_EVENT_HEADER,
                      ["end_ns", "latency_ns", "goid", "entry_ip", "tgid", "func_id", "nframes", "reserved"]),
}
# Whole sizes Python relies on: a plan is the header then GT_ARGS_MAX_OPS operations; an event is the
# header then its data.
SIZES = {
    "gt_arg_plan": args_trace.PLAN_HEADER.size + args_trace.OP_STRUCT.size * header.constant("GT_ARGS_MAX_OPS"),
    "gt_args_event": args_trace.EVENT_HEADER.size + header.constant("GT_EVENT_DATA"),
    "gt_arg_op": args_trace.OP_STRUCT.size,
    "gt_hist_key": latency_trace.HIST_KEY.size,
    "gt_start_key": 16,
    "gt_start_val": 16,
    "gt_exit_rec": latency_trace.EXIT_REC.size,
    "gt_start_slot": latency_trace.START_SLOT.size,
    "gt_slot_reaped": latency_trace.SLOT_REAPED.size,
    "gt_config": tracer_trace.CONFIG_STRUCT.size,
    "gt_caller_key": latency_trace.CALLER_KEY.size,
    "gt_slow_event": latency_trace.SLOW_EVENT_HEADER.size + 8 * header.constant("GT_SLOW_MAX_DEPTH"),
}
TRAILING = {"gt_args_event": ["data"], "gt_arg_plan": ["ops"], "gt_slow_event": ["pcs"]}


def python_offsets(fmt: struct.Struct, fields: list[str]) -> dict[str, tuple[int, int]]:
    """(offset, size) of each field of a little-endian, unpadded format."""
    out, at = {}, 0
    codes = fmt.format.lstrip("<")
    assert len(codes) == len(fields), (fmt.format, fields)
    for code, name in zip(codes, fields):
        size = struct.calcsize("<" + code)
        out[name] = (at, size)
        at += size
    return out


@pytest.fixture(scope="module")
def c_layouts(tmp_path_factory) -> dict[str, dict[str, tuple[int, int]]]:
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "a host C compiler (gcc) is needed to read the header's layouts"
    lines = ['#include <stdio.h>', '#include <stddef.h>', '#include <linux/types.h>',
             '#define GT_NO_BUCKET_CODE', '#include "gotrace.h"', 'int main(void) {']
    for name, (_, fields) in PYTHON_LAYOUTS.items():
        for field in fields + TRAILING.get(name, []):
            lines.append(f'    printf("{name} {field} %zu %zu\\n", offsetof(struct {name}, {field}), '
                         f'sizeof(((struct {name} *)0)->{field}));')
        lines.append(f'    printf("{name} __size__ %zu 0\\n", sizeof(struct {name}));')
    lines += ["    return 0;", "}"]
    work = tmp_path_factory.mktemp("layouts")
    (work / "layouts.c").write_text("\n".join(lines) + "\n")
    subprocess.run([cc, "-Wall", "-Werror", f"-I{header.PROBES_DIR}", "-o", str(work / "layouts"),
                    str(work / "layouts.c")], check=True, capture_output=True)
    out = subprocess.run([str(work / "layouts")], check=True, capture_output=True, text=True).stdout
    layouts: dict[str, dict[str, tuple[int, int]]] = {}
    for line in out.splitlines():
        struct_name, field, offset, size = line.split()
        layouts.setdefault(struct_name, {})[field] = (int(offset), int(size))
    return layouts


@pytest.mark.parametrize("name", sorted(PYTHON_LAYOUTS))
def test_python_format_matches_the_c_struct(c_layouts, name):
    fmt, fields = PYTHON_LAYOUTS[name]
    c = c_layouts[name]
    assert {f: c[f] for f in fields} == python_offsets(fmt, fields)
    assert c["__size__"][0] == SIZES[name]
    for trailing in TRAILING.get(name, []):  # buffers start right where Python's header ends
        assert c[trailing][0] >= fmt.size


def test_trailing_buffers_are_where_python_slices_them(c_layouts):
    event = c_layouts["gt_args_event"]
    assert event["data"] == (args_trace.EVENT_HEADER.size, header.constant("GT_EVENT_DATA"))
    assert c_layouts["gt_arg_plan"]["ops"] == (args_trace.PLAN_HEADER.size,
                                               args_trace.OP_STRUCT.size * header.constant("GT_ARGS_MAX_OPS"))
    assert c_layouts["gt_slow_event"]["pcs"] == (latency_trace.SLOW_EVENT_HEADER.size,
                                                 8 * header.constant("GT_SLOW_MAX_DEPTH"))


def test_the_check_itself_sees_a_moved_field():
    """A Python format with two fields swapped in size must not match (the comparison can fail)."""
    wrong = python_offsets(struct.Struct("<BBBBHHHHIHi"), PYTHON_LAYOUTS["gt_arg_op"][1])
    assert wrong != python_offsets(args_trace.OP_STRUCT, PYTHON_LAYOUTS["gt_arg_op"][1])
