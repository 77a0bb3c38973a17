"""From a function's signature and Go's register ABI to a capture plan: numbered read operations for the BPF side, and the layout user space decodes with.

A side (entry: receiver and parameters; return: results) has a buffer. Each
value gets an *image* in it, laid out exactly as the value is in Go memory:
register-assigned parts are copied from their registers to their offsets
(`GT_OP_REG`), stack-assigned values are copied from SP + offset
(`GT_OP_STACK`). Then memory behind pointers inside those images is read
(`GT_OP_DEREF`): string bytes and slice elements (up to --str-len bytes),
an itab's type word, and the first 16 bytes behind an interface's data word
followed by the string bytes they would point at if they were a string
header (this gives the message of *errors.errorString, *fmt.wrapError and
strings stored in interfaces; user space only uses it when the concrete type
says so). Floating-point register parts cannot be read from a uprobe: they
are marked unreadable, never guessed.

Everything here is numbers: no C text is ever generated. Planning for every
traced function (DWARF or --sig signatures, the pclntab cross-check) is at
the end: `plan_args`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from gotrace.capture import abi
from gotrace import header as probes_header
from gotrace.errors import BinaryError, PatternError, UsageError
from gotrace.binary.gotypes import FLOAT_KINDS, INTEGER_KINDS, GoType, Kind, Param, Signature

DEFAULT_STR_LEN = 64

# What a deref reads, as the decoder looks it up: (buffer offset of the pointer word, what).
BYTES = "bytes"            # string bytes / slice elements, pointer word at the key, length at key + 8
ITAB_TYPE = "itab_type"    # the _type pointer of an itab (non-empty interface), itab word at the key
IFACE_DATA = "iface_data"  # 16 bytes behind an interface's data word at the key

_ELEM_SHIFT = {1: 0, 2: 1, 4: 2, 8: 3}
_MAX_ARRAY_WALK = 64  # array elements searched for strings/slices/interfaces to follow


def _const(name: str) -> int:
    return probes_header.constant(name)


@dataclass(frozen=True)
class Op:
    """One struct gt_arg_op."""

    kind: int
    dst: int
    size: int
    reg: int = 0
    shift: int = 0
    dep: int = 255
    src: int = 65535
    len_src: int = 65535
    offset: int = 0

    def packed(self) -> tuple[int, ...]:
        return (self.kind, self.reg, self.shift, self.dep, self.dst, self.size, self.src, self.len_src, self.offset)


@dataclass(frozen=True)
class Deref:
    op_index: int
    dst: int
    size: int  # bytes at most


@dataclass(frozen=True)
class Unreadable:
    """Bytes of an image that no operation fills, and why."""

    offset: int  # in the side's buffer
    size: int
    reason: str


@dataclass
class ValuePlan:
    """Where one parameter or result is captured (base None: it is not, see reason)."""

    param: Param
    base: int | None
    reason: str | None = None
    image_ops: tuple[int, ...] = ()  # stack reads that can fault
    unreadable: tuple[Unreadable, ...] = ()

    @property
    def name(self) -> str:
        return self.param.name

    @property
    def type(self) -> GoType:
        return self.param.type


@dataclass
class SidePlan:
    """The operations and value layout of one side (entry or return)."""

    values: list[ValuePlan] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    derefs: dict[tuple[int, str], Deref] = field(default_factory=dict)

    def packed_ops(self) -> tuple[tuple[int, ...], ...]:
        return tuple(op.packed() for op in self.ops)


@dataclass
class FunctionPlan:
    """A traced function's signature and both capture plans."""

    name: str
    signature: Signature
    entry: SidePlan
    ret: SidePlan
    str_len: int
    source: str = "dwarf"  # or "sig"


