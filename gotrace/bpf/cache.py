"""Caches compiled BPF programs across runs, so that a run whose program was compiled before loads it with bpf() alone and never imports bcc (nor runs clang).

An entry is what loading needs: each program's instructions as bcc emitted
them (its map references written as map indexes), the specification of every
map they reference, and the license. It lives in CACHE_DIR
(/var/cache/gotrace/bpf, or the directory the environment variable
GOTRACE_BPF_CACHE names, read once at import) under a key that hashes
everything the instructions depend on: the program's source and header, the
-D constants, the kernel release, the kernel headers bcc used, bcc's
installation and FORMAT_VERSION. Entries are written atomically
(temporary file, then rename) and carry a checksum of their contents; an
entry that is missing, unreadable, damaged or of another format is a miss,
never an error: the caller compiles again and stores a fresh one.

A miss compiles in a short-lived child process (this module run by the same
Python with the caller's sys.path and environment, BCC_KERNEL_SOURCE
included): it imports bcc, runs clang, stores the entry and hands the image
back on its stdout, then exits, so bcc's and clang's memory (about 130 MB)
never stays with the tracer. Its stderr (clang's diagnostics) is kept; its
GotraceErrors come back as the same one-line exceptions.

ProgramImage.instantiate() creates the maps and returns a LoadedImage, which
loads programs on demand (a gotrace.bpf.uprobes ProgramLoader) and holds the map
fds that user space reads and writes.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import importlib.util
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from gotrace import errors
from gotrace import header as probes_header
from gotrace.bpf.syscalls import BPF_PROG_TYPE_KPROBE, Syscalls
from gotrace.errors import CapabilityError, GotraceError

DEFAULT_CACHE_DIR = Path("/var/cache/gotrace/bpf")
CACHE_DIR_ENV = "GOTRACE_BPF_CACHE"
CACHE_DIR = Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR)
FORMAT_VERSION = 1

_INSN_SIZE = 8
_LD_IMM64 = 0x18  # BPF_LD | BPF_IMM | BPF_DW: two instruction slots
_PSEUDO_MAP_FD = 1  # src_reg of an ld_imm64 whose imm is a map fd


@dataclass(frozen=True)
class MapSpec:
    """What BPF_MAP_CREATE needs to make a map again."""

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

    def instantiate(self, sys: Syscalls | None = None) -> LoadedImage:
        """Create the maps (CapabilityError if the kernel refuses); programs load when asked for."""
        return LoadedImage(self, sys or Syscalls())

    # -- serialisation --------------------------------------------------

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
        for insns in programs.values():
            for _, map_index in _map_references(insns):
                if not 0 <= map_index < len(maps):
                    raise ValueError("map reference out of range")
        return image


def _map_references(insns: bytes) -> Iterable[tuple[int, int]]:
    """(byte offset, imm) of every ld_imm64 of a map fd in insns; ValueError if insns are not whole instructions."""
    if len(insns) % _INSN_SIZE or not insns:
        raise ValueError("not a whole number of BPF instructions")
    offset = 0
    while offset < len(insns):
        code, regs, _, imm = struct.unpack_from("<BBhi", insns, offset)
        if code == _LD_IMM64:
            if regs >> 4 == _PSEUDO_MAP_FD:
                yield offset, imm
            offset += 2 * _INSN_SIZE
        else:
            offset += _INSN_SIZE


def _with_map_imms(insns: bytes, new_imm) -> bytes:
    """insns with every map reference's imm replaced by new_imm(old imm)."""
    patched = bytearray(insns)
    for offset, imm in list(_map_references(insns)):
        struct.pack_into("<i", patched, offset + 4, new_imm(imm))
    return bytes(patched)


def from_bcc(bpf, program_names: Iterable[bytes], sys: Syscalls | None = None) -> ProgramImage:
    """The ProgramImage of programs of a compiled bcc.BPF module (its maps read back from the kernel by fd)."""
    from bcc.libbcc import lib

    sys = sys or Syscalls()
    index_of_fd: dict[int, int] = {}
    maps: list[MapSpec] = []

    def index(fd: int) -> int:
        if fd not in index_of_fd:
            map_type, key_size, value_size, max_entries, flags, name = sys.map_info(fd)
            index_of_fd[fd] = len(maps)
            maps.append(MapSpec(name.decode(), map_type, key_size, value_size, max_entries, flags))
        return index_of_fd[fd]

    programs = {name.decode(): _with_map_imms(bpf.dump_func(name), index) for name in program_names}
    license = (lib.bpf_module_license(bpf.module) or b"GPL").decode()
    return ProgramImage(license, tuple(maps), programs)


