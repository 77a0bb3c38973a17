"""Compiled BPF programs as the kernel takes them (ProgramImage), and their maps and programs in the kernel (LoadedImage).

A ProgramImage is independent of any process: each program's instructions
with every map reference written as an index into the image's maps, the
specification of those maps, and the license. It comes from a BPF object
file (gotrace.bpf.elfobj) and is kept across runs in gotrace.bpf.cache's
format (to_bytes/from_bytes, checksummed).

ProgramImage.instantiate() creates the maps (a run may give some of them
another max_entries: the maps sized by the number of traced functions) and
returns a LoadedImage, which loads programs on demand (a gotrace.bpf.uprobes
ProgramLoader) and holds the map fds that user space reads and writes.

When the kernel refuses a map or a program, the error names what is
missing: a map type or a helper function this kernel is too old for,
privileges, lockdown; any other verifier refusal is a ProgramRejected, which
a caller may answer by loading the programs compiled another way.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import mmap
import os
import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from gotrace.bpf.syscalls import BPF_PROG_TYPE_KPROBE, Syscalls
from gotrace.errors import CapabilityError

FORMAT_VERSION = 2

INSN_SIZE = 8
LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW: two instruction slots
PSEUDO_MAP_FD = 1  # src_reg of an ld_imm64 whose imm is a map fd

LOCKDOWN_FILE = Path("/sys/kernel/security/lockdown")

# What the programs need from the kernel that an older one lacks: map types and helper functions (by number).
MAP_TYPE_FEATURES = {27: ("BPF ring buffer maps", "5.8")}
HELPER_FEATURES = {
    112: ("bpf_probe_read_user", "5.5"),
    113: ("bpf_probe_read_kernel", "5.5"),
    130: ("bpf_ringbuf_output (ring buffer)", "5.8"),
    174: ("bpf_get_attach_cookie (BPF cookies)", "5.15"),
}
_UNKNOWN_HELPER = re.compile(r"(?:unknown func|invalid func|program of this type cannot use helper) \S*?#(\d+)")


@dataclass(frozen=True)
class MapSpec:
    """What BPF_MAP_CREATE needs to make a map."""

    name: str
    map_type: int
    key_size: int
    value_size: int
    max_entries: int
    flags: int


@dataclass(frozen=True)
class ProgramImage:
    """Compiled programs, independent of any process: map references are indexes into `maps`."""

    license: str
    maps: tuple[MapSpec, ...]
    programs: dict[str, bytes]  # name -> instructions, each map reference's imm = its index in maps

    def instantiate(self, sys: Syscalls | None = None, max_entries: Mapping[str, int] | None = None) -> LoadedImage:
        """Create the maps, those named in max_entries with that size (CapabilityError if the kernel refuses).

        Programs load when asked for (LoadedImage.load_program).
        """
        sizes = dict(max_entries or {})
        unknown = set(sizes) - {spec.name for spec in self.maps}
        if unknown:
            raise KeyError(f"no map called {', '.join(sorted(unknown))} in these programs")
        specs = tuple(replace(spec, max_entries=sizes[spec.name]) if spec.name in sizes else spec
                      for spec in self.maps)
        return LoadedImage(replace(self, maps=specs), sys or Syscalls())

    # -- serialisation (gotrace.bpf.cache's entries) -------------------------

    def to_bytes(self) -> bytes:
        payload = {
            "format": FORMAT_VERSION,
            "license": self.license,
            "maps": [vars(spec) for spec in self.maps],
            "programs": {name: base64.b64encode(insns).decode("ascii") for name, insns in self.programs.items()},
        }
        body = json.dumps(payload, sort_keys=True).encode()
        return json.dumps({"sha256": hashlib.sha256(body).hexdigest(), "body": body.decode()}).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> ProgramImage:
        """The image stored in data; ValueError (or KeyError/TypeError) when it is damaged or of another format."""
        outer = json.loads(data)
        body = outer["body"].encode()
        if hashlib.sha256(body).hexdigest() != outer["sha256"]:
            raise ValueError("checksum mismatch")
        payload = json.loads(body)
        if payload["format"] != FORMAT_VERSION:
            raise ValueError("another format")
        maps = tuple(MapSpec(**spec) for spec in payload["maps"])
        programs = {name: base64.b64decode(text, validate=True) for name, text in payload["programs"].items()}
        image = cls(str(payload["license"]), maps, programs)
        image.check()
        return image

    def check(self) -> None:
        """ValueError unless every program is whole instructions whose map references name maps of the image."""
        for insns in self.programs.values():
            for _, map_index in map_references(insns):
                if not 0 <= map_index < len(self.maps):
                    raise ValueError("map reference out of range")


def map_references(insns: bytes) -> Iterable[tuple[int, int]]:
    """(byte offset, imm) of every ld_imm64 of a map fd in insns; ValueError if insns are not whole instructions."""
    if len(insns) % INSN_SIZE or not insns:
        raise ValueError("not a whole number of BPF instructions")
    offset = 0
    while offset < len(insns):
        code, regs, _, imm = struct.unpack_from("<BBhi", insns, offset)
        if code == LD_IMM64:
            if regs >> 4 == PSEUDO_MAP_FD:
                yield offset, imm
            offset += 2 * INSN_SIZE
        else:
            offset += INSN_SIZE


def with_map_imms(insns: bytes, new_imm) -> bytes:
    """insns with every map reference's imm replaced by new_imm(old imm)."""
    patched = bytearray(insns)
    for offset, imm in list(map_references(insns)):
        struct.pack_into("<i", patched, offset + 4, new_imm(imm))
    return bytes(patched)


