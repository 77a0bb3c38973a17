"""Raw Linux system calls for BPF without bcc: perf_event_open for uprobes, bpf() to create maps, load programs, create links and read and write map elements.

Each call returns a file descriptor or raw bytes, or raises OSError with the
kernel's errno; turning that into a message a user can act on is the caller's
job (gotrace.bpf.uprobes for attaching).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Sequence

from gotrace.errors import CapabilityError

POSSIBLE_CPUS = "/sys/devices/system/cpu/possible"


def possible_cpus(path: str = POSSIBLE_CPUS) -> int:
    """How many CPUs the kernel may ever bring up: a per-CPU map holds one value slot for each."""
    with open(path) as file:
        text = file.read().strip()
    count = 0
    for part in text.split(","):
        low, _, high = part.partition("-")
        count += int(high or low) - int(low) + 1
    return count


def percpu_value_size(value_size: int, ncpus: int) -> int:
    """Bytes of one element of a per-CPU map as user space reads it: each CPU's value padded to 8 bytes."""
    return (value_size + 7) // 8 * 8 * ncpus


def verifier_reason(log: str) -> str:
    """The line of a verifier log that says why a program was refused: the last one before the statistics lines."""
    lines = [line.strip() for line in log.splitlines() if line.strip()]
    while lines and lines[-1].startswith(("processed ", "verification time", "stack depth", "max_states_per_insn")):
        lines.pop()
    return lines[-1] if lines else ""


def _name_bytes(name: bytes) -> bytes:
    return name[: _BPF_OBJ_NAME_LEN - 1].ljust(_BPF_OBJ_NAME_LEN, b"\0")

# Linux ABI numbers (uapi/linux/bpf.h, perf_event.h, asm/unistd.h).
_SYS_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}
_SYS_BPF = {"x86_64": 321, "aarch64": 280}
_PERF_FLAG_FD_CLOEXEC = 1 << 3
_PERF_ATTR_SIZE = 112  # PERF_ATTR_SIZE_VER5
_BPF_MAP_CREATE = 0
_BPF_MAP_LOOKUP_ELEM = 1
_BPF_MAP_UPDATE_ELEM = 2
_BPF_MAP_DELETE_ELEM = 3
_BPF_PROG_LOAD = 5
_BPF_OBJ_GET_INFO_BY_FD = 15
_BPF_MAP_LOOKUP_BATCH = 24
_BPF_MAP_UPDATE_BATCH = 26
_BPF_LINK_CREATE = 28
_BPF_OBJ_NAME_LEN = 16
_MAP_INFO_SIZE = 40  # struct bpf_map_info up to and including name[16]
BPF_PROG_TYPE_KPROBE = 2  # enum bpf_prog_type; uprobe programs are kprobe-type
BPF_PERF_EVENT = 41  # enum bpf_attach_type
BPF_TRACE_UPROBE_MULTI = 48  # enum bpf_attach_type, Linux 6.6+