# -- the cache ------------------------------------------------------------


def cache_key(sources: Iterable[Path], config: dict[str, int], headers_dir: Path) -> str:
    """The key of a program compiled from sources with config (-D constants) on this kernel with these headers."""
    digest = hashlib.sha256(f"gotrace-bpf-cache {FORMAT_VERSION}\n".encode())
    for path in sources:
        data = Path(path).read_bytes()
        digest.update(f"source {Path(path).name} {len(data)}\n".encode() + data)
    for name, value in sorted(config.items()):
        digest.update(f"-D{name}={value}\n".encode())
    digest.update(f"kernel {os.uname().release} {os.uname().machine}\n".encode())
    digest.update(f"headers {_identity(headers_dir / 'include')}\n".encode())
    spec = importlib.util.find_spec("bcc")
    digest.update(f"bcc {_identity(Path(spec.origin)) if spec and spec.origin else None}\n".encode())
    return digest.hexdigest()


def _identity(path: Path) -> str:
    """A path and its modification time (what changes when it is replaced or reinstalled)."""
    try:
        return f"{os.path.realpath(path)} {os.stat(path).st_mtime_ns}"
    except OSError:
        return f"{path} missing"


def load(key: str, cache_dir: Path | None = None) -> ProgramImage | None:
    """The cached image under key; None when there is none or it cannot be used."""
    try:
        return ProgramImage.from_bytes((cache_dir or CACHE_DIR).joinpath(key).read_bytes())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def store(key: str, image: ProgramImage, cache_dir: Path | None = None) -> bool:
    """Write image under key atomically; False (and nothing written) when the cache directory is not writable."""
    directory = cache_dir or CACHE_DIR
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, temp_path = tempfile.mkstemp(prefix=f".{key[:16]}.", dir=directory)
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(image.to_bytes())
            os.replace(temp_path, directory / key)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp_path)
            raise
    except OSError:
        return False
    return True


@dataclass(frozen=True)
class Compiled:
    """What compiled() found or made."""

    image: ProgramImage
    cache_hit: bool
    compiler_peak_rss_kb: int | None  # VmHWM of the child that compiled it on a miss; None on a hit


def compiled(source_path: Path, config: dict[str, int], program_names: Iterable[bytes],
             headers_dir: Path, cache_dir: Path | None = None) -> Compiled:
    """source_path with config: from the cache, else compiled with bcc in a child process (which stores it)."""
    program_names = list(program_names)
    cache_dir = cache_dir or CACHE_DIR
    key = cache_key(sorted(probes_header.PROBES_DIR.glob("*.[ch]")), config, headers_dir)
    image = load(key, cache_dir)
    if image is not None and set(image.programs) == {name.decode() for name in program_names}:
        return Compiled(image, True, None)
    image, peak_rss_kb = compile_in_child(source_path, config, program_names, key, cache_dir)
    return Compiled(image, False, peak_rss_kb)


# -- the compiling child --------------------------------------------------

# Run by `python -I -c`: the caller's sys.path first (so the child imports the same gotrace and bcc), then the child.
_CHILD_BOOTSTRAP = (
    "import json, sys; spec = json.loads(sys.argv[1]); sys.path[:] = spec['sys_path']; "
    "from gotrace.bpf import cache; cache._child_main(spec)"
)


def _compiler_command(spec: dict) -> list[str]:
    return [sys.executable, "-I", "-c", _CHILD_BOOTSTRAP, json.dumps(spec)]


def compile_in_child(source_path: Path, config: dict[str, int], program_names: Iterable[bytes], key: str,
                     cache_dir: Path) -> tuple[ProgramImage, int | None]:
    """(image, the child's peak RSS in kB) of source_path compiled with bcc by a child process that stores it under key.

    The child's GotraceError is raised here as the same exception; a child
    that dies without answering is a CapabilityError saying how it ended.
    """
    spec = {
        "sys_path": sys.path,
        "source_path": str(source_path),
        "config": config,
        "program_names": [name.decode() for name in program_names],
        "key": key,
        "cache_dir": str(cache_dir),
    }
    proc = subprocess.run(_compiler_command(spec), stdin=subprocess.DEVNULL, capture_output=True,
                          env=dict(os.environ))
    try:
        reply = json.loads(proc.stdout)
    except ValueError:
        reply = None
    if proc.returncode != 0 or not isinstance(reply, dict):
        raise _child_failed(proc.returncode, proc.stderr)
    peak_rss_kb = reply.get("peak_rss_kb")
    if "error" in reply:
        error_class = getattr(errors, str(reply["error"]), None)
        if not (isinstance(error_class, type) and issubclass(error_class, GotraceError)):
            error_class = CapabilityError
        raise error_class(" ".join(str(reply.get("message", "")).split()))
    try:
        return ProgramImage.from_bytes(reply["image"].encode()), peak_rss_kb
    except (ValueError, KeyError, TypeError, AttributeError):
        raise CapabilityError("the BPF compiler process answered with a damaged program: run gotrace again") from None


