"""`gotrace doctor`: what this host can trace and with which kernel mechanisms, as data.

Everything is tried, nothing assumed: gotrace.bpf.features makes each kind
of map, helper call and link once; then each tracing command's programs (the
shipped object, or the fallback compiled with clang) are loaded into the
kernel as the command would load them, and freed. Nothing is attached to
any running process.
"""

from __future__ import annotations

from gotrace.bpf import cache, compiler, features
from gotrace.bpf.image import ProgramRejected
from gotrace.bpf.syscalls import BPF_TRACE_UPROBE_MULTI, Syscalls
from gotrace.bpf.uprobes import NO_EXPECTED_ATTACH_TYPE
from gotrace.errors import GotraceError
from gotrace.output.doctor import CommandLine, DoctorReport, FeatureLine, ProgramLine

# The programs each tracing command loads (gotrace.trace.latency / gotrace.trace.args).
COMMAND_PROGRAMS = {"latency": ("latency", (b"gt_entry", b"gt_return")),
                    "args": ("args128", (b"gt_args_entry", b"gt_args_return"))}  # the largest loop bound


def doctor() -> DoctorReport:
    host = features.probe_host()
    arch = compiler.host_arch()
    privileges = host.privileges
    user = f"root (euid {privileges.euid})" if privileges.euid == 0 else f"uid {privileges.euid}"
    feature_lines = tuple(FeatureLine(c.name, c.available, c.needs, c.detail) for c in host.checks)

    attach_type = BPF_TRACE_UPROBE_MULTI if host.uprobe_multi.available else NO_EXPECTED_ATTACH_TYPE
    programs: dict[str, ProgramLine] = {}
    if arch is not None and host.bpf_syscall.available:
        for command, (program, names) in COMMAND_PROGRAMS.items():
            programs[command] = _try_program(program, arch, names, attach_type)

    commands = [CommandLine("funcs", True, "reads the binary only (no BPF, no root)", ())]
    for command in COMMAND_PROGRAMS:
        commands.append(_command_line(command, host, arch, programs.get(command)))
    return DoctorReport(host.kernel_release, host.machine, arch, user, tuple(sorted(privileges.capabilities)),
                        privileges.can_trace, host.lockdown, feature_lines, tuple(programs.values()),
                        tuple(commands))


def _try_program(program: str, arch: str, names: tuple[bytes, ...], attach_type: int) -> ProgramLine:
    """Find program's image as a tracer would, create its maps and load its programs; free them."""
    detail = ""
    try:
        found = cache.find_program(program, arch)
    except GotraceError as exc:
        return ProgramLine(program, None, None, None, str(exc))
    try:
        _load(found, names, attach_type)
    except ProgramRejected as exc:
        if found.origin != "shipped":
            return ProgramLine(program, found.origin, str(found.path), False, exc.reason)
        detail = f"the shipped object was refused: {exc.reason}"
        try:
            found = cache.find_program(program, arch, use_shipped=False)
            _load(found, names, attach_type)
        except GotraceError as again:
            return ProgramLine(program, "shipped", str(found.path), False, f"{detail}; fallback: {again}")
    except GotraceError as exc:
        return ProgramLine(program, found.origin, str(found.path), False, str(exc))
    return ProgramLine(program, found.origin, str(found.path), True, detail)


def _load(found: cache.Found, names: tuple[bytes, ...], attach_type: int) -> None:
    with found.image.instantiate(Syscalls()) as loaded:
        for name in names:
            loaded.load_program(name, attach_type)


def _command_line(command: str, host: features.HostFeatures, arch: str | None,
                  program: ProgramLine | None) -> CommandLine:
    missing: list[str] = []
    if arch is None:
        missing.append(f"a supported machine (x86_64 or aarch64, not {host.machine})")
    if not host.privileges.can_trace:
        missing.append(f"root or {' and '.join(host.privileges.missing)} (run as root: sudo)")
    elif not host.bpf_syscall.available:  # with the privileges, something else refuses bpf()
        missing.append(f"bpf() ({host.bpf_syscall.detail}; seccomp or a user namespace?)")
    if host.cookies.available is False:
        missing.append("BPF cookies (Linux 5.15+)")
    if host.uprobe_multi.available is False and host.perf_link.available is False:
        missing.append("a way to attach uprobes: uprobe_multi links (Linux 6.6+) or perf-event links "
                       f"({host.perf_link.detail})")
    if command == "args":
        if host.ring_buffer.available is False:
            missing.append("BPF ring buffer (Linux 5.8+)")
        if host.probe_read_kernel.available is False:
            why = "kernel lockdown=confidentiality" if host.lockdown == "confidentiality" else "Linux 5.5+"
            missing.append(f"bpf_probe_read_kernel ({why})")
    if program is not None and program.loads is False:
        missing.append(f"its BPF programs loading ({program.detail})")
    elif program is not None and program.origin is None:
        missing.append(program.detail)
    ok = not missing and program is not None and bool(program.loads)
    if host.uprobe_multi.available:
        attach = "uprobe_multi links"
    else:
        attach = "perf-event links (one per probe site; detaching many takes a while)"
    source = {"shipped": "the shipped BPF object", "cached": "BPF compiled here with clang (cached)",
              "compiled": "BPF compiled here with clang"}.get(program.origin if program else None, "")
    data = {"latency": "per-CPU histograms in the kernel", "args": "ring buffer"}[command]
    mechanism = ", ".join(part for part in (attach, data, source) if part)
    notes: tuple[str, ...] = ()
    if ok and host.uprobe_multi.available is False:
        notes = (f"uprobe_multi links ({host.uprobe_multi.detail}; Linux 6.6+ attaches all sites in one call)",)
    return CommandLine(command, ok, mechanism, tuple(missing) if not ok else notes)


def exit_code(report: DoctorReport) -> int:
    """0 when this host can trace, 3 when it cannot (the CLI contract)."""
    return 0 if report.can_trace else 3

