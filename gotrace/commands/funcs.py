"""`gotrace funcs`: the functions of a binary with their probe sites, as data."""

from __future__ import annotations

from dataclasses import dataclass

from gotrace.binary.gobinary import FunctionProbes, GoBinary


@dataclass(frozen=True)
class FuncListing:
    binary: str
    go_version: str
    module_path: str | None
    arch: str
    total_functions: int
    patterns: tuple[str, ...]
    entries: list[tuple[FunctionProbes, int]]   # (probes, file offset of the entry)

    def to_json(self) -> dict:
        """The contract's object; `returns` are offsets from the entry. Extra keys:
        `module` (the main module's path), and per function `entry_site` (offset
        of the post-prologue entry probe) and `file_offset`."""
        functions = []
        for probes, file_offset in self.entries:
            fn, sites = probes.function, probes.sites
            functions.append({
                "name": fn.name,
                "entry": fn.entry_vaddr,
                "size": fn.size,
                "returns": [vaddr - fn.entry_vaddr for vaddr in sites.return_vaddrs],
                "traceable": probes.traceable,
                "reason": probes.reason,
                "entry_site": None if sites.entry_vaddr is None else sites.entry_vaddr - fn.entry_vaddr,
                "file_offset": file_offset,
            })
        return {"binary": self.binary, "go_version": self.go_version, "arch": self.arch,
                "module": self.module_path, "functions": functions}


def describe_functions(gobin: GoBinary, patterns: list[str]) -> FuncListing:
    functions = gobin.match(patterns) if patterns else gobin.all_functions()
    file_offsets = gobin.file_offsets([fn.entry_vaddr for fn in functions])
    entries = [(gobin.probe_sites(fn), file_offset) for fn, file_offset in zip(functions, file_offsets)]
    return FuncListing(gobin.display_path, gobin.go_version, gobin.build.module_path, gobin.arch,
                       len(gobin.functions),
                       tuple(patterns), entries)