class _SideBuilder:
    def __init__(self, capacity: int, arch_abi: abi.ArchABI, str_len: int):
        self.capacity = capacity
        self.abi = arch_abi
        self.str_len = str_len
        self.max_ops = _const("GT_ARGS_MAX_OPS")
        self.max_read = _const("GT_ARGS_MAX_READ")
        self.side = SidePlan()
        self.cursor = 0
        # buffer offset range -> op index that filled it from the stack (a fault leaves stale bytes)
        self.stack_chunks: list[tuple[int, int, int]] = []

    def alloc(self, size: int) -> int | None:
        start = (self.cursor + 7) // 8 * 8
        if start + size > self.capacity:
            return None
        self.cursor = start + size
        return start

    def add(self, op: Op) -> int | None:
        if len(self.side.ops) >= self.max_ops:
            return None
        self.side.ops.append(op)
        return len(self.side.ops) - 1

    def dep_for(self, offset: int) -> int:
        for low, high, index in self.stack_chunks:
            if low <= offset < high:
                return index
        return 255

    # -- images ---------------------------------------------------------

    def image(self, location: abi.ValueLocation) -> ValuePlan:
        gotype = location.param.type
        if gotype.size == 0:
            return ValuePlan(location.param, base=None, reason=None)
        base = self.alloc(gotype.size)
        if base is None:
            return ValuePlan(location.param, None, "too large to capture (capture buffer full)")
        needed = sum(1 for p in location.parts if p.location.kind == "int_reg")
        needed += sum((p.size + self.max_read - 1) // self.max_read for p in location.parts if p.location.kind == "stack")
        if len(self.side.ops) + needed > self.max_ops:
            return ValuePlan(location.param, None, "not captured: too many values for one plan")
        image_ops: list[int] = []
        unreadable: list[Unreadable] = []
        for part in location.parts:
            where = part.location
            if where.kind == "int_reg":
                reg = self.abi.int_regs.index(where.reg)
                self.add(Op(_const("GT_OP_REG"), dst=base + part.offset, size=part.size, reg=reg))
            elif where.kind == "float_reg":
                unreadable.append(Unreadable(base + part.offset, part.size,
                                             f"in floating-point register {where.reg} (not readable from a uprobe)"))
            else:
                for chunk in range(0, part.size, self.max_read):
                    size = min(self.max_read, part.size - chunk)
                    dst = base + part.offset + chunk
                    index = self.add(Op(_const("GT_OP_STACK"), dst=dst, size=size,
                                        offset=where.stack_offset + chunk))
                    image_ops.append(index)
                    self.stack_chunks.append((dst, dst + size, index))
        return ValuePlan(location.param, base, None, tuple(image_ops), tuple(unreadable))

    # -- derefs ---------------------------------------------------------

    def follow(self, gotype: GoType, offset: int, unreadable: tuple[Unreadable, ...]) -> None:
        """Add derefs for every string, slice and interface inside the image at `offset`."""
        kind = gotype.kind
        if any(u.offset <= offset < u.offset + u.size for u in unreadable):
            return
        if kind is Kind.STRING:
            self._bytes(offset, self.str_len, shift=0)
        elif kind is Kind.SLICE:
            elem = gotype.elem
            if elem is not None and (elem.kind in INTEGER_KINDS or elem.kind in FLOAT_KINDS
                                     or elem.kind is Kind.BOOL) and elem.size in _ELEM_SHIFT:
                self._bytes(offset, self.str_len // elem.size * elem.size, shift=_ELEM_SHIFT[elem.size])
        elif kind is Kind.INTERFACE:
            self._interface(gotype, offset)
        elif kind is Kind.STRUCT:
            for fld in gotype.fields:
                self.follow(fld.type, offset + fld.offset, unreadable)
        elif kind is Kind.ARRAY and gotype.elem is not None and gotype.elem.size:
            for i in range(min(gotype.length or 0, _MAX_ARRAY_WALK)):
                self.follow(gotype.elem, offset + i * gotype.elem.size, unreadable)

    def _bytes(self, header: int, size: int, shift: int, dep: int | None = None) -> None:
        if size <= 0:
            return
        size = min(size, self.max_read)
        dst = self.alloc(size)
        if dst is None:
            return
        index = self.add(Op(_const("GT_OP_DEREF"), dst=dst, size=size, src=header, len_src=header + 8,
                            shift=shift, dep=self.dep_for(header) if dep is None else dep))
        if index is not None:
            self.side.derefs[(header, BYTES)] = Deref(index, dst, size)

    def _interface(self, gotype: GoType, offset: int) -> None:
        deref = _const("GT_OP_DEREF")
        dep = self.dep_for(offset)
        if not gotype.empty:
            dst = self.alloc(8)
            if dst is None:
                return
            index = self.add(Op(deref, dst=dst, size=8, src=offset, offset=8, dep=dep))
            if index is None:
                return
            self.side.derefs[(offset, ITAB_TYPE)] = Deref(index, dst, 8)
        dst = self.alloc(16)
        if dst is None:
            return
        index = self.add(Op(deref, dst=dst, size=16, src=offset + 8, dep=dep))
        if index is None:
            return
        self.side.derefs[(offset + 8, IFACE_DATA)] = Deref(index, dst, 16)
        self._bytes(dst, self.str_len, shift=0, dep=index)


def plan_side(locations: list[abi.ValueLocation], arch_abi: abi.ArchABI, capacity: int, str_len: int) -> SidePlan:
    """Images for every value first (so no value loses its words to string bytes), then derefs in order."""
    builder = _SideBuilder(capacity, arch_abi, str_len)
    values = [builder.image(location) for location in locations]
    for value in values:
        if value.base is not None:
            builder.follow(value.type, value.base, value.unreadable)
    builder.side.values = values
    return builder.side


def plan_function(signature: Signature, arch: str, str_len: int = DEFAULT_STR_LEN, source: str = "dwarf") -> FunctionPlan:
    """Both capture plans of one function."""
    max_str = _const("GT_ARGS_MAX_READ")
    if not 0 <= str_len <= max_str:
        raise UsageError(f"--str-len must be in 0..{max_str}, not {str_len}")
    arch_abi = abi.arch_abi(arch)
    params, results = abi.assign(signature, arch_abi)
    entry = plan_side(params, arch_abi, _const("GT_ARGS_DATA"), str_len)
    ret = plan_side(results, arch_abi, _const("GT_RES_DATA"), str_len)
    return FunctionPlan(signature.name, signature, entry, ret, str_len, source)


# -- every traced function ------------------------------------------------------


@dataclass
class ArgsPlan:
    traced: list          # [(FunctionProbes, FunctionPlan)] in func_id order
    skipped: list         # [(GoFunction name, reason)]

    @property
    def n_sites(self) -> int:
        return sum(1 + len(probes.sites.return_vaddrs) for probes, _ in self.traced)


def pclntab_arg_size(gobin, fn) -> int | None:
    """The `args` field of a function's pclntab `_func`: bytes of its argument area."""
    try:
        return gobin.pclntab.func_record(fn.index).args
    except BinaryError:
        return None


def _split_sigs(sigs, functions) -> dict[str, str]:
    """--sig values by function name: `NAME=func(...)` names its function; a bare
    `func(...)` is for the one function the patterns match."""
    by_name: dict[str, str] = {}
    names = {fn.name for fn in functions}
    for text in sigs:
        head, eq, tail = text.partition("=")
        if eq and tail.lstrip().startswith("func") and not head.lstrip().startswith("func"):
            name = head.strip()
            if name not in names:
                raise UsageError(f"--sig names {name}, which the patterns do not match: "
                                 "write the function's name exactly as gotrace funcs lists it")
            by_name[name] = tail
            continue
        if len(functions) != 1:
            listed = ", ".join(fn.name for fn in functions[:3])
            raise UsageError(f"a bare --sig describes one function but {len(functions)} match ({listed}, ...): "
                             "write --sig 'NAME=func(...)' for each, or narrow the pattern")
        by_name[functions[0].name] = text
    return by_name


def plan_args(gobin, patterns: list[str], *, sig=None, str_len: int = DEFAULT_STR_LEN) -> ArgsPlan:
    """Probe sites and capture plans of the functions matching `patterns`.

    Signatures come from --sig (`sig`: one text or a list, see _split_sigs)
    or else from DWARF. Every signature is checked against the argument size
    pclntab records for the function: a mismatch is an error for --sig and a
    skip (with the reason) for DWARF.
    """
    from gotrace.capture.sigparse import parse_signature

    functions = gobin.match(patterns)
    sigs = [sig] if isinstance(sig, str) else list(sig or ())
    sig_texts = _split_sigs(sigs, functions)
    traced, skipped = [], []
    dwarf = None if len(sig_texts) == len(functions) else gobin.dwarf
    for fn in functions:
        probes = gobin.probe_sites(fn)
        if not probes.traceable:
            skipped.append((fn.name, probes.reason))
            continue
        if fn.name in sig_texts:
            signature = parse_signature(sig_texts[fn.name], fn.name)
            source = "sig"
        else:
            signature = dwarf.function_signature(gobin.debug_name(fn)) if dwarf is not None else None
            if signature is not None:
                signature = dataclasses.replace(signature, name=fn.name)
            source = "dwarf"
            if signature is None:
                why = ("the binary has no DWARF (stripped or -ldflags=-w)" if dwarf is None
                       else "DWARF does not describe it")
                skipped.append((fn.name, f"{why}: give its signature with --sig 'func(...) (...)'"))
                continue
        expected = pclntab_arg_size(gobin, fn)
        width = abi.arg_width(signature, gobin.arch)
        if expected is not None and expected >= 0 and width != expected:
            what = "--sig" if source == "sig" else "the DWARF signature"
            message = (f"{what} of {fn.name} needs {width} bytes of argument area but the function "
                       f"has {expected} (pclntab): ")
            if source == "sig":
                raise UsageError(message + "check the parameter and result types, receiver first for methods")
            skipped.append((fn.name, message + "give its signature with --sig"))
            continue
        traced.append((probes, plan_function(signature, gobin.arch, str_len, source)))
    if not traced:
        name, reason = skipped[0]
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise PatternError(f"{name} cannot be traced for arguments: {reason}{more}")
    return ArgsPlan(traced, skipped)
