"""The running kernel agrees with gotrace.binary.uprobe_insn on which sites it refuses to uprobe.

For caddy (a stripped Go 1.26 binary of 62,000 functions, installed by
scripts/thirdparty) and the amd64 builds of testdata/service, every site
gotrace would probe (each function's entry site and return sites) and every
function's first instruction is grouped by its first three bytes (prefixes,
REX/VEX, opcode, ModRM: what the kernel's decision depends on). One site of
each group is attached for real, plus every site gotrace calls refused
(each alone; the others together, halving the set to find any the kernel
refuses), with uprobe_multi links as gotrace attaches, filtered to this test's
own process, which maps the binary so that the kernel analyses the
instruction at attach time (with no process mapping it the kernel defers the
analysis and the attach succeeds). Then:

* gotrace says refused  <=>  the kernel's answer is ENOTSUPP (524);
* gotrace says probeable <=> the link is created.

Runs only as root with BPF (marked bpf): under CI a skip is a failure.
"""

from __future__ import annotations

import errno
import mmap
import os
import struct
from pathlib import Path

import pytest

from support import gobuild
from gotrace.binary.gobinary import GoBinary
from gotrace.binary.uprobe_insn import REFUSAL_ERRNO, refusal

pytestmark = pytest.mark.bpf

REPO = Path(__file__).resolve().parent.parent
ENOTSUPP = REFUSAL_ERRNO["amd64"]
INSN_WINDOW = 15  # the longest x86 instruction


def candidate_sites(gobin: GoBinary) -> dict[int, tuple[str, str]]:
    """vaddr -> (function name, what the site is) of every site gotrace probes and every function start."""
    sites: dict[int, tuple[str, str]] = {}
    for fn in gobin.all_functions():
        probes = gobin.probe_sites(fn)
        sites.setdefault(fn.entry_vaddr, (fn.name, "first instruction"))
        if probes.sites.entry_vaddr is not None:
            sites[probes.sites.entry_vaddr] = (fn.name, "entry site")
        for vaddr in probes.sites.return_vaddrs:
            sites[vaddr] = (fn.name, "return site")
    return sites


class KernelAttach:
    """One uprobe_multi link per site with an empty BPF program, in this process only."""

    def __init__(self, binary: Path):
        from gotrace.bpf.syscalls import BPF_PROG_TYPE_KPROBE, BPF_TRACE_UPROBE_MULTI, Syscalls

        self.path = os.fsencode(binary)
        self.sys = Syscalls()
        return_zero = struct.pack("<BBhi", 0xB7, 0, 0, 0) + struct.pack("<BBhi", 0x95, 0, 0, 0)  # r0 = 0; exit
        self.prog_fd = self.sys.prog_load(BPF_PROG_TYPE_KPROBE, return_zero, b"GPL", b"gt_refusals",
                                          BPF_TRACE_UPROBE_MULTI)
        self._file = open(binary, "rb")
        # A private read-only mapping: the kernel installs (and first analyses) each probe in it.
        self._map = mmap.mmap(self._file.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ)

    def errno_of(self, file_offsets: list[int]) -> int:
        """0 when the kernel takes uprobes at all `file_offsets` (one link), else its errno."""
        try:
            link = self.sys.link_create_uprobe_multi(self.prog_fd, self.path, file_offsets, [1] * len(file_offsets),
                                                     os.getpid())
        except OSError as exc:
            return exc.errno
        os.close(link)  # each close waits for the kernel to retire the probes: few links keep the test quick
        return 0

    def errnos(self, file_offsets: list[int]) -> list[int]:
        """The errno of each site (0: taken), finding refused ones among many by halving."""
        if not file_offsets:
            return []
        err = self.errno_of(file_offsets)
        if err == 0 or len(file_offsets) == 1:
            return [err] * len(file_offsets)
        half = len(file_offsets) // 2
        return self.errnos(file_offsets[:half]) + self.errnos(file_offsets[half:])

    def close(self) -> None:
        os.close(self.prog_fd)
        self._map.close()
        self._file.close()


