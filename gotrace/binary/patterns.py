"""Function-name patterns: exact Go names or shell-style globs, and suggestions.

A pattern is a Go function name exactly as the runtime writes it, or a glob
of such names. The characters of a Go name are literal: parentheses, dots,
brackets, and the `*` of a pointer receiver. So a name matches only itself:
`net/http.(*conn).serve` is that one function, never `(*http2serverConn).serve`.

A pattern that is the name of a function of the binary matches the
functions of that name and no other, whatever characters it holds.
Otherwise `?` matches any one character and `*` any run of characters,
except where `*` is the pointer of a type: right after `(` (a pointer
receiver `(*T)`) or a space (`go:struct { *T; U }.M`), and inside `[...]` (a
type argument `[go.shape.*uint8]`). A pointer is always followed by its
type, so a `*` there that is directly followed by `)`, `]`, `,` or the end of
the pattern is a wildcard again:

    'net/http.(*conn).serve'      exactly that method
    'net/http.(*).serve'          `serve` of every pointer receiver in net/http
    'net/http.(*http2*).serve'    of pointer receivers whose type starts with http2
    'net/http.*.serve'            of any receiver, pointer or value (and any
                                  other net/http name ending in .serve)
    'main.(*Server).*'            every method of *Server
    'main.Map[go.shape.*uint8]'   exactly that instantiation
    'main.Map[*]'                 every instantiation of main.Map, as 'main.Map[...]'

`[...]` matches any type arguments, as pclntab of Go 1.18-1.19 writes them.

A pattern also matches the spelling `.symtab` and `go tool nm` use: `.`
where pclntab writes `·`, and `NAME.abi0` for the assembly (ABI0) function
listed as NAME. Names are only ever printed as the runtime writes them.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from gotrace.binary.functab import ABI0_SUFFIX
from gotrace.errors import PatternError, UsageError

MAX_SUGGESTIONS = 3


@dataclass(frozen=True)
class Pattern:
    text: str                    # as the user wrote it
    name: str                    # the name or glob to look up: `.abi0` removed, `·` written `.`
    regex: re.Pattern | None     # None for an exact name
    abi0: bool = False           # written NAME.abi0: only assembly (ABI0) functions match

    @property
    def is_glob(self) -> bool:
        return self.regex is not None


_TYPE_ENDS = frozenset(")],")
_POINTER_AFTER = frozenset("( ")  # `(*T).M`; `go:struct { *T; U }` in the names of promoted methods


def _wildcard_positions(text: str) -> list[int]:
    """Positions of the characters of `text` that are wildcards (see the module's rules)."""
    found, depth = [], 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth = max(depth - 1, 0)
        elif ch == "?":
            found.append(i)
        elif ch == "*":
            pointer_place = depth > 0 or (i > 0 and text[i - 1] in _POINTER_AFTER)
            followed_by_type = i + 1 < len(text) and text[i + 1] not in _TYPE_ENDS
            if not (pointer_place and followed_by_type):
                found.append(i)
    return found


def compile_pattern(text: str) -> Pattern:
    if not text or text.isspace():
        raise UsageError("empty function pattern; give a Go function name such as main.work or a glob such as 'main.*'")
    if any(ch in text for ch in "\0\n\r\t"):
        raise UsageError(f"function pattern {text!r} contains control characters; give a Go function name")
    abi0 = text.endswith(ABI0_SUFFIX) and len(text) > len(ABI0_SUFFIX)
    core = text[:-len(ABI0_SUFFIX)] if abi0 else text
    # The runtime and pclntab write "·" where .symtab (and normalize_name) write ".".
    spelled = core.replace("\u00b7", ".")
    wild = set(_wildcard_positions(spelled))
    if not wild:
        return Pattern(text, spelled, None, abi0)
    parts = []
    for i, ch in enumerate(spelled):
        if i in wild:
            parts.append(".*" if ch == "*" else ".")
        else:
            parts.append(re.escape(ch))
    return Pattern(text, spelled, re.compile("".join(parts), re.DOTALL), abi0)


def match_indices(pattern: Pattern, names: list[str], normalized: list[str],
                  exact_lookup) -> list[int]:
    """Indices of names matching `pattern`; `exact_lookup(name)` serves exact names fast."""
    if not pattern.is_glob:
        return sorted(set(exact_lookup(pattern.name)))
    full = pattern.regex.fullmatch
    return [i for i, (name, norm) in enumerate(zip(names, normalized)) if full(name) or full(norm)]


def _last_component(name: str) -> str:
    return name.rsplit(".", 1)[-1].lower()


def suggest(text: str, names: list[str]) -> list[str]:
    """Up to MAX_SUGGESTIONS names close to `text`: the same name in another case
    (`(*Conn)` for `(*conn)`) first, then near spellings (a typo, a missing pointer receiver...)."""
    pattern = compile_pattern(text)
    wild = set(_wildcard_positions(pattern.name))
    core = "".join(ch for i, ch in enumerate(pattern.name) if i not in wild)
    folded = core.lower()
    same_but_case = sorted({name for name in names if name.lower() == folded and name != core})
    if len(same_but_case) >= MAX_SUGGESTIONS:
        return same_but_case[:MAX_SUGGESTIONS]
    want_last = _last_component(core)
    pkg = core.rsplit(".", 1)[0] if "." in core else ""
    candidates = set()
    for name in names:
        last = _last_component(name)
        if want_last and (want_last in last or last in want_last and len(last) > 2):
            candidates.add(name)
        elif pkg and name.startswith(pkg + "."):
            candidates.add(name)
        if len(candidates) > 20000:
            break
    if not candidates:
        candidates = set(names[:20000])
    by_folded: dict[str, list[str]] = {}
    for name in sorted(candidates):
        by_folded.setdefault(name.lower(), []).append(name)
    close = difflib.get_close_matches(folded, list(by_folded), n=MAX_SUGGESTIONS, cutoff=0.5)
    out = list(same_but_case)
    for key in close:
        out += [name for name in by_folded[key] if name not in out]
    return out[:MAX_SUGGESTIONS]


def no_match_error(text: str, binary_path: str, names: list[str], inlined: bool) -> PatternError:
    """The one-line error for a pattern that matches no function."""
    if inlined:
        return PatternError(
            f"{text} is inlined at every call site in {binary_path}: it has no code of its own to probe; "
            f"trace its callers, or rebuild with -gcflags=all=-l")
    hint = suggest(text, names)
    did_you_mean = f"; did you mean {', '.join(hint)}?" if hint else ""
    return PatternError(
        f"no function matches {text!r} in {binary_path}{did_you_mean} "
        f"(list them with: gotrace funcs {binary_path})")


def not_abi0_error(text: str, binary_path: str) -> PatternError:
    """The error for `NAME.abi0` when functions named NAME exist but none is assembly (ABI0) code."""
    name = text[:-len(ABI0_SUFFIX)]
    return PatternError(
        f"no function matching {name!r} in {binary_path} is assembly (ABI0) code; gotrace lists functions "
        f"under the runtime's names: give {name!r} without {ABI0_SUFFIX}")
