"""Checks that this process may trace (privileges, bpf() allowed, open files), naming exactly what is missing; and kernel-header lookup for tools built on bcc.

Every failure is a CapabilityError (exit 3) whose one-line message says what
to do. gotrace itself needs no kernel headers and no bcc: its BPF programs
are compiled objects (gotrace.bpf.cache). use_kernel_headers() is for code
that still compiles with bcc (scripts/bench's floor of empty bcc uprobes):
when the running kernel has no headers under /lib/modules but
scripts/kernel-headers built a tree for it, it sets BCC_KERNEL_SOURCE to that
tree for this process. ensure_open_files() raises this process's
RLIMIT_NOFILE when probes need more descriptors (root may exceed the hard
limit).
"""

from __future__ import annotations

import errno
import os
import resource
import subprocess
from dataclasses import dataclass
from pathlib import Path

from gotrace.bpf.syscalls import Syscalls
from gotrace.errors import CapabilityError

HEADERS_CACHE = Path("/var/cache/gotrace/kernel-headers")
MODULES_DIR = Path("/lib/modules")
UPROBE_PMU_TYPE = Path("/sys/bus/event_source/devices/uprobe/type")
TRACEFS_DIR = Path("/sys/kernel/tracing")
PROC_STATUS = Path("/proc/self/status")
NR_OPEN = Path("/proc/sys/fs/nr_open")

_DEBIAN_ARCH = {"x86_64": "amd64", "aarch64": "arm64"}
BPF_MAP_TYPE_ARRAY = 2  # enum bpf_map_type

# Capability numbers (linux/capability.h) that decide whether BPF tracing is allowed.
CAP_SYS_ADMIN = 21
CAP_PERFMON = 38
CAP_BPF = 39


@dataclass(frozen=True)
class Privileges:
    """Who this process is to the kernel, as far as loading tracing programs goes."""

    euid: int
    capabilities: frozenset[str]  # of CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF: those in the effective set

    @property
    def can_trace(self) -> bool:
        """Root, CAP_SYS_ADMIN, or both CAP_BPF and CAP_PERFMON (Linux 5.8+) allow uprobes and tracing programs."""
        caps = self.capabilities
        return self.euid == 0 or "CAP_SYS_ADMIN" in caps or {"CAP_BPF", "CAP_PERFMON"} <= caps

    @property
    def missing(self) -> list[str]:
        """What is missing for can_trace, for a message (empty when nothing is)."""
        if self.can_trace:
            return []
        return sorted({"CAP_BPF", "CAP_PERFMON"} - self.capabilities)


def privileges(status_path: Path | None = None) -> Privileges:
    """This process's effective uid and tracing capabilities (from /proc/self/status CapEff)."""
    effective = 0
    try:
        for line in (status_path or PROC_STATUS).read_text().splitlines():
            if line.startswith("CapEff:"):
                effective = int(line.split()[1], 16)
                break
    except (OSError, ValueError, IndexError):
        pass
    names = {"CAP_SYS_ADMIN": CAP_SYS_ADMIN, "CAP_PERFMON": CAP_PERFMON, "CAP_BPF": CAP_BPF}
    return Privileges(os.geteuid(), frozenset(name for name, bit in names.items() if effective >> bit & 1))


def check_can_trace(*, need_tracefs: bool = False) -> None:
    """Raise CapabilityError unless this process may load BPF programs and attach uprobes.

    gotrace attaches through BPF links and never needs tracefs; pass
    need_tracefs=True for code that attaches through bcc's attach_uprobe,
    which needs it to detach (mounted here when missing).
    """
    check_privileges()
    check_bpf_syscall()
    if need_tracefs:
        ensure_tracefs()


def check_privileges(found: Privileges | None = None) -> None:
    """CapabilityError unless this process is root or has CAP_BPF and CAP_PERFMON."""
    found = found or privileges()
    if not found.can_trace:
        raise CapabilityError(
            "tracing needs root to load BPF programs and attach uprobes: run as root (sudo), or give gotrace "
            f"{' and '.join(found.missing)}"
        )


