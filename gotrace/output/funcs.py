"""Text output of `gotrace funcs` (latency reports live in gotrace.output.latency)."""

from __future__ import annotations

from gotrace.commands.funcs import FuncListing


def render_funcs_text(listing: FuncListing, *, show_all: bool) -> str:
    """A header line, then one row per function: entry, size, return sites, name
    and, for a function that cannot be traced, why. Without `show_all`, the
    untraceable ones are counted in the header instead of listed."""
    rows = listing.entries if show_all else [e for e in listing.entries if e[0].traceable]
    hidden = len(listing.entries) - len(rows)
    what = f"{len(listing.entries)} match {' '.join(listing.patterns)}" if listing.patterns else "all listed"
    module = f" module {listing.module_path}," if listing.module_path else ""
    header = (f"{listing.binary}: {listing.go_version} {listing.arch},{module} "
              f"{listing.total_functions} functions, {what}")
    if hidden:
        header += f" ({hidden} not traceable hidden; --all shows them)"
    lines = [header, f"{'ENTRY':<18} {'SIZE':>7} {'RETS':>4}  FUNCTION"]
    for probes, _ in rows:
        fn, sites = probes.function, probes.sites
        rets = str(len(sites.return_vaddrs)) if sites.return_vaddrs else "-"
        line = f"{fn.entry_vaddr:#018x} {fn.size:>7} {rets:>4}  {fn.name}"
        if probes.reason:
            line += f"  [not traceable: {probes.reason}]"
        lines.append(line)
    return "\n".join(lines) + "\n"
