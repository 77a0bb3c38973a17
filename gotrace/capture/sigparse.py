"""Parses --sig 'func(n int, s string) (int, error)' into a Signature for binaries without DWARF.

Go's own syntax for function types: parameters named or not (`func(int,
string)`, `func(a, b int, s string)`), a single result or a parenthesized
list, variadic `...T` (a slice). Types: every predeclared type (`byte`,
`rune`, `any`, `error` too), `unsafe.Pointer`, `*T`, `[]T`, `[N]T`,
`map[K]V`, `chan T`, `func(...) ...`, `interface{}`, interfaces with
methods (`interface{ Header() http.Header; Write([]byte) (int, error) }`,
`interface{ io.Reader }`) and `struct{ a int; b string }`. Named types
(`*http.Request`, `http.ResponseWriter`, `main.Point`, or by package path,
`net/http.Request`) are looked up by the `resolve` callback (the binary's
DWARF, else its runtime type data: gotrace.capture.sigcheck); one it cannot
find is an error, except behind a pointer, where only the address is shown.
For methods, the receiver is the first parameter.
"""

from __future__ import annotations

import re

from collections.abc import Callable

from gotrace.errors import UsageError
from gotrace.binary.gotypes import (
    GoType, Kind, Param, Signature, array_of, basic, chan_of, func_type, interface_type,
    map_of, pointer_to, slice_of, string_type, struct_of,
)

_BASIC = {
    "bool": Kind.BOOL, "int": Kind.INT, "int8": Kind.INT8, "int16": Kind.INT16, "int32": Kind.INT32,
    "int64": Kind.INT64, "uint": Kind.UINT, "uint8": Kind.UINT8, "uint16": Kind.UINT16,
    "uint32": Kind.UINT32, "uint64": Kind.UINT64, "uintptr": Kind.UINTPTR, "float32": Kind.FLOAT32,
    "float64": Kind.FLOAT64, "complex64": Kind.COMPLEX64, "complex128": Kind.COMPLEX128,
    "byte": Kind.UINT8, "rune": Kind.INT32, "unsafe.Pointer": Kind.UNSAFE_POINTER,
}

# Identifiers may be qualified by a package name or an import path: net/http.Request, example.com/x/v2.T.
_TOKEN = re.compile(r"\s*(?:(\.\.\.)|(<-)|([A-Za-z_][A-Za-z0-9_]*(?:[./][A-Za-z0-9_][A-Za-z0-9_\-]*)*)|(\d+)|([()\[\]{},;*\n]))")
_KEYWORDS = ("string", "error", "any", "map", "chan", "func", "struct", "interface")

Resolver = Callable[[str], "GoType | None"]


def _tokenize(text: str) -> list[str]:
    tokens, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if not match or match.end() == pos:
            raise UsageError(f"--sig: cannot read {text[pos:].strip()[:20]!r}; write a Go function type "
                             "such as 'func(n int, s string) (int, error)'")
        tokens.append(match.group(match.lastindex))
        pos = match.end()
    return tokens


