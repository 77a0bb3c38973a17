"""From a function's signature and Go's register ABI to a capture plan: numbered read operations for the BPF side.

A side (entry: receiver and parameters; return: results) has a region of
bytes. It starts with one status byte per operation (GT_ARGS_MAX_OPS of
them); then each value gets an *image*, laid out exactly as the value is in
Go memory: register-assigned parts are copied from their registers
(`GT_OP_REG`), stack-assigned values from SP + offset (`GT_OP_STACK`).
Floating-point register parts cannot be read from a uprobe: they are marked
unreadable, never guessed.

Then memory behind the pointers in those images is read, breadth first (so
every value gets its first level before any gets its second) and bounded by
`Limits` (--depth, --max-elems, --str-len) and by the side's operation and
byte budget. Every read is a `GT_OP_DEREF`: "read n bytes at the address
stored at `src`", conditions and lengths taken from words already read.

* string, []byte: the first --str-len bytes (never past the length);
* slice: the first --max-elems elements (never past the length), then each
  element's own pointers;
* pointer: the pointee (its type's size), then its pointers;
* map: the header; the first group (Swiss tables, Go 1.24+: the small map's
  group or table 0's first, into one block whichever the header says) or the
  first bucket (hash buckets, up to 1.23); then each slot's key and value
  pointers. With the room left over once everything else is planned: the
  second group or bucket, then the first bucket's overflow. A second group or
  bucket that the map does not have is read but never decoded (the decoder
  knows the map's size from the header and table).
* interface: the concrete type (an itab's type word), then up to
  IFACE_VALUE_BYTES of the value (what the data word points to), and for
  each of its first IFACE_CHASE_WORDS words, --str-len bytes behind it.
  The concrete type is only known when the call happens, so these reads do
  not depend on it: the decoder interprets them with the type (words that
  are not pointers read nothing useful, and are never shown).
* chan: its len and cap; func: its code pointer (the function's name).

The BPF side sends the region's bytes; gotrace.capture.values turns the reads
into a snapshot of the target's memory (address -> bytes, or why not) and
decodes each value's type over it. Everything here is numbers: no C text is
ever generated. Planning for every traced function (DWARF, runtime type data
or --sig signatures, the pclntab cross-check) is at the end: `plan_args`.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from functools import partial
from dataclasses import dataclass, field

from gotrace import header as probes_header
from gotrace.binary.gotypes import PTR_SIZE, GoType, Kind, Param, Signature, pointer_to
from gotrace.binary.rtypes import MAP_SLOTS, map_layout
from gotrace.capture import abi
from gotrace.errors import BinaryError, PatternError, UsageError

DEFAULT_STR_LEN = 64
DEFAULT_DEPTH = 2
DEFAULT_MAX_ELEMS = 8
MAX_DEPTH = 8
MAX_ELEMS = 64
IFACE_VALUE_BYTES = 128   # bytes of an interface's value read
IFACE_CHASE_WORDS = 8     # words of it followed
SWISS_HEADER_BYTES = 32   # used, seed, dirPtr, dirLen
BUCKETS_HEADER_BYTES = 48  # runtime.hmap
TABLE_BYTES = 32          # used, capacity, growthLeft, localDepth, index, groups.data, groups.lengthMask
CHAN_HEADER_BYTES = 16    # runtime.hchan: qcount, dataqsiz

# Types whose values are shown as Go prints them: follow what that needs, beyond --depth.
_TIME_LOCATION = "time.Location"
_TIME_ZONE = "time.zone"
_EXTRA_DEPTH_TYPES = frozenset({_TIME_LOCATION, _TIME_ZONE})
_CONTEXT = "context.Context"


def _const(name: str) -> int:
    return probes_header.constant(name)


@dataclass(frozen=True)
class Limits:
    """How much of each value to capture: --depth, --max-elems, --str-len."""

    depth: int = DEFAULT_DEPTH
    max_elems: int = DEFAULT_MAX_ELEMS
    str_len: int = DEFAULT_STR_LEN

    def validated(self) -> Limits:
        max_read = _const("GT_ARGS_MAX_READ")
        if not 0 <= self.str_len <= max_read:
            raise UsageError(f"--str-len must be in 0..{max_read}, not {self.str_len}")
        if not 0 <= self.depth <= MAX_DEPTH:
            raise UsageError(f"--depth must be in 0..{MAX_DEPTH}, not {self.depth}")
        if not 0 <= self.max_elems <= MAX_ELEMS:
            raise UsageError(f"--max-elems must be in 0..{MAX_ELEMS}, not {self.max_elems}")
        return self


@dataclass(frozen=True)
class Layouts:
    """What the plan needs to know of the binary besides types: its Go version and experiments."""

    version: tuple[int, int, int] = (1, 21, 0)
    experiments: frozenset[str] = frozenset()

    @property
    def swiss_maps(self) -> bool:
        return tuple(self.version[:2]) >= (1, 24) and "noswissmap" not in self.experiments


@dataclass(frozen=True)
class Op:
    """One struct gt_arg_op."""

    kind: int
    dst: int
    size: int
    arg: int = 0
    flags: int = 0
    dep: int = probes_header.constant("GT_OP_NO_DEP")
    src: int = probes_header.constant("GT_OP_NO_SRC")
    len_src: int = probes_header.constant("GT_OP_NO_SRC")
    mul: int = 0
    offset: int = 0

    def packed(self) -> tuple[int, ...]:
        return (self.kind, self.arg, self.flags, 0, self.dep, self.dst, self.size, self.src, self.len_src,
                self.mul, self.offset)


@dataclass(frozen=True)
class Unreadable:
    """Bytes of an image that no operation fills, and why."""

    offset: int  # in the side's region
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
    extent: int = 0  # bytes of the region in use (status bytes included)
    cut: int = 0     # reads left out for want of operations or bytes

    def packed_ops(self) -> tuple[tuple[int, ...], ...]:
        return tuple(op.packed() for op in self.ops)


@dataclass
class FunctionPlan:
    """A traced function's signature and both capture plans."""

    name: str
    signature: Signature
    entry: SidePlan
    ret: SidePlan
    limits: Limits
    layouts: Layouts
    source: str = "dwarf"  # "dwarf", "types" (runtime type data) or "sig"

    @property
    def str_len(self) -> int:
        return self.limits.str_len

    @property
    def ret_base(self) -> int:
        """Where the return region starts in the event's data (after the entry region)."""
        return (self.entry.extent + 7) // 8 * 8

    @property
    def send_bytes(self) -> int:
        return self.ret_base + self.ret.extent


