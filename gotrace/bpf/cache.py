"""Finds the compiled BPF programs a tracer loads: the object shipped in the package for this architecture, else one compiled here with clang and kept across runs.

In order:

1. the shipped object, <probes>/<program>.<arch>.o, built with the package
   (setup.py) and read with gotrace.bpf.elfobj: no compiler, no kernel
   headers, no child process;
2. an entry in CACHE_DIR under a key that hashes the probes' sources, the
   architecture, the compiler flags and the clang that compiled it (the
   ProgramImage format, checksummed: an entry that is missing, damaged or of
   another format is a miss, never an error);
3. a compile with clang (gotrace.bpf.compiler) into a temporary file, read
   back, and stored under that key (atomically: temporary file, then rename;
   an unwritable cache directory only means compiling again next time).

Steps 2 and 3 are the fallback: in a checkout (no objects), for a package
built without clang, and when the kernel's verifier refuses the shipped
object (use_shipped=False: a local clang may emit code this kernel's
verifier accepts). The fallback needs clang, never kernel headers; the
compiler is clang's own short-lived process, so its memory never stays.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gotrace import header
from gotrace.bpf import compiler, elfobj
from gotrace.bpf.image import FORMAT_VERSION, ProgramImage
from gotrace.errors import CapabilityError

DEFAULT_CACHE_DIR = Path("/var/cache/gotrace/bpf")
CACHE_DIR_ENV = "GOTRACE_BPF_CACHE"
# Where compiled programs are kept: GOTRACE_BPF_CACHE when set (read once, at import), else the default.
CACHE_DIR = Path(os.environ.get(CACHE_DIR_ENV) or DEFAULT_CACHE_DIR)


@dataclass(frozen=True)
class Found:
    """The programs found or made, and where they came from."""

    image: ProgramImage
    origin: str  # "shipped" (the package's object), "cached" or "compiled" (here, with clang)
    path: Path  # the object file or the cache entry
    compiler_peak_rss_kb: int | None  # clang's peak RSS when it compiled just now; None otherwise


def shipped_object(program: str, arch: str, probes_dir: Path | None = None) -> Path:
    """Where the package keeps program's object for arch (which a checkout does not have)."""
    return (probes_dir or header.PROBES_DIR) / compiler.object_name(program, arch)


def source_path(program: str, probes_dir: Path | None = None) -> Path:
    return (probes_dir or header.PROBES_DIR) / compiler.source_name(program)


def find_program(program: str, arch: str, *, use_shipped: bool = True, probes_dir: Path | None = None,
                 cache_dir: Path | None = None) -> Found:
    """program's image for arch: shipped, else cached, else compiled with clang (CapabilityError when impossible)."""
    probes_dir = probes_dir or header.PROBES_DIR
    arch = compiler.validated_arch(arch)
    shipped = shipped_object(program, arch, probes_dir)
    if use_shipped:
        try:
            return Found(elfobj.read_object_file(shipped), "shipped", shipped, None)
        except (OSError, ValueError):
            pass  # not shipped (a checkout), or damaged: compile it here
    clang = compiler.find_clang()
    if clang is None:
        if use_shipped:
            raise CapabilityError(f"gotrace has no compiled BPF program {shipped.name} for {arch} ({probes_dir}) and "
                                  "no clang to compile it: install gotrace from a wheel (which has it), or "
                                  "apt-get install clang")
        raise CapabilityError("no clang to compile the BPF programs for this kernel: apt-get install clang")
    directory = cache_dir or CACHE_DIR
    key = cache_key(program, arch, clang, probes_dir)
    image = load(key, directory)
    if image is not None:
        return Found(image, "cached", directory / key, None)
    image, peak_rss_kb = compile_image(program, arch, clang, probes_dir)
    store(key, image, directory)
    return Found(image, "compiled", directory / key, peak_rss_kb)


def compile_image(program: str, arch: str, clang: str, probes_dir: Path) -> tuple[ProgramImage, int]:
    """(image, clang's peak RSS in kB) of program compiled for arch now."""
    with tempfile.TemporaryDirectory(prefix="gotrace-bpf-") as work:
        output = Path(work) / compiler.object_name(program, arch)
        result = compiler.compile_program(program, probes_dir, arch, output, clang)
        try:
            image = elfobj.read_object_file(output)
        except ValueError as exc:
            raise CapabilityError(f"{clang} made a BPF object gotrace cannot load ({exc}): use clang 14 or newer, "
                                  f"or set {compiler.CLANG_ENV}") from None
    return image, result.peak_rss_kb


def cache_key(program: str, arch: str, clang: str, probes_dir: Path) -> str:
    """The key of program compiled for arch by clang from the sources in probes_dir."""
    digest = hashlib.sha256(f"gotrace-bpf-cache {FORMAT_VERSION} {program} {arch}\n".encode())
    flags = compiler.clang_command('clang', Path('x.c'), arch, Path('x.o'), compiler.BUILDS[program][1])
    digest.update(f"flags {' '.join(flags)}\n".encode())
    digest.update(f"clang {_identity(Path(clang))}\n".encode())
    for path in sorted(probes_dir.glob("*.[ch]")):
        data = path.read_bytes()
        digest.update(f"source {path.name} {len(data)}\n".encode() + data)
    return digest.hexdigest()


def _identity(path: Path) -> str:
    """A file and its modification time and size (what changes when it is replaced or upgraded)."""
    try:
        real = os.path.realpath(path)
        stat = os.stat(real)
        return f"{real} {stat.st_mtime_ns} {stat.st_size}"
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
