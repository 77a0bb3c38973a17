"""A Go executable as gotrace sees it: version, arch, functions, probe sites.

This is the analysis layer's front door. It knows nothing of BPF: it answers
"which functions match these patterns", "where do their probes go" and "where
are g.goid and g.stack.hi", from the ELF file alone. Everything is lazy:
opening reads the ELF header and the build info; the function table, names
and DWARF are read on first use.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

from gotrace.binary import sitecache
from gotrace.binary.buildinfo import BuildInfo, read_buildinfo
from gotrace.binary.elffile import ElfImage
from gotrace.errors import BinaryError
from gotrace.binary.functab import FunctionTable, GoFunction, read_code
from gotrace.binary.patterns import compile_pattern, match_indices, no_match_error, not_abi0_error
from gotrace.binary.pclntab import Pclntab
from gotrace.binary.sites import REASON_ABI0, REASON_ASM, ProbeSites, find_probe_sites


@dataclass(frozen=True)
class FunctionProbes:
    """One function with the sites its uprobes go to."""

    function: GoFunction
    sites: ProbeSites

    @property
    def traceable(self) -> bool:
        return self.sites.reason is None

    @property
    def reason(self) -> str | None:
        return self.sites.reason


class GoBinary:
    """An opened Go ELF executable (amd64 or arm64, Go 1.17+)."""

    def __init__(self, path: str | os.PathLike, *, display_path: str | None = None):
        self.path = os.fspath(path)
        self.display_path = display_path or self.path
        self.elf = ElfImage(self.path)
        self.arch = self.elf.arch
        self.build: BuildInfo = read_buildinfo(self.elf)

    @classmethod
    def open(cls, path: str | os.PathLike, *, display_path: str | None = None) -> "GoBinary":
        return cls(path, display_path=display_path)

    def close(self) -> None:
        dwarf = self.__dict__.pop("dwarf", None)
        if dwarf is not None:
            dwarf.close()
        self.elf.close()

    def __enter__(self) -> "GoBinary":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def go_version(self) -> str:
        return self.build.go_version

    @functools.cached_property
    def pclntab(self) -> Pclntab:
        return Pclntab.find(self.elf)

    @functools.cached_property
    def functions(self) -> FunctionTable:
        return FunctionTable(self.elf, self.pclntab)

    @functools.cached_property
    def symbolizer(self):
        """pcs (ELF vaddrs) to Go functions, files and lines, inlined calls expanded (pclntab only)."""
        from gotrace.binary.symbolize import Symbolizer

        return Symbolizer(self.elf, self.pclntab, self.build.version_tuple)

    # -- matching -----------------------------------------------------------------

    def match(self, patterns: list[str] | tuple[str, ...]) -> list[GoFunction]:
        """Functions matching any pattern, in entry order. Each pattern must match
        something: PatternError (with suggestions, or the inlining diagnosis) if not."""
        table = self.functions
        chosen: set[int] = set()
        for text in patterns:
            pattern = compile_pattern(text)
            # A function's own name is exact even where it reads as a glob; it needs no decoding of every name.
            found = sorted(set(table.indices_named(pattern.name)))
            if not found and pattern.is_glob:
                found = match_indices(pattern, table.names, table.normalized_names, table.indices_named)
            if pattern.abi0 and found:
                found = [i for i in found if self.is_assembly(table.function(i))]
                if not found:
                    raise not_abi0_error(text, self.display_path)
            if not found:
                inlined = not pattern.is_glob and self.pclntab.has_name_string(pattern.name)
                raise no_match_error(text, self.display_path, table.names, inlined)
            chosen.update(found)
        return [table.function(i) for i in sorted(chosen)]

    def exactly_named(self, patterns: list[str] | tuple[str, ...]) -> set[int]:
        """Entry vaddrs of the functions some pattern names exactly (its own name, not a glob's match)."""
        table = self.functions
        return {table.function(i).entry_vaddr for text in patterns
                for i in table.indices_named(compile_pattern(text).name)}

    @functools.cached_property
    def content_sha256(self) -> str:
        """The sha256 of the binary's bytes, in hex: what identifies it to what gotrace keeps between runs."""
        return sitecache.content_sha256(self.path)

    def all_functions(self) -> list[GoFunction]:
        table = self.functions
        return [table.function(i) for i in range(len(table))]

    # -- probe sites --------------------------------------------------------------

    def probe_sites(self, fn: GoFunction) -> FunctionProbes:
        code = read_code(self.elf, fn)
        return FunctionProbes(fn, find_probe_sites(code, fn.entry_vaddr, self.arch, name=fn.name, is_asm=fn.is_asm))

    def probe_sites_of(self, fns: list[GoFunction]) -> list[FunctionProbes]:
        """probe_sites() of each function, in order; for many functions (sitecache.MIN_FUNCTIONS), those found
        by an earlier run on the same binary's bytes are read from the cache instead, and the others added."""
        if len(fns) < sitecache.MIN_FUNCTIONS:
            return [self.probe_sites(fn) for fn in fns]
        cache = sitecache.SiteCache.open(self.content_sha256, self.arch)
        out = []
        for fn in fns:
            sites = cache.get(fn.entry_vaddr)
            if sites is None:
                sites = self.probe_sites(fn).sites
                cache.put(fn.entry_vaddr, sites)
            out.append(FunctionProbes(fn, sites))
        cache.save()
        return out

    def is_assembly(self, fn: GoFunction) -> bool:
        """True for assembly (ABI0) code: what `.symtab` names `NAME.abi0`, as far as
        pclntab's flag and the code tell (amd64 ABI0 wrappers load g from TLS)."""
        return fn.is_asm or self.probe_sites(fn).reason in (REASON_ASM, REASON_ABI0)

    @functools.cached_property
    def _symtab_names(self) -> dict[int, str]:
        """entry vaddr -> first `.symtab` function name there (empty without .symtab)."""
        names: dict[int, str] = {}
        for name, vaddr, _ in self.elf.iter_function_symbols():
            names.setdefault(vaddr, name.decode("utf-8", "replace"))
        return names

    def debug_name(self, fn: GoFunction) -> str:
        """The name DWARF and debuggers give `fn`: `.symtab`'s spelling when the binary has one
        (Go 1.18-1.19 shapes spelled out where pclntab writes `[...]`, `.abi0`), else the runtime's."""
        return self._symtab_names.get(fn.entry_vaddr, fn.name)

    def file_offset(self, vaddr: int) -> int:
        """The file offset of an ELF vaddr in the executable segment (where a uprobe is placed, PIE or not)."""
        return self.elf.vaddr_to_file_offset(vaddr)

    def file_offsets(self, vaddrs) -> list[int]:
        """The file offset of each vaddr, as uprobes are placed (also for PIE)."""
        return self.elf.vaddrs_to_file_offsets(vaddrs)

    # -- runtime layout -------------------------------------------------------------

    @functools.cached_property
    def dwarf(self):
        """The binary's DwarfInfo, opened once and closed with the binary; None without (usable) DWARF."""
        if self.elf.get_section(".debug_info") is None and self.elf.get_section(".zdebug_info") is None:
            return None  # stripped: no need to load a DWARF reader
        from gotrace.binary.dwarfinfo import DwarfInfo

        try:
            return DwarfInfo.open(self.path)
        except BinaryError:  # damaged DWARF: the runtime offsets fall back to the version table
            return None

    @functools.cached_property
    def runtime_offsets(self):
        """Offsets of g.goid and g.stack.hi: DWARF when present, else the version table."""
        from gotrace.binary.runtime_offsets import runtime_offsets

        return runtime_offsets(self.build.version_tuple, self.dwarf)
