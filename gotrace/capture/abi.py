"""Where Go's internal register ABI (ABIInternal) puts each argument and result.

Follows cmd/compile/abi-internal.md (Go 1.17+ amd64, 1.18+ arm64): receiver
then parameters are assigned to the integer and floating-point register
sequences, base value by base value; results start again from the first
registers. A value that contains an array of length > 1, or does not fit
entirely in the registers left, goes whole to the stack, never split; so do
zero-sized values. Stack-assigned parameters come first in the caller's
outgoing area, then (pointer-aligned) stack-assigned results, then the spill
area for register-assigned parameters.

Stack offsets are relative to SP at the function's entry (equally at the
post-prologue entry site and at a `ret`): on amd64 the return address is at
0 and the argument area starts at 8; on arm64 0 is the caller's saved-LR
slot and the area also starts at 8.
"""

from __future__ import annotations

from dataclasses import dataclass

from gotrace.errors import BinaryError
from gotrace.binary.gotypes import (
    COMPLEX_KINDS, FLOAT_KINDS, INTEGER_KINDS, POINTER_SHAPED_KINDS, PTR_SIZE,
    GoType, Kind, Param, Signature, align_up, basic,
)


@dataclass(frozen=True)
class ArchABI:
    """One architecture's argument registers and argument-area start."""

    name: str
    int_regs: tuple[str, ...]
    float_regs: tuple[str, ...]
    args_offset: int  # where the argument area starts, from SP at entry


AMD64 = ArchABI(
    "amd64",
    ("RAX", "RBX", "RCX", "RDI", "RSI", "R8", "R9", "R10", "R11"),
    tuple(f"X{i}" for i in range(15)),
    args_offset=8,
)
ARM64 = ArchABI(
    "arm64",
    tuple(f"R{i}" for i in range(16)),
    tuple(f"F{i}" for i in range(16)),
    args_offset=8,
)
_ARCHES = {"amd64": AMD64, "x86_64": AMD64, "arm64": ARM64, "aarch64": ARM64}


def arch_abi(arch: str | ArchABI) -> ArchABI:
    """The ABI description for 'amd64'/'x86_64' or 'arm64'/'aarch64'."""
    if isinstance(arch, ArchABI):
        return arch
    try:
        return _ARCHES[arch]
    except KeyError:
        raise BinaryError(f"architecture {arch} is not supported; gotrace handles amd64 and arm64") from None


@dataclass(frozen=True)
class Location:
    """Where one part of a value lives at function entry (parameters) or at `ret` (results).

    kind is "int_reg", "float_reg" or "stack"; `reg` names the register
    (Go's names: RAX, X0, R0, F0), `stack_offset` the byte offset from SP
    at entry.
    """

    kind: str
    reg: str | None = None
    stack_offset: int | None = None


@dataclass(frozen=True)
class Part:
    """A piece of a value: its path (`s.len`, `p.C.ptr`, `e.data`), location, size, type,
    and byte `offset` within the value's memory layout.

    Register-assigned values have one part per base value; a stack-assigned
    value is one part covering the whole value in memory.
    """

    path: str
    location: Location
    size: int
    type: GoType
    offset: int = 0


@dataclass(frozen=True)
class ValueLocation:
    """A parameter or result and where its parts are.

    `spill_offset` is the home the caller reserves for a register-assigned
    parameter (offset from SP at entry, like stack locations). It is NOT
    written at the call; the callee may store the value there later (Go's
    DWARF names it as the location of dead parameters). None for results
    and stack-assigned values.
    """

    param: Param
    parts: tuple[Part, ...]
    spill_offset: int | None = None

    @property
    def name(self) -> str:
        return self.param.name

    @property
    def on_stack(self) -> bool:
        return any(part.location.kind == "stack" for part in self.parts)

    @property
    def in_float_regs(self) -> bool:
        """True when some part is in a floating-point register (not in a uprobe's pt_regs)."""
        return any(part.location.kind == "float_reg" for part in self.parts)


# Two registers never suffice for an array of length > 1: it is never register-assigned.
_NEVER = 1 << 30


def register_counts(gotype: GoType) -> tuple[int, int]:
    """(integer, floating-point) registers needed to pass `gotype`; huge when it cannot be."""
    kind = gotype.kind
    if gotype.size == 0:
        return 0, 0
    if kind in INTEGER_KINDS or kind is Kind.BOOL or kind in POINTER_SHAPED_KINDS:
        return (gotype.size + PTR_SIZE - 1) // PTR_SIZE, 0
    if kind in FLOAT_KINDS:
        return 0, 1
    if kind in COMPLEX_KINDS:
        return 0, 2
    if kind is Kind.STRING or kind is Kind.INTERFACE:
        return 2, 0
    if kind is Kind.SLICE:
        return 3, 0
    if kind is Kind.STRUCT:
        ints = floats = 0
        for field in gotype.fields:
            i, f = register_counts(field.type)
            ints, floats = ints + i, floats + f
        return ints, floats
    if kind is Kind.ARRAY:
        if gotype.length == 1 and gotype.elem is not None:
            return register_counts(gotype.elem)
        return (0, 0) if gotype.length == 0 else (_NEVER, _NEVER)
    return _NEVER, _NEVER