@dataclass
class _Follow:
    """A value whose memory is in the region at `offset` (filled by operation `dep`), to follow."""

    gotype: GoType
    offset: int
    depth: int
    dep: int
    extra: int = 0  # depth allowance for types shown as Go prints them


class _SideBuilder:
    def __init__(self, capacity: int, arch_abi: abi.ArchABI, limits: Limits, layouts: Layouts):
        self.capacity = capacity
        self.abi = arch_abi
        self.limits = limits
        self.layouts = layouts
        self.max_ops = _const("GT_ARGS_MAX_OPS")
        self.max_read = _const("GT_ARGS_MAX_READ")
        self.deref = _const("GT_OP_DEREF")
        self.side = SidePlan()
        self.cursor = self.max_ops  # the status bytes come first
        # region range -> op index that filled it from the stack (a fault leaves stale bytes)
        self.stack_chunks: list[tuple[int, int, int]] = []
        # Reads planned only once every value is followed (they may take only what is left), each a
        # function that queues what it reads.
        self.spare: deque = deque()
        self.spare_last: deque = deque()  # the same, once every `spare` read is planned

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

    def read(self, size: int, *, src: int, dep: int, **fields) -> tuple[int, int] | None:
        """A DEREF into a fresh block of `size` bytes (+8 with GT_OPF_LEN_PREFIX): (op index, block) or None."""
        prefix = fields.get("flags", 0) & _const("GT_OPF_LEN_PREFIX")
        if size <= 0 or len(self.side.ops) >= self.max_ops:
            self.side.cut += 1
            return None
        dst = self.alloc(size + (8 if prefix else 0))
        if dst is None:
            self.side.cut += 1
            return None
        index = self.add(Op(self.deref, dst=dst, size=size, src=src, dep=dep, **fields))
        return index, dst

    def dep_for(self, offset: int) -> int:
        for low, high, index in self.stack_chunks:
            if low <= offset < high:
                return index
        return _const("GT_OP_NO_DEP")

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
                self.add(Op(_const("GT_OP_REG"), dst=base + part.offset, size=part.size, arg=reg))
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

    # -- following pointers, breadth first ----------------------------------

    def follow_all(self, values: list[ValuePlan]) -> None:
        queue: deque[_Follow] = deque()
        for value in values:
            if value.base is not None:
                self._walk(value.type, value.base, 0, self.dep_for(value.base), queue, value.unreadable)
        while queue or self.spare or self.spare_last:
            while queue:
                item = queue.popleft()
                self._walk(item.gotype, item.offset, item.depth, item.dep, queue, (), item.extra)
            if self.spare or self.spare_last:
                (self.spare or self.spare_last).popleft()(queue)

    def _can_follow(self, depth: int, extra: int) -> bool:
        return depth + 1 <= self.limits.depth + extra

    def _walk(self, t: GoType, off: int, depth: int, dep: int, queue: deque, unreadable=(), extra: int = 0) -> None:
        """Reads for what the value of type t at region offset `off` points to; what they read is queued."""
        kind = t.kind
        if t.size == 0 or any(u.offset <= off < u.offset + u.size for u in unreadable):
            return
        if kind is Kind.STRUCT:
            for fld in t.fields:
                if t.name == _TIME_LOCATION and fld.name not in ("name", "cacheZone"):
                    continue
                self._walk(fld.type, off + fld.offset, depth, dep, queue, unreadable, extra)
        elif kind is Kind.ARRAY and t.elem is not None and t.elem.size:
            for i in range(min(t.length or 0, self.limits.max_elems)):
                self._walk(t.elem, off + i * t.elem.size, depth, dep, queue, unreadable, extra)
        elif kind is Kind.STRING or (kind is Kind.SLICE and t.elem is not None and t.elem.kind is Kind.UINT8):
            size = min(self.limits.str_len, self.max_read)
            if size:
                self.read(size, src=off, dep=dep, len_src=off + 8, mul=1)
        elif kind is Kind.SLICE:
            self._slice(t, off, depth, dep, queue, extra)
        elif kind is Kind.POINTER:
            self._pointer(t, off, depth, dep, queue, extra)
        elif kind is Kind.INTERFACE:
            self._interface(t, off, depth, dep)
        elif kind is Kind.MAP:
            self._map(t, off, depth, dep, queue)
        elif kind is Kind.CHAN:
            if self._can_follow(depth, extra):
                self.read(CHAN_HEADER_BYTES, src=off, dep=dep)
        elif kind is Kind.FUNC:
            if self._can_follow(depth, extra):
                self.read(PTR_SIZE, src=off, dep=dep)

    def _slice(self, t: GoType, off: int, depth: int, dep: int, queue: deque, extra: int) -> None:
        elem = t.elem
        if elem is None or elem.size == 0 or not self._can_follow(depth, extra) or not self.limits.max_elems:
            return
        count = max(1, min(self.limits.max_elems, self.max_read // elem.size))
        size = min(count * elem.size, self.max_read)
        got = self.read(size, src=off, dep=dep, len_src=off + 8, mul=min(elem.size, 0xFFFF))
        if got is None:
            return
        index, block = got
        for i in range(count):
            if (i + 1) * elem.size <= size:
                queue.append(_Follow(elem, block + i * elem.size, depth + 1, index, extra))

    def _pointer(self, t: GoType, off: int, depth: int, dep: int, queue: deque, extra: int) -> None:
        elem = t.elem
        if elem is None or elem.size == 0 or elem.kind is Kind.INVALID:
            return
        if elem.name in _EXTRA_DEPTH_TYPES:
            extra = max(extra, 2)
        if not self._can_follow(depth, extra):
            return
        got = self.read(min(elem.size, self.max_read), src=off, dep=dep)
        if got is not None:
            index, block = got
            queue.append(_Follow(elem, block, depth + 1, index, extra))

    def _interface(self, t: GoType, off: int, depth: int, dep: int) -> None:
        flags = _const("GT_OPF_PAGE_RETRY") | _const("GT_OPF_LEN_PREFIX")
        if not t.empty:
            self.read(PTR_SIZE, src=off, dep=dep, offset=8)  # itab.Type
        if t.name == _CONTEXT or not self._can_follow(depth, 0):
            return
        got = self.read(IFACE_VALUE_BYTES, src=off + 8, dep=dep, flags=flags)
        if got is None:
            return
        index, block = got
        chase = max(min(self.limits.str_len, self.max_read), 16)
        for word in range(IFACE_CHASE_WORDS):
            self.read(chase, src=block + 8 + 8 * word, dep=index, flags=flags)

    def _map(self, t: GoType, off: int, depth: int, dep: int, queue: deque) -> None:
        key, elem = t.key, t.elem
        if key is None or elem is None or not self._can_follow(depth, 0):
            return
        layout = map_layout(key, elem, self.layouts.version, self.layouts.experiments)
        group = min(layout.group_size, self.max_read)
        regions: list[tuple[int, int]] = []  # (op index, block) of groups or buckets
        # Reads that take only what is left once everything else is planned, each as (region offset of the
        # pointer to read through, its op, offset from it): the second group or bucket, the likelier to hold
        # entries (with 20 entries in 4, the first is empty once in 300 calls), before the first bucket's
        # overflow (there only when it holds more than 8).
        second: tuple[int, int, int] | None = None
        overflow: tuple[int, int, int] | None = None
        if layout.swiss:
            got = self.read(SWISS_HEADER_BYTES, src=off, dep=dep)
            if got is None:
                return
            h_op, h = got
            # The group's address goes to one word, W, whichever way the map keeps it, so that one block
            # (and one set of reads for its slots) serves both ways. W is set to 1 first (the byte count
            # of a 1-byte read), so a way that does not finish leaves an address that faults, never one
            # from an earlier call; a read that faults leaves 0.
            fresh = self.read(1, src=off, dep=dep, flags=_const("GT_OPF_LEN_PREFIX"))
            if fresh is None:
                return
            w_op, w = fresh
            # A small map (dirLen 0): dirPtr is its group.
            self.add(Op(self.deref, dst=w, size=PTR_SIZE, src=off, offset=16, dep=h_op, len_src=h + 24,
                        flags=_const("GT_OPF_IF_ZERO")))
            # Otherwise table 0 (the first directory entry), then its groups' address.
            table_ptr = self.read(PTR_SIZE, src=h + 16, dep=h_op, len_src=h + 24, flags=_const("GT_OPF_IF_NONZERO"))
            if table_ptr is not None:
                self.read(TABLE_BYTES, src=table_ptr[1], dep=table_ptr[0])  # for the decoder: groups.lengthMask
                self.add(Op(self.deref, dst=w, size=PTR_SIZE, src=table_ptr[1], offset=16, dep=table_ptr[0]))
            first = self.read(group, src=w, dep=w_op)
            if first is not None:
                regions.append(first)
                second = (w, first[0], layout.group_size)
        else:
            got = self.read(BUCKETS_HEADER_BYTES, src=off, dep=dep)
            if got is None:
                return
            h_op, h = got
            bucket0 = self.read(group, src=h + 16, dep=h_op)
            if bucket0 is not None:
                regions.append(bucket0)
                second = (h + 16, h_op, layout.group_size)
                if layout.overflow_offset + PTR_SIZE <= group:
                    overflow = (bucket0[1] + layout.overflow_offset, bucket0[0], 0)
        key_type = pointer_to(key) if layout.key_indirect else key
        elem_type = pointer_to(elem) if layout.elem_indirect else elem
        self._slots(regions, layout, key_type, elem_type, group, depth, queue)
        for later, where in ((self.spare, second), (self.spare_last, overflow)):
            if where is not None:
                later.append(partial(self._spare_group, where, group, layout, key_type, elem_type, depth))

    def _spare_group(self, where: tuple[int, int, int], group: int, layout, key_type: GoType, elem_type: GoType,
                     depth: int, queue: deque) -> None:
        src, dep, offset = where
        got = self.read(group, src=src, dep=dep, offset=offset)
        if got is not None:
            self._slots([got], layout, key_type, elem_type, group, depth, queue)

    @staticmethod
    def _slots(regions: list[tuple[int, int]], layout, key_type: GoType, elem_type: GoType, group: int,
               depth: int, queue: deque) -> None:
        """Queues every slot's key and value of the groups or buckets read into `regions`."""
        for op_index, block in regions:
            for slot in range(MAP_SLOTS):
                if layout.swiss:
                    key_at = layout.keys_offset + slot * layout.slot_size
                    elem_at = key_at + layout.elem_offset
                else:
                    key_at = layout.keys_offset + slot * layout.key_size
                    elem_at = layout.elems_offset + slot * layout.elem_size
                if key_at + layout.key_size <= group:
                    queue.append(_Follow(key_type, block + key_at, depth + 1, op_index))
                if elem_at + layout.elem_size <= group:
                    queue.append(_Follow(elem_type, block + elem_at, depth + 1, op_index))


def plan_side(locations: list[abi.ValueLocation], arch_abi: abi.ArchABI, capacity: int, limits: Limits,
              layouts: Layouts) -> SidePlan:
    """Images for every value first (so no value loses its words to what others point to), then reads, breadth first."""
    builder = _SideBuilder(capacity, arch_abi, limits, layouts)
    values = [builder.image(location) for location in locations]
    builder.follow_all(values)
    builder.side.values = values
    builder.side.extent = (builder.cursor + 7) // 8 * 8
    return builder.side


def plan_function(signature: Signature, arch: str, limits: Limits | None = None, layouts: Layouts | None = None,
                  source: str = "dwarf", results_at_entry: bool = False) -> FunctionPlan:
    """Both capture plans of one function.

    results_at_entry: the entry instruction is the `ret` (the whole body is
    `ret`): one probe captures everything, so the entry plan takes the
    results too and the return plan is empty."""
    limits = (limits or Limits()).validated()
    layouts = layouts or Layouts()
    arch_abi = abi.arch_abi(arch)
    params, results = abi.assign(signature, arch_abi)
    if results_at_entry:
        entry = plan_side(params + results, arch_abi, _const("GT_ARGS_DATA"), limits, layouts)
        ret = SidePlan()
    else:
        entry = plan_side(params, arch_abi, _const("GT_ARGS_DATA"), limits, layouts)
        ret = plan_side(results, arch_abi, _const("GT_RES_DATA"), limits, layouts)
    return FunctionPlan(signature.name, signature, entry, ret, limits, layouts, source)


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


def sig_template(arg_size: int | None) -> str:
    """A --sig to start from, one uintptr word per 8 bytes of the argument area pclntab records."""
    if arg_size is None or arg_size < 0:
        return "--sig 'func(...) (...)'"
    words = arg_size // PTR_SIZE
    params = ", ".join(f"w{i}" for i in range(words))
    return f"--sig 'func({params}{' uintptr' if words else ''})'"


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


def plan_args(gobin, patterns: list[str], *, sig=None, limits: Limits | None = None, types=None) -> ArgsPlan:
    """Probe sites and capture plans of the functions matching `patterns`.

    Signatures come from --sig (`sig`: one text or a list, see _split_sigs),
    else from DWARF, else (methods) from the binary's runtime type data
    (`types`, a gotrace.binary.rtypes.RuntimeTypes; opened here when None).
    Every signature is checked against the argument size pclntab records for
    the function: a mismatch is an error for --sig and a skip (with the
    reason) otherwise. --sig types are checked against the runtime type data's
    signature of the method where it has one (gotrace.capture.sigcheck).
    """
    from gotrace.binary.rtypes import RuntimeTypes, experiments_of
    from gotrace.capture.sigcheck import check_against, resolver_for
    from gotrace.capture.sigparse import parse_signature

    limits = (limits or Limits()).validated()
    layouts = Layouts(gobin.build.version_tuple, experiments_of(gobin.go_version))
    functions = gobin.match(patterns)
    sigs = [sig] if isinstance(sig, str) else list(sig or ())
    sig_texts = _split_sigs(sigs, functions)
    traced, skipped = [], []
    dwarf = None if len(sig_texts) == len(functions) else gobin.dwarf
    runtime_types = types

    def rtypes() -> RuntimeTypes:
        nonlocal runtime_types
        if runtime_types is None:
            runtime_types = RuntimeTypes.of(gobin)
        return runtime_types

    for fn, probes in zip(functions, gobin.probe_sites_of(functions)):
        if not probes.traceable:
            skipped.append((fn.name, probes.reason))
            continue
        expected = pclntab_arg_size(gobin, fn)
        if fn.name in sig_texts:
            signature = parse_signature(sig_texts[fn.name], fn.name, resolve=resolver_for(gobin, rtypes))
            known = rtypes().method_signature(fn.name)
            if known is not None:
                check_against(signature, known, fn.name)
            source = "sig"
        else:
            signature = dwarf.function_signature(gobin.debug_name(fn)) if dwarf is not None else None
            if signature is not None:
                signature = dataclasses.replace(signature, name=fn.name)
            source = "dwarf"
            if signature is None:
                signature = rtypes().method_signature(fn.name)
                source = "types"
            if signature is None:
                why = ("the binary has no DWARF (stripped or -ldflags=-w)" if dwarf is None
                       else "DWARF does not describe it")
                if "(" not in fn.name and "." in fn.name.rpartition("/")[2].partition(".")[2]:
                    why += " and its receiver type has no method table"
                elif "(" in fn.name:
                    why += " and its receiver type's method table does not list it"
                skipped.append((fn.name, f"{why}: give its signature, e.g. {sig_template(expected)} "
                                         f"({expected if expected is not None else '?'} bytes of arguments)"))
                continue
        width = abi.arg_width(signature, gobin.arch)
        if expected is not None and expected >= 0 and width != expected:
            what = {"sig": "--sig", "dwarf": "the DWARF signature", "types": "the type data's signature"}[source]
            message = (f"{what} of {fn.name} needs {width} bytes of argument area but the function "
                       f"has {expected} (pclntab): ")
            if source == "sig":
                raise UsageError(message + "check the parameter and result types, receiver first for methods")
            skipped.append((fn.name, message + f"give its signature, e.g. {sig_template(expected)}"))
            continue
        at_entry = probes.sites.entry_vaddr in probes.sites.return_vaddrs
        traced.append((probes, plan_function(signature, gobin.arch, limits, layouts, source, at_entry)))
    if not traced:
        name, reason = skipped[0]
        more = f" (and {len(skipped) - 1} more)" if len(skipped) > 1 else ""
        raise PatternError(f"{name} cannot be traced for arguments: {reason}{more}")
    return ArgsPlan(traced, skipped)
