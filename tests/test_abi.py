"""Register ABI assignment: the spec's rules by hand, and agreement with the Go compiler on real builds.

The compiler checks use two independent witnesses: the DWARF location of
each parameter at the function's entry (where the compiler says the value
arrived), and pclntab's `_func.args` (the size of the caller-reserved
argument area: stack arguments, stack results and spill slots).
"""

from __future__ import annotations

import struct

import pytest
from elftools.dwarf.dwarf_expr import DWARFExprParser
from elftools.dwarf.locationlists import BaseAddressEntry, LocationEntry, LocationParser

from support.dwarf_programs import ABI_CASE_FUNCTIONS, ARCHES, TOOLCHAINS, build_snippet
from gotrace.capture.abi import AMD64, ArchABI, Location, arg_width, assign
from gotrace.binary.dwarfinfo import DwarfInfo
from gotrace.binary.elffile import ElfImage
from gotrace.errors import BinaryError
from gotrace.binary.gotypes import (
    Kind, Param, Signature, array_of, basic, interface_type, pointer_to, slice_of, string_type,
    struct_of,
)
from gotrace.binary.pclntab import Pclntab

INT = basic(Kind.INT)
UINT8 = basic(Kind.UINT8)
UINTPTR = basic(Kind.UINTPTR)
FLOAT64 = basic(Kind.FLOAT64)
PAIR = struct_of("main.Pair", [("A", basic(Kind.INT64)), ("B", FLOAT64), ("C", string_type())])


def sig(params, results=()):
    return Signature(
        "f",
        tuple(Param(name, t) for name, t in params),
        tuple(Param(name, t, is_result=True) for name, t in results),
    )


def where(value_location):
    """A value's parts as (path, register or stack offset, size)."""
    return [(p.path, p.location.reg if p.location.kind != "stack" else p.location.stack_offset, p.size)
            for p in value_location.parts]


DESIGN_EXAMPLE = sig(
    [("i", INT), ("s", string_type()), ("sl", slice_of(UINT8)), ("f", FLOAT64), ("p", PAIR),
     ("e", interface_type("error")), ("arr", array_of(INT, 2))],
    [("~r0", INT), ("~r1", string_type())],
)


def test_design_example_amd64():
    params, results = assign(DESIGN_EXAMPLE, "amd64")
    assert [where(v) for v in params] == [
        [("i", "RAX", 8)],
        [("s.ptr", "RBX", 8), ("s.len", "RCX", 8)],
        [("sl.ptr", "RDI", 8), ("sl.len", "RSI", 8), ("sl.cap", "R8", 8)],
        [("f", "X0", 8)],
        [("p.A", "R9", 8), ("p.B", "X1", 8), ("p.C.ptr", "R10", 8), ("p.C.len", "R11", 8)],
        # e needs two registers, none are left: the whole interface goes to the stack.
        [("e", 8, 16)],
        [("arr", 24, 16)],
    ]
    assert [where(v) for v in results] == [[("~r0", "RAX", 8)], [("~r1.ptr", "RBX", 8), ("~r1.len", "RCX", 8)]]
    assert [p.offset for p in params[4].parts] == [0, 8, 16, 24]
    assert params[3].in_float_regs and not params[3].on_stack and params[5].on_stack
    # stack args 32 + spill of i, s, sl, f, p (8+16+24+8+32)
    assert arg_width(DESIGN_EXAMPLE, "amd64") == 120


def test_design_example_arm64_has_more_registers():
    params, _ = assign(DESIGN_EXAMPLE, "arm64")
    assert where(params[4]) == [("p.A", "R6", 8), ("p.B", "F1", 8), ("p.C.ptr", "R7", 8), ("p.C.len", "R8", 8)]
    assert where(params[5]) == [("e.itab", "R9", 8), ("e.data", "R10", 8)]
    assert where(params[6]) == [("arr", 8, 16)]
    assert arg_width(DESIGN_EXAMPLE, "aarch64") == 120


def test_spec_example_with_ten_registers():
    # abi-internal.md's example: f(a1 uint8, a2 [2]uintptr, a3 uint8)
    # (r1 struct { x uintptr; y [2]uintptr }, r2 string) with registers R0-R9.
    ten = ArchABI("spec", tuple(f"R{i}" for i in range(10)), (), args_offset=0)
    r1 = struct_of("r1", [("x", UINTPTR), ("y", array_of(UINTPTR, 2))])
    spec = sig([("a1", UINT8), ("a2", array_of(UINTPTR, 2)), ("a3", UINT8)],
               [("r1", r1), ("r2", string_type())])
    params, results = assign(spec, ten)
    assert [where(v) for v in params] == [[("a1", "R0", 1)], [("a2", 0, 16)], [("a3", "R1", 1)]]
    assert [where(v) for v in results] == [[("r1", 16, 24)], [("r2.ptr", "R0", 8), ("r2.len", "R1", 8)]]
    # a2, r1.x, r1.y, a1Spill, a3Spill, 6 bytes of padding
    assert arg_width(spec, ten) == 48


