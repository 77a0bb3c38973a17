"""`gotrace doctor`'s report as data, and its text and JSON forms."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class FeatureLine:
    name: str
    available: bool | None  # None: not tried
    needs: str
    detail: str


@dataclass(frozen=True)
class ProgramLine:
    """Where a command's BPF programs come from on this host, and whether this kernel loads them."""

    program: str  # "latency", "args"
    origin: str | None  # "shipped", "cached", "compiled"; None when there are none
    path: str | None
    loads: bool | None  # None: not tried
    detail: str  # why not, or what happened on the way (a refused shipped object)


@dataclass(frozen=True)
class CommandLine:
    command: str
    ok: bool
    mechanism: str  # how it will trace here
    missing: tuple[str, ...]  # what stops it, each a short phrase with the fix


@dataclass(frozen=True)
class DoctorReport:
    kernel_release: str
    machine: str
    arch: str | None  # Go's name of the machine's architecture; None when gotrace does not support it
    user: str  # "root (euid 0)" or "uid 1000"
    capabilities: tuple[str, ...]
    privileges_ok: bool
    lockdown: str | None
    features: tuple[FeatureLine, ...]
    programs: tuple[ProgramLine, ...]
    commands: tuple[CommandLine, ...]

    @property
    def can_trace(self) -> bool:
        """True when at least one tracing command can run here (exit 0), else exit 3."""
        return any(c.ok for c in self.commands if c.command != "funcs")


def _mark(available: bool | None) -> str:
    return {True: "yes", False: "NO", None: "?"}[available]


def render_doctor_text(report: DoctorReport) -> str:
    tracing = [c.command for c in report.commands if c.ok and c.command != "funcs"]
    verdict = (f"this host can trace ({', '.join(tracing)})" if report.can_trace
               else "this host cannot trace (see what is missing below)")
    lines = [f"gotrace doctor: {verdict}", "", "host"]
    arch = f" ({report.arch})" if report.arch else " (not supported: gotrace runs on x86_64 and aarch64)"
    lines.append(f"  kernel      {report.kernel_release} {report.machine}{arch}")
    caps = " ".join(report.capabilities) or "no tracing capabilities"
    lines.append(f"  privileges  {report.user}; {caps}{'' if report.privileges_ok else '  <- not enough'}")
    lockdown = report.lockdown or "not reported (securityfs not mounted, or no lockdown support)"
    lines.append(f"  lockdown    {lockdown}")
    lines += ["", "kernel features (each tried, not guessed)"]
    width = max(len(f.name) for f in report.features)
    for f in report.features:
        why = f"  ({f.detail})" if f.detail else ""
        lines.append(f"  {_mark(f.available):<3}  {f.name:<{width}}  needs {f.needs}{why}")
    if report.programs:
        lines += ["", f"BPF programs ({report.arch})"]
        for p in report.programs:
            if p.origin is None:
                where = "none"
            else:
                where = {"shipped": "shipped object", "cached": "compiled here with clang, cached",
                         "compiled": "compiled here with clang just now"}[p.origin] + f" {p.path}"
            loads = {True: "loads", False: "REFUSED", None: "not tried"}[p.loads]
            lines.append(f"  {p.program:<8}  {where}: {loads}" + (f" ({p.detail})" if p.detail else ""))
    lines += ["", "commands"]
    for c in report.commands:
        status = "ok " if c.ok else "NO "
        text = c.mechanism if c.ok else "missing: " + "; ".join(c.missing)
        lines.append(f"  {c.command:<8}  {status} {text}")
        if c.ok and c.missing:
            lines.append(f"  {'':<8}      (also: {'; '.join(c.missing)})")
    return "\n".join(lines) + "\n"


def doctor_json(report: DoctorReport) -> dict:
    out = asdict(report)
    out["can_trace"] = report.can_trace
    return out
