"""Patterns: a Go name is exact (the `*` of a pointer is literal), globs are documented, suggestions help.

The rules are gotrace.binary.patterns' docstring; these tests hold it to
them on name lists written out here, and on the service's real names.
"""

from __future__ import annotations

import pytest

from gotrace.binary.gobinary import GoBinary
from gotrace.binary.patterns import compile_pattern, suggest
from gotrace.errors import PatternError

NAMES = [
    "net/http.(*conn).serve",
    "net/http.(*http2serverConn).serve",
    "net/http.(*Transport).RoundTrip",
    "net/http.(*http2Transport).RoundTrip",
    "net/http.(*http2unencryptedTransport).RoundTrip",
    "net/http.Header.Get",
    "net/http.serve",
    "main.serve",
    "main.main",
    "main.Map[go.shape.*uint8]",
    "main.Map[go.shape.uint8]",
    "main.Map[go.shape.[]uint8]",
    "go:struct { *bufio.Reader; io.Writer }.Read",
    "go:struct { XbufioX.Reader; io.Writer }.Read",
]


def matches(pattern: str) -> list[str]:
    compiled = compile_pattern(pattern)
    if not compiled.is_glob:
        return [n for n in NAMES if n == compiled.name]
    return [n for n in NAMES if compiled.regex.fullmatch(n)]


@pytest.mark.parametrize("name", NAMES)
def test_every_name_is_exact_and_matches_only_itself(name):
    assert compile_pattern(name).is_glob is False
    assert matches(name) == [name]


def test_pointer_receiver_star_is_literal():
    assert matches("net/http.(*Conn).serve") == []     # not (*http2serverConn).serve
    assert matches("net/http.(*Transport).RoundTrip") == ["net/http.(*Transport).RoundTrip"]


@pytest.mark.parametrize("pattern, expected", [
    ("net/http.(*).serve", ["net/http.(*conn).serve", "net/http.(*http2serverConn).serve"]),
    ("net/http.(**).serve", ["net/http.(*conn).serve", "net/http.(*http2serverConn).serve"]),
    ("net/http.(*http2*).serve", ["net/http.(*http2serverConn).serve"]),
    ("net/http.*.serve", ["net/http.(*conn).serve", "net/http.(*http2serverConn).serve"]),
    ("net/http.*serve", ["net/http.(*conn).serve", "net/http.(*http2serverConn).serve", "net/http.serve"]),
    ("*RoundTrip", ["net/http.(*Transport).RoundTrip", "net/http.(*http2Transport).RoundTrip",
                    "net/http.(*http2unencryptedTransport).RoundTrip"]),
    ("net/http.(*T*).RoundTrip", ["net/http.(*Transport).RoundTrip"]),
    ("main.Map[*]", ["main.Map[go.shape.*uint8]", "main.Map[go.shape.uint8]", "main.Map[go.shape.[]uint8]"]),
    ("main.Map[go.shape.*]", ["main.Map[go.shape.*uint8]", "main.Map[go.shape.uint8]", "main.Map[go.shape.[]uint8]"]),
    ("main.?erve", ["main.serve"]),
    ("*", NAMES),
])
def test_documented_globs(pattern, expected):
    assert compile_pattern(pattern).is_glob
    assert matches(pattern) == expected


def test_star_inside_type_arguments_is_a_pointer():
    assert matches("main.Map[go.shape.*uint8]") == ["main.Map[go.shape.*uint8]"]
    assert matches("main.Map[go.shape.*int8]") == []


def test_abi0_suffix_is_input_only():
    pattern = compile_pattern("internal/bytealg.CountString.abi0")
    assert (pattern.name, pattern.abi0, pattern.is_glob) == ("internal/bytealg.CountString", True, False)
    glob = compile_pattern("runtime.mem*.abi0")
    assert glob.abi0 and glob.regex.fullmatch("runtime.memmove")


def test_case_is_suggested_first():
    assert suggest("net/http.(*Conn).serve", NAMES)[0] == "net/http.(*conn).serve"
    assert suggest("net/http.(*transport).RoundTrip", NAMES)[0] == "net/http.(*Transport).RoundTrip"


def test_typo_is_suggested():
    assert suggest("main.srve", NAMES)[0] == "main.serve"
    assert "net/http.(*conn).serve" in suggest("net/http.(*conn).srve", NAMES)


# --- on a real binary ----------------------------------------------------------------


def test_names_of_the_service_match_only_themselves(testbin):
    """Every distinct name of a real build, given as a pattern, matches the functions of that name and no other."""
    with GoBinary.open(testbin("service", "1.27.3", "stripped")) as gobin:
        names = gobin.functions.names
        counts: dict[str, int] = {}
        for name in names:
            counts[name] = counts.get(name, 0) + 1
        for name, count in counts.items():
            assert [fn.name for fn in gobin.match([name])] == [name] * count, name
        assert len(counts) > 7000


def test_abi0_spelling_of_a_go_function_is_refused(testbin):
    with GoBinary.open(testbin("service", "1.27.3", "stripped")) as gobin:
        with pytest.raises(PatternError) as error:
            gobin.match(["main.work.abi0"])
        assert str(error.value).startswith("no function matching 'main.work' in ")
        assert str(error.value).endswith("is assembly (ABI0) code; gotrace lists functions under the runtime's "
                                         "names: give 'main.work' without .abi0")
        [fn] = gobin.match(["internal/bytealg.CountString.abi0"])
        assert fn.name == "internal/bytealg.CountString" and fn.is_asm