def test_value_that_does_not_fit_goes_whole_to_stack_and_later_ones_still_use_registers():
    split = sig([(n, INT) for n in "abcdefg"] + [("s", slice_of(INT)), ("z", INT)])
    params, _ = assign(split, "amd64")
    assert where(params[7]) == [("s", 8, 24)]
    assert where(params[8]) == [("z", "R10", 8)]
    params, _ = assign(split, "arm64")
    assert where(params[7]) == [("s.ptr", "R7", 8), ("s.len", "R8", 8), ("s.cap", "R9", 8)]


def test_float_registers_run_out_differently_per_arch():
    floats = sig([(f"f{i}", FLOAT64) for i in range(17)])
    amd64, _ = assign(floats, "amd64")
    arm64, _ = assign(floats, "arm64")
    assert [v.parts[0].location for v in amd64[13:]] == [
        Location("float_reg", reg="X13"), Location("float_reg", reg="X14"),
        Location("stack", stack_offset=8), Location("stack", stack_offset=16)]
    assert [v.parts[0].location for v in arm64[14:]] == [
        Location("float_reg", reg="F14"), Location("float_reg", reg="F15"),
        Location("stack", stack_offset=8)]


def test_results_stack_area_follows_the_arguments_pointer_aligned():
    f = sig([("a", array_of(UINT8, 3))], [("r", array_of(INT, 2)), ("ok", basic(Kind.BOOL))])
    params, results = assign(f, "amd64")
    assert where(params[0]) == [("a", 8, 3)]
    assert where(results[0]) == [("r", 16, 16)]
    assert where(results[1]) == [("ok", "RAX", 1)]
    assert arg_width(f, "amd64") == 24
    # The pointer alignment applies even when the result's own alignment is smaller.
    bytes_only = sig([("a", array_of(UINT8, 3))], [("r", array_of(UINT8, 2))])
    _, results = assign(bytes_only, "amd64")
    assert where(results[0]) == [("r", 16, 2)]
    assert arg_width(bytes_only, "amd64") == 16


def test_zero_size_values_are_stack_assigned_and_take_no_register():
    empty = struct_of("main.Empty", [])
    f = sig([("e", empty), ("a", INT), ("z", array_of(INT, 0))])
    params, _ = assign(f, "amd64")
    assert where(params[0]) == [("e", 8, 0)]
    assert where(params[1]) == [("a", "RAX", 8)]
    assert where(params[2]) == [("z", 8, 0)]


def test_small_arrays_and_structs_decompose_field_by_field():
    small = struct_of("main.Small", [("X", basic(Kind.UINT16)), ("Y", UINT8), ("Z", basic(Kind.INT32)),
                                     ("W", basic(Kind.INT32))])
    one = struct_of("main.OneF", [("F", array_of(FLOAT64, 1))])
    with_arr = struct_of("main.WithArr", [("A", INT), ("B", array_of(INT, 2))])
    f = sig([("s", small), ("o", one), ("w", with_arr), ("b", basic(Kind.BOOL)),
             ("c", basic(Kind.COMPLEX128)), ("x", interface_type("interface {}", empty=True)),
             ("p", pointer_to(small))])
    params, _ = assign(f, "amd64")
    assert where(params[0]) == [("s.X", "RAX", 2), ("s.Y", "RBX", 1), ("s.Z", "RCX", 4), ("s.W", "RDI", 4)]
    assert [p.offset for p in params[0].parts] == [0, 2, 4, 8]
    assert where(params[1]) == [("o.F[0]", "X0", 8)]
    assert where(params[2]) == [("w", 8, 24)]  # an array of length 2 anywhere inside: stack
    assert where(params[3]) == [("b", "RSI", 1)]
    # Spill slots follow the stack arguments (w: 24 bytes), each aligned for its
    # type: s@0 (12 bytes), o@16, b@24, c@32, x@48, p@64; plus 8 to the area.
    assert [v.spill_offset for v in params] == [32, 48, None, 56, 64, 80, 96]
    assert where(params[4]) == [("c.real", "X1", 8), ("c.imag", "X2", 8)]
    assert where(params[5]) == [("x.type", "R8", 8), ("x.data", "R9", 8)]
    assert where(params[6]) == [("p", "R10", 8)]