# -- why the kernel refused -----------------------------------------------------


class ProgramRejected(CapabilityError):
    """The verifier refused a program for a reason other than a missing kernel feature (its `reason`)."""

    def __init__(self, program: str, reason: str) -> None:
        self.program = program
        self.reason = reason
        super().__init__(f"the kernel's verifier refused the BPF program {program} ({reason})")


def lockdown_mode(path: Path = LOCKDOWN_FILE) -> str | None:
    """The kernel lockdown mode in force ("none", "integrity", "confidentiality"), or None when not reported."""
    try:
        text = path.read_text()
    except OSError:
        return None
    found = re.search(r"\[(\w+)\]", text)
    return found.group(1) if found else None


def missing_helper(verifier_log: str) -> tuple[str, str] | None:
    """(helper, Linux version) when the verifier refused a call to a helper function this kernel lacks."""
    found = _UNKNOWN_HELPER.search(verifier_log)
    if not found:
        return None
    number = int(found.group(1))
    return HELPER_FEATURES.get(number, (f"BPF helper #{number}", "a newer kernel"))


def map_refused(exc: OSError, spec: MapSpec) -> CapabilityError:
    """The one-line error for a map the kernel would not create."""
    if exc.errno in (errno.EPERM, errno.EACCES):
        return CapabilityError(f"the kernel refused to create a BPF map ({os.strerror(exc.errno)}): run as root "
                               "(sudo), or give gotrace CAP_BPF and CAP_PERFMON")
    if exc.errno == errno.EINVAL and spec.map_type in MAP_TYPE_FEATURES:
        what, since = MAP_TYPE_FEATURES[spec.map_type]
        return CapabilityError(f"this kernel ({os.uname().release}) has no {what}: gotrace needs Linux {since}+ "
                               f"for the map {spec.name}")
    if exc.errno == errno.ENOMEM:
        return CapabilityError(f"the kernel could not allocate the BPF map {spec.name} ({spec.max_entries} entries, "
                               "out of memory or over the locked-memory limit): trace fewer functions")
    return CapabilityError(f"the kernel refused the BPF map {spec.name} ({os.strerror(exc.errno)}): gotrace needs "
                           "Linux 5.15+ with BPF")


