"""Function-name patterns: exact Go names or shell-style globs, and suggestions.

Only `*` and `?` are special. Parentheses, brackets and dots are literal, so
`net/http.(*conn).serve` and `main.Map[...]` mean exactly what they say. A
pattern matches a function when it matches its name as Go writes it or the
normalized spelling (`.abi0` dropped, generic arguments written `[...]`).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

from gotrace.errors import PatternError, UsageError

MAX_SUGGESTIONS = 3


@dataclass(frozen=True)
class Pattern:
    text: str
    regex: re.Pattern | None     # None for an exact name

    @property
    def is_glob(self) -> bool:
        return self.regex is not None


def compile_pattern(text: str) -> Pattern:
    if not text or text.isspace():
        raise UsageError("empty function pattern; give a Go function name such as main.work or a glob such as 'main.*'")
    if any(ch in text for ch in "\0\n\r\t"):
        raise UsageError(f"function pattern {text!r} contains control characters; give a Go function name")
    # The runtime and pclntab write "·" where .symtab (and normalize_name) write ".".
    spelled = text.replace("\u00b7", ".")
    if "*" not in text and "?" not in text:
        return Pattern(spelled, None)
    parts = []
    for ch in spelled:
        if ch == "*":
            parts.append(".*")
        elif ch == "?":
            parts.append(".")
        else:
            parts.append(re.escape(ch))
    return Pattern(text, re.compile("".join(parts), re.DOTALL))


def match_indices(pattern: Pattern, names: list[str], normalized: list[str],
                  exact_lookup) -> list[int]:
    """Indices of names matching `pattern`; `exact_lookup(name)` serves exact names fast."""
    if not pattern.is_glob:
        return sorted(set(exact_lookup(pattern.text)))
    full = pattern.regex.fullmatch
    return [i for i, (name, norm) in enumerate(zip(names, normalized)) if full(name) or full(norm)]


def _last_component(name: str) -> str:
    return name.rsplit(".", 1)[-1].lower()


def suggest(text: str, names: list[str]) -> list[str]:
    """Up to MAX_SUGGESTIONS names close to `text` (a typo, a missing pointer receiver...)."""
    core = text.replace("*", "").replace("?", "")
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
    return difflib.get_close_matches(core, sorted(candidates), n=MAX_SUGGESTIONS, cutoff=0.5)


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
