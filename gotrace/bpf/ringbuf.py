"""Reads a BPF ring buffer map (BPF_MAP_TYPE_RINGBUF) through its mmap'ed pages, without bcc.

The kernel lays a ring buffer out as one read-write page holding the
consumer position, then one read-only page holding the producer position,
then the data area mapped twice in a row, so a record that wraps around the
end is contiguous in the second mapping. Each record starts with an 8-byte
header: u32 length (bit 31: still being written, bit 30: discarded) and u32
page offset; its data follows, and the next record starts at the next
multiple of 8. The reader hands out the data of every committed record and
then advances the consumer position, which frees the space.

Waiting is epoll on the map's fd: the kernel makes it readable when records
are committed (with the default, adaptive wake-up of bpf_ringbuf_output).
"""

from __future__ import annotations

import mmap
import select
import struct

_BUSY = 1 << 31
_DISCARD = 1 << 30
_HEADER_SIZE = 8
_POSITION = struct.Struct("<Q")
_LENGTH = struct.Struct("<I")


class RingBuffer:
    """The consumer side of one ring buffer map; close() unmaps it (the map fd stays its owner's)."""

    def __init__(self, map_fd: int, data_size: int) -> None:
        if data_size <= 0 or data_size & (data_size - 1):
            raise ValueError(f"a ring buffer's size is a power of two, not {data_size}")
        page = mmap.PAGESIZE
        self._size = data_size
        self._mask = data_size - 1
        self._consumer = mmap.mmap(map_fd, page, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=0)
        try:
            self._producer = mmap.mmap(map_fd, page + 2 * data_size, mmap.MAP_SHARED, mmap.PROT_READ, offset=page)
        except BaseException:
            self._consumer.close()
            raise
        self._data_start = page
        self._epoll = select.epoll()
        self._epoll.register(map_fd, select.EPOLLIN)

    def __enter__(self) -> RingBuffer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Unmap the pages and stop waiting on the fd. Safe to call twice."""
        for resource in ("_epoll", "_producer", "_consumer"):
            obj = getattr(self, resource, None)
            if obj is not None:
                obj.close()
                setattr(self, resource, None)

    def wait(self, timeout_s: float) -> bool:
        """Wait up to timeout_s for committed records; True when some may be waiting."""
        if self.pending_bytes():
            return True
        return bool(self._epoll.poll(timeout_s))

    def pending_bytes(self) -> int:
        """Bytes between the consumer and the producer position (records not yet read)."""
        return _POSITION.unpack_from(self._producer, 0)[0] - _POSITION.unpack_from(self._consumer, 0)[0]

    def read(self, limit: int | None = None) -> list[bytes]:
        """The data of every committed record waiting (at most `limit`), in order; frees their space."""
        consumer = _POSITION.unpack_from(self._consumer, 0)[0]
        producer = _POSITION.unpack_from(self._producer, 0)[0]
        records: list[bytes] = []
        while consumer < producer and (limit is None or len(records) < limit):
            at = self._data_start + (consumer & self._mask)
            length = _LENGTH.unpack_from(self._producer, at)[0]
            if length & _BUSY:
                break  # reserved, not yet committed: it and everything after it wait
            size = length & ~(_BUSY | _DISCARD)
            if not length & _DISCARD:
                records.append(self._producer[at + _HEADER_SIZE:at + _HEADER_SIZE + size])
            consumer += (size + _HEADER_SIZE + 7) & ~7
        _POSITION.pack_into(self._consumer, 0, consumer)
        return records
