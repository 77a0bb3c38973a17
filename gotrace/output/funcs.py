"""The listing of `gotrace funcs` as data, and its text and JSON (the CLI contract)."""

from __future__ import annotations

from dataclasses import dataclass

from gotrace.binary.gobinary import FunctionProbes


@dataclass(frozen=True)
class FuncListing:
    binary: str
    go_version: str
    module_path: str | None
    arch: str
    total_functions: int
    patterns: tuple[str, ...]
    entries: list[tuple[FunctionProbes, int]]   # (probes, file offset of the entry)


def funcs_json(listing: FuncListing) -> dict:
    """The contract's object; `returns` are offsets from the entry. Extra keys:
    `module` (the main module's path), and per function `entry_site` (offset
    of the post-prologue entry probe) and `file_offset`."""
    functions = []
    for probes, file_offset in listing.entries:
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
    return {"binary": listing.binary, "go_version": listing.go_version, "arch": listing.arch,
            "module": listing.module_path, "functions": functions}


def render_funcs_text(listing: FuncListing, *, show_all: bool) -> str:
    """A header line, then one row per function: entry, size, return sites, name
    and, for a function that cannot be traced, why. Without patterns and
    without `show_all`, the untraceable ones are counted in the header instead
    of listed; with patterns, every match is listed (`show_all` changes
    nothing, and the header says so)."""
    rows = listing.entries if show_all or listing.patterns else [e for e in listing.entries if e[0].traceable]
    hidden = len(listing.entries) - len(rows)
    what = f"{len(listing.entries)} match {' '.join(listing.patterns)}" if listing.patterns else "all listed"
    module = f" module {listing.module_path}," if listing.module_path else ""
    header = (f"{listing.binary}: {listing.go_version} {listing.arch},{module} "
              f"{listing.total_functions} functions, {what}")
    if hidden:
        header += f" ({hidden} not traceable hidden; --all shows them)"
    elif show_all and listing.patterns:
        header += " (--all: with a pattern every match is listed, traceable or not, as without it)"
    lines = [header, f"{'ENTRY':<18} {'SIZE':>7} {'RETS':>4}  FUNCTION"]
    for probes, _ in rows:
        fn, sites = probes.function, probes.sites
        rets = str(len(sites.return_vaddrs)) if sites.return_vaddrs else "-"
        line = f"{fn.entry_vaddr:#018x} {fn.size:>7} {rets:>4}  {fn.name}"
        if probes.reason:
            line += f"  [not traceable: {probes.reason}]"
        lines.append(line)
    return "\n".join(lines) + "\n"