def check_against_kernel(binary: Path) -> tuple[dict, dict]:
    """(refused, checked): vaddr -> (name, what, why) of the sites gotrace calls refused, and
    vaddr -> (name, what, gotrace's why or None, kernel errno) of every site attached."""
    with GoBinary.open(binary) as gobin:
        sites = candidate_sites(gobin)
        code = {vaddr: bytes(gobin.elf.read_vaddr(vaddr, INSN_WINDOW)) for vaddr in sites}
        refused = {vaddr: (*sites[vaddr], why) for vaddr in sites if (why := refusal("amd64", code[vaddr]))}
        groups: dict[bytes, int] = {}
        for vaddr in sorted(sites):
            groups.setdefault(code[vaddr][:3], vaddr)
        accepted = sorted(set(groups.values()) - set(refused))
        refused_vaddrs = sorted(refused)
        accepted_offsets = gobin.file_offsets(accepted)
        refused_offsets = gobin.file_offsets(refused_vaddrs)
    kernel = KernelAttach(binary)
    try:
        verdicts = dict(zip(accepted, kernel.errnos(accepted_offsets)))  # all in one link unless one is refused
        verdicts.update((vaddr, kernel.errno_of([offset])) for vaddr, offset in zip(refused_vaddrs, refused_offsets))
    finally:
        kernel.close()
    checked = {vaddr: (*sites[vaddr], refusal("amd64", code[vaddr]), err) for vaddr, err in verdicts.items()}
    return refused, checked


def disagreements(checked: dict) -> list:
    return [(hex(vaddr), name, what, why, errno.errorcode.get(err, err))
            for vaddr, (name, what, why, err) in checked.items()
            if (why is not None and err != ENOTSUPP) or (why is None and err != 0)]


def test_caddy_refusals_agree_with_the_kernel(caddy, record_property):
    refused, checked = check_against_kernel(caddy)
    assert disagreements(checked) == []
    assert len(checked) > 1000

    # The functions whose first instruction the kernel will not take (the 33).
    starts = {name: why for name, what, why in refused.values() if what != "return site"}
    kinds: dict[str, int] = {}
    for why in starts.values():
        kinds[why] = kinds.get(why, 0) + 1
    record_property("caddy_refused_functions", len(starts))
    record_property("caddy_sites_checked", len(checked))
    print(f"\ncaddy: {len(checked)} sites attached, {len(refused)} refused sites in {len(starts)} functions: {kinds}")
    assert len(starts) == 33
    assert kinds == {"lock prefix": 4, "EVEX-encoded opcode 0x6f": 26, "int n": 1, "int3": 2}
    assert starts["internal/runtime/atomic.(*Uint8).And"] == "lock prefix"
    assert not any(what == "return site" for _, what, _ in refused.values())

    # funcs marks each of them, and says the kernel's reason where no earlier reason applies.
    with GoBinary.open(caddy) as gobin:
        for fn in gobin.match(list(starts)):
            probes = gobin.probe_sites(fn)
            assert not probes.traceable, fn.name
        [atomic_and] = gobin.match(["internal/runtime/atomic.(*Uint8).And"])
        assert gobin.probe_sites(atomic_and).reason == "the kernel refuses a uprobe on its entry instruction (lock prefix)"


@pytest.mark.parametrize("version", gobuild.TOOLCHAINS)
def test_service_refusals_agree_with_the_kernel(version):
    refused, checked = check_against_kernel(gobuild.build("service", version, "default", "amd64"))
    assert disagreements(checked) == []
    assert len(checked) > 300
    assert refused  # every Go runtime starts some assembly with an instruction the kernel refuses


def test_hand_encoded_instructions_agree_with_the_kernel(tmp_path):
    """tests/test_uprobe_insn.py's x86 cases, each at its own offset of a file the kernel analyses."""
    from test_uprobe_insn import X86_ACCEPTED, X86_REFUSED

    refused, accepted = [code for code, _ in X86_REFUSED], X86_ACCEPTED
    blob = tmp_path / "insns"
    slot = 32
    blob.write_bytes(b"".join(code.ljust(slot, b"\x90") for code in refused + accepted))
    kernel = KernelAttach(blob)
    try:
        verdicts = [kernel.errno_of([k * slot]) for k in range(len(refused) + len(accepted))]
    finally:
        kernel.close()
    assert verdicts == [ENOTSUPP] * len(refused) + [0] * len(accepted)