def check_bpf_syscall() -> None:
    """Raise CapabilityError when the kernel refuses bpf() to this process.

    Root is not always enough: a seccomp filter (Docker's default profile
    denies bpf()), a user namespace (rootless containers: uid 0 without
    capabilities over the host kernel) or a kernel built without
    CONFIG_BPF_SYSCALL all refuse it. Creating and closing a one-element
    array map tells, before anything else is tried.
    """
    try:
        fd = Syscalls().map_create(BPF_MAP_TYPE_ARRAY, 4, 4, 1, 0, b"gt_check")
    except OSError as exc:
        err = exc.errno
    else:
        os.close(fd)
        return
    if err == errno.ENOSYS:
        raise CapabilityError("this kernel has no bpf() system call: use a kernel built with CONFIG_BPF_SYSCALL")
    if err in (errno.EPERM, errno.EACCES):
        raise CapabilityError(
            f"the kernel refuses bpf() to gotrace ({os.strerror(err)}): run it as root on the host, not in a "
            "container or user namespace without CAP_BPF and CAP_PERFMON, with bpf() allowed by its seccomp profile"
        )
    raise CapabilityError(f"the kernel refuses to create a BPF map ({os.strerror(err)}): gotrace needs Linux 5.15+ with BPF")


def uprobe_pmu_type() -> int:
    """The perf event type number of the kernel's uprobe PMU; CapabilityError when the kernel has none."""
    try:
        return int(UPROBE_PMU_TYPE.read_text())
    except (OSError, ValueError):
        raise CapabilityError(
            f"this kernel cannot attach uprobes ({UPROBE_PMU_TYPE} is missing): use a kernel built with CONFIG_UPROBE_EVENTS"
        ) from None


def use_kernel_headers() -> Path:
    """The kernel headers bcc will use (for tools built on bcc, not gotrace); sets BCC_KERNEL_SOURCE to gotrace's cached tree when that is the only option."""
    configured = os.environ.get("BCC_KERNEL_SOURCE")
    if configured:
        if not (Path(configured) / "include").is_dir():
            raise CapabilityError(
                f"BCC_KERNEL_SOURCE={configured} holds no kernel headers: unset it or run scripts/kernel-headers"
            )
        return Path(configured)
    release = os.uname().release
    build = MODULES_DIR / release / "build"
    if (build / "include").is_dir():
        return build
    cached = HEADERS_CACHE / release
    if (cached / "include").is_dir():
        os.environ["BCC_KERNEL_SOURCE"] = str(cached)
        return cached
    arch = _DEBIAN_ARCH.get(os.uname().machine, "amd64")
    raise CapabilityError(
        f"bcc needs kernel headers and kernel {release} has none: "
        f"run scripts/kernel-headers (or: apt-get install linux-headers-{arch} linux-headers-{release})"
    )


def tracefs_mounted() -> bool:
    """Whether tracefs is mounted at /sys/kernel/tracing."""
    return (TRACEFS_DIR / "uprobe_events").exists()


def ensure_tracefs() -> None:
    """Mount tracefs at /sys/kernel/tracing when it is missing (root only), else CapabilityError saying how."""
    if tracefs_mounted():
        return
    fix = f"mount -t tracefs nodev {TRACEFS_DIR}"
    if os.geteuid() != 0:
        raise CapabilityError(f"tracefs is not mounted: run `{fix}` as root")
    result = subprocess.run(["mount", "-t", "tracefs", "nodev", str(TRACEFS_DIR)], capture_output=True, text=True)
    if result.returncode != 0 or not tracefs_mounted():
        raise CapabilityError(f"tracefs is not mounted and mounting it failed ({result.stderr.strip()}): run `{fix}`")


def ensure_open_files(count: int, why: str) -> None:
    """Make room for `count` more open files in this process, or raise CapabilityError before any is opened.

    Raises RLIMIT_NOFILE's soft limit (to the hard limit when that is
    enough), and the hard limit too when needed: root may, up to fs.nr_open.
    `why` starts the error message, e.g. "3017 probe sites need a perf event
    and a BPF link each on this kernel".
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        in_use = len(os.listdir("/proc/self/fd"))
    except OSError:
        in_use = 64
    need = in_use + count
    if soft == resource.RLIM_INFINITY or need <= soft:
        return
    if hard == resource.RLIM_INFINITY or need <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return
    try:
        ceiling = int(NR_OPEN.read_text())
    except (OSError, ValueError):
        ceiling = need
    if need <= ceiling:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            return
        except (OSError, ValueError):
            pass  # no CAP_SYS_RESOURCE (not root, or a container without it)
    if need > ceiling:
        fix = f"trace fewer functions (the kernel allows {ceiling} open files per process: fs.nr_open)"
    else:  # not root, or a root without CAP_SYS_RESOURCE (some containers)
        fix = (f"give gotrace a higher hard limit (ulimit -Hn {need} where that is allowed; "
               f"a container: --ulimit nofile={need}), or trace fewer functions")
    raise CapabilityError(f"{why}: {need} open files, over this process's limit of {hard}: {fix}")