def program_refused(exc: OSError, name: str) -> CapabilityError:
    """The one-line error for a program the kernel would not load: a missing feature, privileges, or ProgramRejected."""
    log = getattr(exc, "verifier_log", "") or ""
    if exc.errno == errno.EPERM and not log:
        return CapabilityError(f"the kernel refused to load the BPF program {name} ({os.strerror(exc.errno)}): run as "
                               "root (sudo), or give gotrace CAP_BPF and CAP_PERFMON")
    helper = missing_helper(log)
    if helper is not None:
        what, since = helper
        if what.startswith("bpf_probe_read_kernel") and lockdown_mode() == "confidentiality":
            return CapabilityError(f"kernel lockdown (confidentiality, {LOCKDOWN_FILE}) forbids {what} that the BPF "
                                   f"program {name} uses: boot with lockdown=integrity or none to use this command")
        return CapabilityError(f"this kernel ({os.uname().release}) has no {what}: gotrace needs Linux {since}+ "
                               f"for the BPF program {name}")
    reason = exc.strerror or os.strerror(exc.errno)
    return ProgramRejected(name, reason)


class LoadedImage:
    """An image's maps, created, and its programs, loaded on demand; close() frees them. Safe to close twice."""

    def __init__(self, image: ProgramImage, sys: Syscalls) -> None:
        self.image = image
        self._sys = sys
        self._map_fds: list[int] = []
        self._prog_fds: dict[str, int] = {}
        self._mmaps: list[mmap.mmap] = []
        try:
            for spec in image.maps:
                try:
                    fd = sys.map_create(spec.map_type, spec.key_size, spec.value_size, spec.max_entries, spec.flags,
                                        spec.name.encode())
                except OSError as exc:
                    raise map_refused(exc, spec) from None
                self._map_fds.append(fd)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> LoadedImage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def map_spec(self, name: str) -> MapSpec:
        """The specification the map called name was created with (KeyError if there is none)."""
        for spec in self.image.maps:
            if spec.name == name:
                return spec
        raise KeyError(name)

    def map_fd(self, name: str) -> int:
        """The fd of the map called name (KeyError if the programs reference no such map)."""
        for spec, fd in zip(self.image.maps, self._map_fds):
            if spec.name == name:
                return fd
        raise KeyError(name)

    def map_memory(self, name: str) -> memoryview:
        """The values of an array map created with BPF_F_MMAPABLE, as u64 words (a value of n words is words
        [i * n, (i + 1) * n)), mapped into this process (read and write): no system call per element. Valid
        until close()."""
        spec = self.map_spec(name)
        if spec.value_size % 8:
            raise ValueError(f"map {name}: values of {spec.value_size} bytes, not u64 words")
        words = spec.max_entries * spec.value_size // 8
        length = (words * 8 + mmap.PAGESIZE - 1) // mmap.PAGESIZE * mmap.PAGESIZE
        try:
            memory = mmap.mmap(self.map_fd(name), length, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError as exc:
            raise CapabilityError(f"cannot map the BPF map {name} into memory ({exc.strerror}): "
                                  "gotrace needs Linux 5.5+") from None
        self._mmaps.append(memory)
        return memoryview(memory).cast("Q")[:words]

    def load_program(self, name: bytes, expected_attach_type: int) -> int:
        """A gotrace.bpf.uprobes ProgramLoader: loads program name as kprobe-type, replacing an earlier load of it.

        expected_attach_type < 0 (uprobes.NO_EXPECTED_ATTACH_TYPE) loads it for perf-event links.
        """
        stale = self._prog_fds.pop(name.decode(), None)
        if stale is not None:
            os.close(stale)
        insns = with_map_imms(self.image.programs[name.decode()], self._map_fds.__getitem__)
        try:
            fd = self._sys.prog_load(BPF_PROG_TYPE_KPROBE, insns, self.image.license.encode(), name,
                                     max(expected_attach_type, 0))
        except OSError as exc:
            raise program_refused(exc, name.decode()) from None
        self._prog_fds[name.decode()] = fd
        return fd

    def close(self) -> None:
        mmaps, self._mmaps = self._mmaps, []
        for memory in mmaps:
            with contextlib.suppress(BufferError):  # a view still held elsewhere: the mapping goes with it
                memory.close()
        fds = list(self._prog_fds.values()) + self._map_fds
        self._prog_fds, self._map_fds = {}, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
