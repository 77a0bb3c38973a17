"""`gotrace funcs`: the functions of a binary with their probe sites, as data."""

from __future__ import annotations

from gotrace.binary.gobinary import GoBinary
from gotrace.commands.target import listing_target, open_binary
from gotrace.output.funcs import FuncListing


def describe_functions(gobin: GoBinary, patterns: list[str]) -> FuncListing:
    """The functions of gobin matching patterns (all when none), each with its probe sites and entry file offset."""
    functions = gobin.match(patterns) if patterns else gobin.all_functions()
    file_offsets = gobin.file_offsets([fn.entry_vaddr for fn in functions])
    entries = list(zip(gobin.probe_sites_of(functions), file_offsets))
    return FuncListing(gobin.display_path, gobin.go_version, gobin.build.module_path, gobin.arch,
                       len(gobin.functions), tuple(patterns), entries)


def funcs(args: tuple[str, ...], pid: int | None) -> FuncListing:
    """`gotrace funcs TARGET [PATTERN]...` (or `-p PID [PATTERN]...`)."""
    binary, patterns = listing_target(args, pid)
    with open_binary(binary, pid) as gobin:
        return describe_functions(gobin, patterns)