def _child_failed(returncode: int, stderr: bytes) -> CapabilityError:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return CapabilityError(
            f"the BPF compiler process (bcc, clang) was killed by {name} before it finished (out of memory?): "
            "free some memory and run gotrace again")
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    detail = " ".join(lines[-1].split())[:200] if lines else "no message"
    return CapabilityError(f"the BPF compiler process (bcc, clang) failed with exit status {returncode} ({detail}): "
                           "check bcc's installation (python3-bpfcc)")


def _child_main(spec: dict) -> None:
    """The compiling child: compile, store, answer with one JSON object on the stdout it was started with."""
    answer = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything bcc or clang prints goes to stderr, which the parent keeps
    reply: dict[str, object]
    try:
        from gotrace.bpf import compiler as bpfprog

        program_names = [name.encode() for name in spec["program_names"]]
        bpf = bpfprog.compile_program(Path(spec["source_path"]), spec["config"])
        try:
            image = from_bcc(bpf, program_names)
        finally:
            bpf.cleanup()
        store(spec["key"], image, Path(spec["cache_dir"]))
        reply = {"image": image.to_bytes().decode()}
    except GotraceError as exc:
        reply = {"error": type(exc).__name__, "message": str(exc)}
    reply["peak_rss_kb"] = _own_peak_rss_kb()
    answer.write(json.dumps(reply))
    answer.close()


def _own_peak_rss_kb() -> int | None:
    """This process's VmHWM (its own peak, unlike ru_maxrss, which can carry its parent's from before exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


# -- an image in the kernel -----------------------------------------------


def _refused(exc: OSError, what: str) -> CapabilityError:
    if exc.errno in (errno.EPERM, errno.EACCES) and what == "map":
        return CapabilityError(f"the kernel refused to create a BPF map ({os.strerror(exc.errno)}): run as root (sudo)")
    return CapabilityError(f"the kernel refused the BPF {what} ({exc.strerror}): gotrace needs Linux 5.15+ with BPF")


class LoadedImage:
    """An image's maps, created, and its programs, loaded on demand; close() frees them. Safe to close twice."""

    def __init__(self, image: ProgramImage, sys: Syscalls) -> None:
        self.image = image
        self._sys = sys
        self._map_fds: list[int] = []
        self._prog_fds: dict[str, int] = {}
        try:
            for spec in image.maps:
                try:
                    fd = sys.map_create(spec.map_type, spec.key_size, spec.value_size, spec.max_entries, spec.flags,
                                        spec.name.encode())
                except OSError as exc:
                    raise _refused(exc, "map") from None
                self._map_fds.append(fd)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> LoadedImage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def map_fd(self, name: str) -> int:
        """The fd of the map called name (KeyError if the programs reference no such map)."""
        for spec, fd in zip(self.image.maps, self._map_fds):
            if spec.name == name:
                return fd
        raise KeyError(name)

    def load_program(self, name: bytes, expected_attach_type: int) -> int:
        """A gotrace.bpf.uprobes ProgramLoader: loads program name as kprobe-type, replacing an earlier load of it.

        expected_attach_type < 0 (uprobes.NO_EXPECTED_ATTACH_TYPE) loads it for perf-event links.
        """
        stale = self._prog_fds.pop(name.decode(), None)
        if stale is not None:
            os.close(stale)
        insns = _with_map_imms(self.image.programs[name.decode()], self._map_fds.__getitem__)
        try:
            fd = self._sys.prog_load(BPF_PROG_TYPE_KPROBE, insns, self.image.license.encode(), name,
                                     max(expected_attach_type, 0))
        except OSError as exc:
            raise _refused(exc, "program") from None
        self._prog_fds[name.decode()] = fd
        return fd

    def close(self) -> None:
        fds = list(self._prog_fds.values()) + self._map_fds
        self._prog_fds, self._map_fds = {}, []
        for fd in fds:
            with contextlib.suppress(OSError):
                os.close(fd)