def test_unsupported_architecture_is_an_error():
    with pytest.raises(BinaryError, match="riscv64 is not supported"):
        assign(DESIGN_EXAMPLE, "riscv64")


# --- agreement with the compiler ----------------------------------------------

DWARF_REGS = {
    "amd64": {0: "RAX", 1: "RDX", 2: "RCX", 3: "RBX", 4: "RSI", 5: "RDI",
              **{i: f"R{i}" for i in range(8, 16)}, **{17 + i: f"X{i}" for i in range(16)}},
    "arm64": {**{i: f"R{i}" for i in range(31)}, **{64 + i: f"F{i}" for i in range(32)}},
}
# DW_OP_call_frame_cfa is SP before the call: SP at entry + 8 on amd64 (return
# address pushed), SP at entry on arm64.
CFA_FROM_ENTRY_SP = {"amd64": 8, "arm64": 0}


def entry_location(dwarf, function_die, param_die):
    """The DWARF location of a parameter at its function's first instruction, as
    [(("reg", dwarf_regno) | ("cfa", offset) | None, piece_size | None)], or None when DWARF has none."""
    attr = param_die.attributes.get("DW_AT_location")
    if attr is None:
        return None
    if attr.form.startswith("DW_FORM_block") or attr.form == "DW_FORM_exprloc":
        expr = attr.value  # Go writes expressions as blocks, also in DWARF 4/5
    else:
        entries = LocationParser(dwarf._dwarf.location_lists()).parse_from_attribute(
            attr, param_die.cu["version"], param_die)
        low_pc = function_die.attributes["DW_AT_low_pc"].value
        base, expr = low_pc, None
        for entry in entries:
            if isinstance(entry, BaseAddressEntry):
                base = entry.base_address
            elif isinstance(entry, LocationEntry):
                absolute = getattr(entry, "is_absolute", False)
                begin = entry.begin_offset + (0 if absolute else base)
                end = entry.end_offset + (0 if absolute else base)
                if begin <= low_pc < end:
                    expr = entry.loc_expr
                    break
    if not expr:
        return None
    pieces, current = [], None
    for op in DWARFExprParser(param_die.cu.structs).parse_expr(expr):
        name = op.op_name
        if name == "DW_OP_regx":
            current = ("reg", op.args[0])
        elif name.startswith("DW_OP_reg"):
            current = ("reg", int(name[len("DW_OP_reg"):]))
        elif name == "DW_OP_fbreg":  # frame base is DW_OP_call_frame_cfa in Go
            current = ("cfa", op.args[0])
        elif name == "DW_OP_call_frame_cfa":
            current = ("cfa", 0)
        elif name == "DW_OP_piece":
            pieces.append((current, op.args[0]))
            current = None
        else:
            return None
    return pieces or [(current, None)]


def compare_entry_locations(dwarf, func_name, arch):
    """[(param, ours, compiler's)] for each register or stack word DWARF places at entry."""
    regs, cfa = DWARF_REGS[arch], CFA_FROM_ENTRY_SP[arch]

    def theirs(loc):
        return ("reg", regs[loc[1]]) if loc[0] == "reg" else ("stack", loc[1] + cfa)

    signature = dwarf.function_signature(func_name)
    die = dwarf.subprogram_die(func_name)
    param_dies = []
    for child in die.iter_children():
        if child.tag != "DW_TAG_formal_parameter":
            continue
        declared_by = child
        if "DW_AT_abstract_origin" in child.attributes:  # out-of-line copy of an inlined function
            declared_by = child.get_DIE_from_attribute("DW_AT_abstract_origin")
        if not declared_by.attributes["DW_AT_variable_parameter"].value:
            param_dies.append((declared_by.attributes["DW_AT_name"].value.decode(), child))
    params, _ = assign(signature, arch)
    dwarf_names = [name for name, _ in param_dies]
    declared = [v for v in params if not v.param.hidden or v.name in dwarf_names]
    assert [v.name for v in declared] == dwarf_names

    compared = []
    for value, (_, param_die) in zip(declared, param_dies):
        pieces = entry_location(dwarf, die, param_die)
        if pieces is None:
            continue
        if value.on_stack:
            # Each located piece (or a lone location for the one live word of a
            # multi-word value) must lie within the value's stack slot.
            start = value.parts[0].location.stack_offset
            end = start + max(value.parts[0].size, 1)
            for loc, _ in pieces:
                if loc is not None:
                    kind, where_ = theirs(loc)
                    inside = kind == "stack" and start <= where_ < end
                    compared.append((value.name, ("stack", start), ("stack", start) if inside else (kind, where_)))
            continue
        if pieces[0][1] is None and pieces[0][0][0] == "cfa":
            # A register-assigned parameter placed in memory: its spill slot
            # (Go 1.27 does this for parameters that are never live).
            compared.append((value.name, ("stack", value.spill_offset), theirs(pieces[0][0])))
            continue
        if pieces[0][1] is None:  # one location, no pieces: only meaningful for one-part values
            if len(value.parts) == 1:
                compared.append((value.name, ("reg", value.parts[0].location.reg), theirs(pieces[0][0])))
            continue
        # Go lists one piece per base value, in order (it writes no padding
        # pieces). Go 1.19 lists each piece of an interface twice: collapse repeats.
        if len(pieces) != len(value.parts):
            pieces = [piece for i, piece in enumerate(pieces) if i == 0 or piece != pieces[i - 1]]
        if len(pieces) != len(value.parts):
            compared.append((value.name, [p.location.reg for p in value.parts], pieces))
            continue
        for part, (loc, size) in zip(value.parts, pieces):
            if loc is not None:
                assert size == part.size
                compared.append((part.path, ("reg", part.location.reg), theirs(loc)))
    return compared