class _Parser:
    def __init__(self, text: str, resolve: Resolver | None = None):
        self.text = text
        self.tokens = [t for t in _tokenize(text) if t != "\n"]
        self.pos = 0
        self.resolve = resolve

    def error(self, what: str) -> UsageError:
        near = " ".join(self.tokens[self.pos:self.pos + 3]) or "the end"
        return UsageError(f"--sig: {what} near {near!r}; expected e.g. 'func(n int, s string) (int, error)'")

    def peek(self, ahead: int = 0) -> str | None:
        index = self.pos + ahead
        return self.tokens[index] if index < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise self.error(f"expected {expected!r}" if expected else "unexpected end")
        self.pos += 1
        return token

    # -- types ----------------------------------------------------------

    def type(self) -> GoType:
        token = self.peek()
        if token is None:
            raise self.error("missing type")
        if token == "*":
            self.take()
            elem = self.type_or_named_pointee()
            return pointer_to(elem, f"*{elem.name}")
        if token == "[":
            self.take()
            if self.peek() == "]":
                self.take()
                return slice_of(self.type())
            length = self.take()
            if not length.isdigit():
                raise self.error("array length must be a number")
            self.take("]")
            return array_of(self.type(), int(length))
        if token == "map":
            self.take()
            self.take("[")
            key = self.type()
            self.take("]")
            return map_of(key, self.type())
        if token in ("chan", "<-"):
            self.take()
            if token == "<-":
                self.take("chan")
            elif self.peek() == "<-":
                self.take()
            return chan_of(self.type())
        if token == "func":
            self.take()
            start = self.pos
            self.signature_tail()
            return func_type("func" + "".join(self.tokens[start:self.pos]))
        if token == "interface":
            return self.interface()
        if token == "struct":
            return self.struct()
        if token == "(":
            self.take()
            inner = self.type()
            self.take(")")
            return inner
        self.take()
        if token in _BASIC:
            return basic(_BASIC[token], token if token != "unsafe.Pointer" else None)
        if token == "string":
            return string_type()
        if token == "error":
            return interface_type("error", empty=False)
        if token == "any":
            return interface_type("interface {}", empty=True)
        if not re.fullmatch(r"[A-Za-z_][\w./\-]*", token):
            self.pos -= 1
            raise self.error("expected a type")
        found = self.resolve(token) if self.resolve is not None else None
        if found is None:
            raise UsageError(f"--sig: no type named {token} in the binary's DWARF or runtime type data: "
                             "check the name (as %T prints it, e.g. http.Request), or write its underlying "
                             "type (e.g. struct{ X int; Y string }) or a pointer to it")
        return found

    def type_or_named_pointee(self) -> GoType | None:
        token = self.peek()
        if token is not None and re.fullmatch(r"[A-Za-z_][\w./\-]*", token) and token not in _BASIC \
                and token not in _KEYWORDS:
            self.take()
            found = self.resolve(token) if self.resolve is not None else None
            if found is not None:
                return found
            return GoType(token, Kind.STRUCT, 0, 1)  # unknown: behind a pointer only its name matters
        return self.type()

    def interface(self) -> GoType:
        """`interface{}`, or with method specs and embedded interfaces; only the method names are kept."""
        self.take("interface")
        self.take("{")
        methods: list[str] = []
        parts: list[str] = []
        while self.peek() != "}":
            token = self.take()
            if self.peek() == "(":  # a method: Name(params) results
                start = self.pos
                self.signature_tail()
                methods.append(token)
                parts.append(token + " ".join(self.tokens[start:self.pos]))
            elif token in ("error", "any") or (re.fullmatch(r"[A-Za-z_][\w./\-]*", token) and token not in _KEYWORDS):
                embedded = None if token == "any" else (self.resolve(token) if self.resolve else None)
                if embedded is not None and embedded.kind is not Kind.INTERFACE:
                    self.pos -= 1
                    raise self.error(f"{token} is not an interface")
                if token == "error":
                    methods.append("Error")
                elif embedded is not None and embedded.methods:
                    methods.extend(embedded.methods)
                elif token != "any":
                    methods.append(token)  # an interface we cannot see into: it has methods all the same
                parts.append(token)
            else:
                self.pos -= 1
                raise self.error("expected a method such as Header() http.Header, or an embedded interface")
            if self.peek() == ";":
                self.take()
            elif self.peek() != "}":
                raise self.error("expected ';' or '}' between the interface's methods")
        self.take("}")
        if not methods:
            return interface_type("interface {}", empty=True)
        gotype = interface_type("interface { " + "; ".join(parts) + " }", empty=False)
        gotype.methods = tuple(methods)
        return gotype

    def struct(self) -> GoType:
        self.take("struct")
        self.take("{")
        members: list[tuple[str, GoType]] = []
        while self.peek() != "}":
            names = [self.take()]
            while self.peek() == ",":
                self.take()
                names.append(self.take())
            ftype = self.type()
            members.extend((name, ftype) for name in names)
            if self.peek() == ";":
                self.take()
        self.take("}")
        inside = "; ".join(f"{n} {t.name}" for n, t in members)
        return struct_of(f"struct {{ {inside} }}", members)

    # -- parameter lists ------------------------------------------------

    def params(self, prefix: str) -> list[tuple[str | None, GoType]]:
        """A parenthesized parameter list, Go's rules: all named or none."""
        self.take("(")
        items: list[list] = []  # [name or None, type or None]
        while self.peek() != ")":
            variadic = self.peek() == "..."
            if variadic:
                self.take()
            token, after = self.peek(), self.peek(1)
            named = (not variadic and token is not None and re.fullmatch(r"[A-Za-z_]\w*", token)
                     and token not in _BASIC and token not in _KEYWORDS
                     and after not in (",", ")", None, "."))
            if not variadic and token is not None and re.fullmatch(r"[A-Za-z_]\w*", token) and after in (",", ")") \
                    and token not in _BASIC and token not in ("string", "error", "any"):
                # a lone identifier: a name waiting for a later type (a, b int), or a named type
                self.take()
                items.append([token, None])
            elif named:
                name = self.take()
                if self.peek() == "...":
                    self.take()
                    items.append([name, slice_of(self.type())])
                else:
                    items.append([name, self.type()])
            else:
                gotype = self.type()
                items.append([None, slice_of(gotype) if variadic else gotype])
            if self.peek() == ",":
                self.take()
            elif self.peek() != ")":
                raise self.error("expected ',' or ')'")
        self.take(")")
        has_names = any(name is not None and gotype is not None for name, gotype in items)
        out: list[tuple[str | None, GoType]] = []
        if has_names:
            pending: list[str] = []
            for name, gotype in items:
                if gotype is None:
                    pending.append(name)
                    continue
                if name is None:
                    raise self.error("mixed named and unnamed parameters")
                for waiting in pending:
                    out.append((waiting, gotype))
                pending = []
                out.append((name, gotype))
            if pending:
                raise self.error(f"parameter {pending[-1]} has no type")
        else:
            for name, gotype in items:
                if gotype is None:  # a lone identifier in an unnamed list: a type name
                    found = self.resolve(name) if self.resolve is not None else None
                    if found is None:
                        raise UsageError(f"--sig: no type named {name} in the binary's DWARF or runtime type "
                                         "data: check the name, or write its underlying type or a pointer")
                    gotype = found
                out.append((None, gotype))
        return out

    def signature_tail(self) -> tuple[list, list]:
        params = self.params("~p")
        token = self.peek()
        if token == "(":
            results = self.params("~r")
        elif token is None or token in (",", ")", "]", "}", ";"):
            results = []
        else:
            results = [(None, self.type())]
        return params, results


def parse_signature(text: str, func_name: str = "func", resolve: Resolver | None = None) -> Signature:
    """A Signature from Go function-type syntax; UsageError saying what is wrong.

    resolve(name) gives the GoType of a named type (None: unknown)."""
    parser = _Parser(text, resolve)
    if parser.peek() != "func":
        raise UsageError(f"--sig must start with 'func', e.g. 'func(n int, s string) (int, error)', not {text!r}")
    parser.take()
    params, results = parser.signature_tail()
    if parser.peek() is not None:
        raise parser.error("unexpected text after the signature")
    seen: set[str] = set()
    for name, _ in params + results:
        if name is not None and name != "_" and name in seen:
            raise UsageError(f"--sig: duplicate name {name}")
        seen.add(name)
    params_out = tuple(Param(name if name not in (None, "_") else f"~p{i}", gotype)
                       for i, (name, gotype) in enumerate(params))
    results_out = tuple(Param(name if name not in (None, "_") else f"~r{i}", gotype, is_result=True)
                        for i, (name, gotype) in enumerate(results))
    return Signature(func_name, params_out, results_out, None, True)
