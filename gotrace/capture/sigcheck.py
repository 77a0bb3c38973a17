"""--sig against the binary: named types looked up in it, and a signature checked against what its type data records.

A named type in --sig (`*http.Request`, `http.ResponseWriter`,
`net/http.Request`) is looked up in the binary's DWARF, else in its runtime
type data; a name two packages share is refused with both import paths. When
the traced function is a method whose receiver type's method table lists it,
the runtime type data gives its real signature: --sig must agree with it
parameter by parameter (same kind, size and, for interfaces, whether it has
methods; a named type must be the same type, an unnamed spelling must have the
same layout). A mismatch is one line saying which parameter and what the
binary has, because a wrong type makes gotrace read memory as what it is not.
"""

from __future__ import annotations

from collections.abc import Callable

from gotrace.binary.gotypes import GoType, Kind, Signature
from gotrace.errors import UsageError


def resolver_for(gobin, rtypes: Callable[[], object]) -> Callable[[str], GoType | None]:
    """resolve(name) for gotrace.capture.sigparse: DWARF first, then the runtime type data (opened lazily)."""

    def resolve(name: str) -> GoType | None:
        dwarf = gobin.dwarf
        if dwarf is not None and "/" not in name:
            found = dwarf.find_type(name)
            if found is not None:
                return found
        types = rtypes()
        vaddrs = list(dict.fromkeys(types.find(name)))
        if not vaddrs:
            return None
        if len(vaddrs) > 1:
            paths = sorted({types.pkgpath(v) or "?" for v in vaddrs})
            raise UsageError(f"--sig: {name} names {len(vaddrs)} types (packages {', '.join(paths)}): "
                             f"write it with its package path, e.g. {paths[0]}.{name.rpartition('.')[2]}")
        return types.type_at(vaddrs[0])

    return resolve


def _describe(t: GoType) -> str:
    if t.kind is Kind.INTERFACE:
        return f"{t.name} (an interface {'without' if t.empty else 'with'} methods)"
    return f"{t.name} ({t.kind.name.lower()}, {t.size} bytes)"


def _same_layout(mine: GoType, theirs: GoType, seen: set | None = None) -> bool:
    """True when a value of `theirs` can be read as `mine`: same kind and size, recursively for struct
    fields and array elements; interfaces agree on having methods; named types have the same name."""
    seen = set() if seen is None else seen
    if (id(mine), id(theirs)) in seen:
        return True
    seen.add((id(mine), id(theirs)))
    if mine.kind is not theirs.kind:
        return False
    if mine.kind is Kind.INTERFACE:
        return bool(mine.empty) == bool(theirs.empty)
    if mine.size and mine.size != theirs.size:
        return False
    if mine.kind is Kind.POINTER:
        if mine.elem is None or theirs.elem is None or mine.elem.size == 0:
            return mine.elem is None or mine.elem.name.lstrip("*") == theirs.elem.name.lstrip("*") \
                or mine.elem.name.rpartition(".")[2] == theirs.elem.name.rpartition(".")[2]
        return _same_layout(mine.elem, theirs.elem, seen)
    if mine.kind is Kind.STRUCT:
        if len(mine.fields) != len(theirs.fields):
            return False
        return all(a.offset == b.offset and _same_layout(a.type, b.type, seen)
                   for a, b in zip(mine.fields, theirs.fields))
    if mine.kind in (Kind.ARRAY, Kind.SLICE, Kind.CHAN):
        if mine.kind is Kind.ARRAY and mine.length != theirs.length:
            return False
        return mine.elem is None or theirs.elem is None or _same_layout(mine.elem, theirs.elem, seen)
    if mine.kind is Kind.MAP:
        return all(a is None or b is None or _same_layout(a, b, seen)
                   for a, b in ((mine.key, theirs.key), (mine.elem, theirs.elem)))
    return True


def check_against(sig: Signature, known: Signature, func_name: str) -> None:
    """UsageError (one line) when --sig `sig` disagrees with the binary's signature `known` of func_name."""
    for what, mine, theirs in (("parameters (receiver first)", sig.params, known.params),
                               ("results", sig.results, known.results)):
        if len(mine) != len(theirs):
            listed = ", ".join(p.type.name for p in theirs) or "none"
            raise UsageError(f"--sig gives {func_name} {len(mine)} {what.split(' ')[0]} but the binary's type data "
                             f"has {len(theirs)}: {listed}")
        for position, (a, b) in enumerate(zip(mine, theirs)):
            if not _same_layout(a.type, b.type):
                label = "receiver" if what.startswith("param") and position == 0 else \
                    f"{'parameter' if what.startswith('param') else 'result'} {position + 1} ({a.name})"
                raise UsageError(f"--sig does not match {func_name}: its {label} is {_describe(a.type)} in --sig "
                                 f"but {_describe(b.type)} in the binary's type data")
