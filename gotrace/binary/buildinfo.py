"""Go version and module path from a binary's `.go.buildinfo` (survives stripping).

Layout (Go's debug/buildinfo): 14-byte magic "\\xff Go buildinf:", byte 14 the
pointer size, byte 15 flags. With flags & 2 (Go 1.18+) the version and module
info follow inline at +32 as uvarint-length-prefixed strings; before that, +16
and +16+ptrSize point at Go string headers (pointer, length).
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

from gotrace.binary.elffile import ElfImage
from gotrace.binary.encoding import read_uvarint
from gotrace.errors import BinaryError

BUILDINFO_MAGIC = b"\xff Go buildinf:"
FLAG_INLINE_STRINGS = 2
MIN_GO = (1, 17)
_VERSION = re.compile(r"go(\d+)\.(\d+)(?:\.(\d+))?")
_MODINFO_SENTINEL_LEN = 16  # modinfo text is wrapped in 16 bytes of marker either side


@dataclass(frozen=True)
class BuildInfo:
    go_version: str                       # as Go writes it: "go1.23.9", "go1.27rc1"
    version_tuple: tuple[int, int, int]   # (1, 23, 9)
    module_path: str | None               # the main module ("example.com/app"), None if unknown
    main_path: str | None                 # the main package path


def parse_go_version(text: str) -> tuple[int, int, int] | None:
    """(major, minor, patch) of "go1.23.9", "go1.21", "go1.22rc1 X:..." or None."""
    m = _VERSION.match(text)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2)), int(m.group(3) or 0)


def _inline_strings(data: bytes) -> list[str]:
    out, pos = [], 32
    for _ in range(2):
        length, pos = read_uvarint(data, pos)
        if pos + length > len(data):
            raise ValueError("string runs past the section")
        out.append(data[pos:pos + length].decode("utf-8", "replace"))
        pos += length
    return out


def _pointed_strings(elf: ElfImage, data: bytes, ptr_size: int) -> list[str]:
    if ptr_size != 8:
        raise ValueError("only 64-bit binaries are supported")
    out = []
    for slot in (16, 16 + ptr_size):
        (header_vaddr,) = struct.unpack_from("<Q", data, slot)
        str_vaddr, length = struct.unpack("<QQ", elf.read_vaddr(header_vaddr, 16))
        out.append(bytes(elf.read_vaddr(str_vaddr, length)).decode("utf-8", "replace") if length else "")
    return out


def _parse_modinfo(modinfo: str) -> tuple[str | None, str | None]:
    if len(modinfo) >= 2 * _MODINFO_SENTINEL_LEN:
        modinfo = modinfo[_MODINFO_SENTINEL_LEN:-_MODINFO_SENTINEL_LEN]
    main_path = module_path = None
    for line in modinfo.splitlines():
        fields = line.split("\t")
        if fields[0] == "path" and len(fields) > 1:
            main_path = fields[1]
        elif fields[0] == "mod" and len(fields) > 1:
            module_path = fields[1]
    return module_path, main_path


def _find_buildinfo(elf: ElfImage) -> bytes | None:
    section = elf.get_section(".go.buildinfo")
    if section is not None:
        data = bytes(elf.section_bytes(section))
        return data if data.startswith(BUILDINFO_MAGIC) else None
    # Section headers stripped: the blob is 16-byte aligned in a writable segment.
    for seg in elf.segments:
        if seg.type != 1 or seg.file_size == 0:
            continue
        blob = bytes(elf.read(seg.file_offset, seg.file_size))
        pos = blob.find(BUILDINFO_MAGIC)
        while pos >= 0:
            if pos % 16 == 0:
                return blob[pos:pos + 4096]
            pos = blob.find(BUILDINFO_MAGIC, pos + 1)
    return None


def read_buildinfo(elf: ElfImage) -> BuildInfo:
    """The Go build info; BinaryError for non-Go binaries and Go older than 1.17."""
    data = _find_buildinfo(elf)
    if data is None:
        raise BinaryError(f"{elf.path}: not a Go binary (no Go build info); gotrace traces programs built by Go 1.17 or newer")
    if len(data) < 32:
        raise BinaryError(f"{elf.path}: truncated Go build info; the file is damaged or incomplete")
    ptr_size, flags = data[14], data[15]
    try:
        if flags & FLAG_INLINE_STRINGS:
            version, modinfo = _inline_strings(data)
        else:
            version, modinfo = _pointed_strings(elf, data, ptr_size)
    except (ValueError, struct.error):
        raise BinaryError(f"{elf.path}: corrupt Go build info; the file is damaged or incomplete") from None
    version_tuple = parse_go_version(version)
    if version_tuple is None:
        raise BinaryError(f"{elf.path}: unrecognised Go version {version!r} in build info")
    if version_tuple[:2] < MIN_GO:
        raise BinaryError(
            f"{elf.path}: built by {version}; gotrace needs Go 1.17 or newer (register ABI), rebuild with a newer Go")
    module_path, main_path = _parse_modinfo(modinfo)
    return BuildInfo(version, version_tuple, module_path, main_path)