def _base_values(gotype: GoType, path: str, offset: int = 0):
    """(path, type, is_float, offset) of each base value of a register-assignable type, in register order."""
    kind = gotype.kind
    if gotype.size == 0:
        return
    if kind in FLOAT_KINDS:
        yield path, gotype, True, offset
    elif kind in COMPLEX_KINDS:
        part = basic(Kind.FLOAT32 if kind is Kind.COMPLEX64 else Kind.FLOAT64)
        yield f"{path}.real", part, True, offset
        yield f"{path}.imag", part, True, offset + part.size
    elif kind in (Kind.STRING, Kind.SLICE, Kind.INTERFACE):
        if kind is Kind.INTERFACE:
            words = ("type" if gotype.empty else "itab", "data")
        else:
            words = ("ptr", "len", "cap")[:gotype.size // PTR_SIZE]
        for i, word in enumerate(words):
            word_type = _UINTPTR if word in ("ptr", "type", "itab", "data") else _INT
            yield f"{path}.{word}", word_type, False, offset + i * PTR_SIZE
    elif kind is Kind.STRUCT:
        for field in gotype.fields:
            yield from _base_values(field.type, f"{path}.{field.name}", offset + field.offset)
    elif kind is Kind.ARRAY:
        if gotype.length == 1:
            yield from _base_values(gotype.elem, f"{path}[0]", offset)
    else:  # integers, bool, pointer-shaped
        yield path, gotype, False, offset


_UINTPTR = basic(Kind.UINTPTR)
_INT = basic(Kind.INT)


class _Assigner:
    def __init__(self, abi: ArchABI):
        self.abi = abi
        self.next_int = 0
        self.next_float = 0
        self.stack_offset = 0  # within the argument area
        self.spill_offset = 0

    def assign(self, param: Param, is_result: bool) -> ValueLocation:
        gotype = param.type
        ints, floats = register_counts(gotype)
        fits = (gotype.size > 0
                and self.next_int + ints <= len(self.abi.int_regs)
                and self.next_float + floats <= len(self.abi.float_regs))
        if not fits:
            self.stack_offset = align_up(self.stack_offset, gotype.align)
            location = Location("stack", stack_offset=self.abi.args_offset + self.stack_offset)
            self.stack_offset += gotype.size
            return ValueLocation(param, (Part(param.name, location, gotype.size, gotype),))
        parts = []
        for path, part_type, is_float, offset in _base_values(gotype, param.name):
            if is_float:
                location = Location("float_reg", reg=self.abi.float_regs[self.next_float])
                self.next_float += 1
            else:
                location = Location("int_reg", reg=self.abi.int_regs[self.next_int])
                self.next_int += 1
            parts.append(Part(path, location, part_type.size, part_type, offset))
        spill = None
        if not is_result:
            spill = align_up(self.spill_offset, gotype.align)
            self.spill_offset = spill + gotype.size
        return ValueLocation(param, tuple(parts), spill)

    def start_results(self) -> None:
        """Results: registers from the first again; their stack slots after the arguments, pointer-aligned."""
        self.next_int = 0
        self.next_float = 0
        self.stack_offset = align_up(self.stack_offset, PTR_SIZE)


def _run(signature: Signature, arch) -> tuple[list[ValueLocation], list[ValueLocation], int]:
    abi = arch_abi(arch)
    assigner = _Assigner(abi)
    params = [assigner.assign(param, is_result=False) for param in signature.params]
    assigner.start_results()
    results = [assigner.assign(param, is_result=True) for param in signature.results]
    spill_area_start = align_up(assigner.stack_offset, PTR_SIZE)
    arg_width = spill_area_start + align_up(assigner.spill_offset, PTR_SIZE)
    # Spill offsets were counted within the spill area: make them SP-relative.
    params = [value if value.spill_offset is None else
              ValueLocation(value.param, value.parts, abi.args_offset + spill_area_start + value.spill_offset)
              for value in params]
    return params, results, arg_width


def assign(signature: Signature, arch: str | ArchABI) -> tuple[list[ValueLocation], list[ValueLocation]]:
    """Locations of the receiver+parameters (at entry) and results (at `ret`), in order."""
    params, results, _ = _run(signature, arch)
    return params, results


def arg_width(signature: Signature, arch: str | ArchABI) -> int:
    """Bytes of the caller-reserved argument area: stack arguments, stack results, spill area.

    Equals the `args` field of the function's pclntab `_func` entry (Go
    rounds it to pointer size), so comparing the two tells whether a
    signature read from DWARF is complete.
    """
    return _run(signature, arch)[2]
