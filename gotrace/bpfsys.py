"""Raw Linux system calls that bcc 0.26 does not wrap the way gotrace needs: perf_event_open for uprobes, BPF_LINK_CREATE and BPF_MAP_LOOKUP_BATCH.

Each call returns a file descriptor or raw bytes, or raises OSError with the
kernel's errno; turning that into a message a user can act on is the caller's
job (gotrace.uprobes for attaching).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Sequence

from gotrace.errors import CapabilityError

# Linux ABI numbers (uapi/linux/bpf.h, perf_event.h, asm/unistd.h).
_SYS_PERF_EVENT_OPEN = {"x86_64": 298, "aarch64": 241}
_SYS_BPF = {"x86_64": 321, "aarch64": 280}
_PERF_FLAG_FD_CLOEXEC = 1 << 3
_PERF_ATTR_SIZE = 112  # PERF_ATTR_SIZE_VER5
_BPF_MAP_LOOKUP_BATCH = 24
_BPF_LINK_CREATE = 28
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