class Syscalls:
    """perf_event_open and bpf() through libc's syscall(); CapabilityError on a machine gotrace does not support."""

    def __init__(self) -> None:
        machine = os.uname().machine
        if machine not in _SYS_BPF:
            raise CapabilityError(f"gotrace supports x86_64 and aarch64 machines, not {machine}")
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.syscall.restype = ctypes.c_long
        self._nr_perf = _SYS_PERF_EVENT_OPEN[machine]
        self._nr_bpf = _SYS_BPF[machine]

    def _bpf(self, command: int, attr: bytes, size: int, what: str) -> int:
        buf = ctypes.create_string_buffer(attr, size)
        ret = self._libc.syscall(self._nr_bpf, command, buf, size)
        if ret < 0:
            raise OSError(ctypes.get_errno(), f"bpf({what})")
        return ret

    def _bpf_key_present(self, command: int, attr: bytes, what: str) -> bool:
        """A map element command on a key: False when the key is absent (ENOENT), True when it succeeded."""
        try:
            self._bpf(command, attr, 32, what)
        except OSError as exc:
            if exc.errno == errno.ENOENT:
                return False
            raise
        return True

    def map_create(self, map_type: int, key_size: int, value_size: int, max_entries: int, flags: int, name: bytes) -> int:
        """BPF_MAP_CREATE: the fd of a new map (name: at most 15 bytes are kept)."""
        attr = struct.pack("<IIIIIII16s", map_type, key_size, value_size, max_entries, flags, 0, 0, _name_bytes(name))
        return self._bpf(_BPF_MAP_CREATE, attr, 72, "BPF_MAP_CREATE")

    def map_info(self, map_fd: int) -> tuple[int, int, int, int, int, bytes]:
        """BPF_OBJ_GET_INFO_BY_FD of a map: (type, key_size, value_size, max_entries, flags, name)."""
        info = ctypes.create_string_buffer(_MAP_INFO_SIZE)
        attr = struct.pack("<IIQ", map_fd, _MAP_INFO_SIZE, ctypes.addressof(info))
        self._bpf(_BPF_OBJ_GET_INFO_BY_FD, attr, 16, "BPF_OBJ_GET_INFO_BY_FD")
        map_type, _id, key_size, value_size, max_entries, flags, name = struct.unpack_from("<IIIIII16s", info.raw)
        return map_type, key_size, value_size, max_entries, flags, name.rstrip(b"\0")

    def prog_load(self, prog_type: int, insns: bytes, license: bytes, name: bytes, expected_attach_type: int) -> int:
        """BPF_PROG_LOAD: the fd of the verified program.

        On refusal, OSError whose strerror ends with the verifier's reason, and
        whose `verifier_log` attribute (when the kernel gave one) is the whole log.
        """
        insns_buf = ctypes.create_string_buffer(insns, len(insns))
        license_buf = ctypes.create_string_buffer(license)

        def load(log_level: int, log_buf) -> int:
            attr = struct.pack(
                "<IIQQIIQII16sII",
                prog_type,
                len(insns) // 8,
                ctypes.addressof(insns_buf),
                ctypes.addressof(license_buf),
                log_level,
                len(log_buf) if log_buf is not None else 0,
                ctypes.addressof(log_buf) if log_buf is not None else 0,
                0,  # kern_version: unchecked for kprobe programs since Linux 5.0
                0,  # prog_flags
                _name_bytes(name),
                0,  # prog_ifindex
                expected_attach_type,
            )
            return self._bpf(_BPF_PROG_LOAD, attr, 128, "BPF_PROG_LOAD")

        try:
            return load(0, None)
        except OSError as exc:
            if exc.errno != errno.EACCES and exc.errno != errno.EINVAL:
                raise
            first = exc
        log = ctypes.create_string_buffer(1 << 20)  # again with the verifier's log, to say why
        try:
            return load(1, log)
        except OSError:
            pass
        text = log.value.decode("utf-8", "replace")
        refused = OSError(first.errno, f"{os.strerror(first.errno)}: {verifier_reason(text) or 'no verifier log'}")
        refused.verifier_log = text  # type: ignore[attr-defined]
        raise refused

    def map_lookup_elem(self, map_fd: int, key: bytes, value_size: int) -> bytes | None:
        """BPF_MAP_LOOKUP_ELEM: the value under key (value_size bytes; per-CPU maps: see percpu_value_size), None if absent."""
        key_buf = ctypes.create_string_buffer(key, len(key))
        value_buf = ctypes.create_string_buffer(value_size)
        attr = struct.pack("<IIQQQ", map_fd, 0, ctypes.addressof(key_buf), ctypes.addressof(value_buf), 0)
        return value_buf.raw if self._bpf_key_present(_BPF_MAP_LOOKUP_ELEM, attr, "BPF_MAP_LOOKUP_ELEM") else None

    def map_update_elem(self, map_fd: int, key: bytes, value: bytes) -> None:
        """BPF_MAP_UPDATE_ELEM (BPF_ANY): key's value becomes value."""
        key_buf = ctypes.create_string_buffer(key, len(key))
        value_buf = ctypes.create_string_buffer(value, len(value))
        attr = struct.pack("<IIQQQ", map_fd, 0, ctypes.addressof(key_buf), ctypes.addressof(value_buf), 0)
        self._bpf(_BPF_MAP_UPDATE_ELEM, attr, 32, "BPF_MAP_UPDATE_ELEM")

    def map_update_batch(self, map_fd: int, keys: bytes, values: bytes, count: int) -> None:
        """BPF_MAP_UPDATE_BATCH (BPF_ANY): count keys (packed, in order) get the values (packed, in the same order),
        in one call (Linux 5.6+ for arrays)."""
        if count <= 0:
            return
        key_buf = ctypes.create_string_buffer(keys, len(keys))
        value_buf = ctypes.create_string_buffer(values, len(values))
        attr = ctypes.create_string_buffer(
            struct.pack("<QQQQIIQQ", 0, 0, ctypes.addressof(key_buf), ctypes.addressof(value_buf), count, map_fd, 0, 0),
            64)
        ret = self._libc.syscall(self._nr_bpf, _BPF_MAP_UPDATE_BATCH, attr, 64)
        if ret < 0:
            raise OSError(ctypes.get_errno(), "bpf(BPF_MAP_UPDATE_BATCH)")
        done = struct.unpack_from("<I", attr.raw, 32)[0]
        if done != count:
            raise OSError(errno.EIO, f"bpf(BPF_MAP_UPDATE_BATCH): {done} of {count} elements updated")

    def map_delete_elem(self, map_fd: int, key: bytes) -> bool:
        """BPF_MAP_DELETE_ELEM: removes key; False when it was not there."""
        key_buf = ctypes.create_string_buffer(key, len(key))
        attr = struct.pack("<IIQQQ", map_fd, 0, ctypes.addressof(key_buf), 0, 0)
        return self._bpf_key_present(_BPF_MAP_DELETE_ELEM, attr, "BPF_MAP_DELETE_ELEM")

    def perf_uprobe_open(self, pmu_type: int, path: bytes, file_offset: int, pid: int) -> int:
        """A perf event for a uprobe at `file_offset` of `path`; pid -1 means every process."""
        path_buf = ctypes.create_string_buffer(path)
        attr = bytearray(_PERF_ATTR_SIZE)
        struct.pack_into("<IIQQ", attr, 0, pmu_type, _PERF_ATTR_SIZE, 0, 1)  # type, size, config, sample_period
        struct.pack_into("<I", attr, 48, 1)  # wakeup_events
        struct.pack_into("<QQ", attr, 56, ctypes.addressof(path_buf), file_offset)  # config1=uprobe_path, config2=probe_offset
        attr_buf = ctypes.create_string_buffer(bytes(attr), _PERF_ATTR_SIZE)
        # perf_event_open refuses pid == cpu == -1; uprobe events do not filter by cpu.
        cpu = 0 if pid == -1 else -1
        fd = self._libc.syscall(self._nr_perf, attr_buf, pid, cpu, -1, _PERF_FLAG_FD_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "perf_event_open(uprobe)")
        return fd

    def link_create_perf(self, prog_fd: int, perf_fd: int, cookie: int) -> int:
        """BPF_LINK_CREATE: runs prog_fd on the perf event, with bpf_get_attach_cookie() == cookie."""
        attr = ctypes.create_string_buffer(struct.pack("<IIIIQ", prog_fd, perf_fd, BPF_PERF_EVENT, 0, cookie), 64)
        fd = self._libc.syscall(self._nr_bpf, _BPF_LINK_CREATE, attr, 64)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "bpf(BPF_LINK_CREATE)")
        return fd

    def link_create_uprobe_multi(
        self, prog_fd: int, path: bytes, file_offsets: Sequence[int], cookies: Sequence[int], pid: int
    ) -> int:
        """BPF_LINK_CREATE(BPF_TRACE_UPROBE_MULTI): prog_fd at every offset of path, each with its cookie; pid 0: all."""
        count = len(file_offsets)
        path_buf = ctypes.create_string_buffer(path)
        offsets_buf = (ctypes.c_uint64 * count)(*file_offsets)
        cookies_buf = (ctypes.c_uint64 * count)(*cookies)
        attr = ctypes.create_string_buffer(
            struct.pack(
                "<IIIIQQQQIII",
                prog_fd,
                0,  # target_fd
                BPF_TRACE_UPROBE_MULTI,
                0,  # flags
                ctypes.addressof(path_buf),
                ctypes.addressof(offsets_buf),
                0,  # ref_ctr_offsets
                ctypes.addressof(cookies_buf),
                count,
                0,  # uprobe_multi.flags: entry probes (never BPF_F_UPROBE_MULTI_RETURN)
                pid,
            ),
            128,
        )
        fd = self._libc.syscall(self._nr_bpf, _BPF_LINK_CREATE, attr, 128)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "bpf(BPF_LINK_CREATE uprobe_multi)")
        return fd

    def map_lookup_batch(self, map_fd: int, key_size: int, value_size: int, max_entries: int) -> tuple[bytes, bytes, int]:
        """Every (key, value) of a map with BPF_MAP_LOOKUP_BATCH: (keys, values, count) as raw bytes."""
        chunk = min(max_entries, 16384)
        keys = ctypes.create_string_buffer(key_size * chunk)
        values = ctypes.create_string_buffer(value_size * chunk)
        in_batch = ctypes.c_uint64(0)
        out_batch = ctypes.c_uint64(0)
        key_parts: list[bytes] = []
        value_parts: list[bytes] = []
        total = 0
        first = True
        while True:
            attr = ctypes.create_string_buffer(
                struct.pack(
                    "<QQQQIIQQ",
                    0 if first else ctypes.addressof(in_batch),
                    ctypes.addressof(out_batch),
                    ctypes.addressof(keys),
                    ctypes.addressof(values),
                    chunk,  # count (in: room, out: filled)
                    map_fd,
                    0,  # elem_flags
                    0,  # flags
                ),
                64,
            )
            ret = self._libc.syscall(self._nr_bpf, _BPF_MAP_LOOKUP_BATCH, attr, 64)
            err = ctypes.get_errno() if ret < 0 else 0
            if ret < 0 and err != errno.ENOENT:
                raise OSError(err, "bpf(BPF_MAP_LOOKUP_BATCH)")
            count = struct.unpack_from("<I", attr.raw, 32)[0]
            key_parts.append(keys.raw[: key_size * count])
            value_parts.append(values.raw[: value_size * count])
            total += count
            if err == errno.ENOENT:  # no more elements
                break
            in_batch.value = out_batch.value
            first = False
        return b"".join(key_parts), b"".join(value_parts), total