def pclntab_args(binary) -> dict[str, int]:
    """Function name -> `_func.args` (bytes of argument area) from the binary's pclntab."""
    with ElfImage(binary) as elf:
        tab = Pclntab.find(elf)
        names = tab.names()
        out = {}
        for index, name in enumerate(names):
            (funcoff,) = struct.unpack_from("<I", tab.data, tab.pcln_off + 8 * index + 4)
            # _func: entryOff u32, nameOff i32, args i32 (Go 1.18+ layouts)
            (args,) = struct.unpack_from("<i", tab.data, tab.pcln_off + funcoff + 8)
            out[name] = args
        return out


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("version", TOOLCHAINS)
def test_entry_locations_agree_with_compiler(version, arch):
    binary = build_snippet("abicases", version, arch)
    with DwarfInfo.open(binary) as dwarf:
        compared = []
        for func_name in ABI_CASE_FUNCTIONS:
            if func_name == "main.Blank" and dwarf.go_version[:2] < (1, 22):
                continue  # its blank parameters are missing from old DWARF; see below
            compared += compare_entry_locations(dwarf, func_name, arch)
        for shape in ("int", "float64"):
            generic = next(n for n in (f"main.Gen[go.shape.{shape}]", f"main.Gen[go.shape.{shape}_0]")
                           if dwarf.function_signature(n) is not None)
            compared += compare_entry_locations(dwarf, generic, arch)
    mismatches = [(path, ours, theirs) for path, ours, theirs in compared if ours != theirs]
    assert not mismatches
    # Most parameters are live at entry: the comparison must have covered them.
    assert len(compared) >= 100, f"only {len(compared)} locations compared"
    # The generic instantiation's first declared parameter follows the hidden dictionary.
    assert ("a", ("reg", "RBX" if arch == "amd64" else "R1"), ("reg", "RBX" if arch == "amd64" else "R1")) in compared


@pytest.mark.parametrize("arch", ARCHES)
@pytest.mark.parametrize("version", TOOLCHAINS)
def test_argument_area_size_agrees_with_pclntab(version, arch):
    binary = build_snippet("abicases", version, arch)
    args = pclntab_args(binary)
    with DwarfInfo.open(binary) as dwarf:
        for func_name in ABI_CASE_FUNCTIONS:
            signature = dwarf.function_signature(func_name)
            ours = (arg_width(signature, arch) + 7) // 8 * 8
            if signature.complete:
                assert ours == args[func_name], func_name
            else:
                # Go <= 1.21 omits `_` parameters from DWARF: the sizes then
                # disagree exactly when one was omitted, which is how a caller detects it.
                assert (ours == args[func_name]) == (func_name != "main.Blank"), func_name


def test_declared_parameters_named_as_go_names_them():
    binary = build_snippet("abicases", "1.25.5", "amd64")
    with DwarfInfo.open(binary) as dwarf:
        for func_name, names in ABI_CASE_FUNCTIONS.items():
            signature = dwarf.function_signature(func_name)
            assert [p.name for p in signature.params] == names
