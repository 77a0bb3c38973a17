"""The measurement floor: what an empty Go function measures on this host, measured once and cached.

Every latency gotrace reports includes part of its own probes' cost: the
time from the entry probe's clock read to the return probe's, spent leaving
one trap and entering the other. A function that does nothing shows exactly
that. This module builds a tiny Go program whose `main.empty` does one
addition (a truly empty function is a lone `ret`, where the entry and the
return probe would share one instruction), runs it under the real latency
program for FLOOR_CALLS calls, and takes the median. The figure is cached
per kernel release, architecture and gotrace version in
$GOTRACE_CACHE/floor (default /var/cache/gotrace/floor); `gotrace floor`
measures it again.

Building needs a Go toolchain (`go` on PATH, or Debian's /usr/lib/go); on
a host without one the floor is unknown, and reports say so and why.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from gotrace import __version__
from gotrace.binary.gobinary import GoBinary
from gotrace.bpf import kernel
from gotrace.errors import GotraceError
from gotrace.output.histogram import LatencyHistogram
from gotrace.trace.latency import LatencyTracer
from gotrace.trace.session import Target, attached
from gotrace.trace.tracer import traced_functions

FLOOR_FUNCTION = "main.empty"
FLOOR_CALLS = 5000
BUILD_TIMEOUT_S = 300
RUN_TIMEOUT_S = 120
FORMAT = 1

FLOOR_PROGRAM = """\
// The floor program of gotrace: calls main.empty os.Args[1] times.
package main

import (
\t"os"
\t"strconv"
)

var sink uint64

//go:noinline
func empty(x uint64) uint64 { return x + 1 }

func main() {
\tn, _ := strconv.Atoi(os.Args[1])
\tx := uint64(0)
\tfor i := 0; i < n; i++ {
\t\tx = empty(x)
\t}
\tsink = x
}
"""
GO_MOD = "module gotracefloor\n\ngo 1.17\n"


@dataclass(frozen=True)
class Floor:
    """What an empty function measures here (ns), or why that is unknown."""

    ns: int | None
    reason: str | None = None  # when ns is None
    measured_now: bool = False  # measured by this run (not read from the cache)
    calls: int = 0


def cache_dir() -> Path:
    return Path(os.environ.get("GOTRACE_CACHE", "/var/cache/gotrace")) / "floor"


def cache_path() -> Path:
    """The cache file of this kernel release, architecture and gotrace version."""
    release = os.uname().release
    return cache_dir() / f"floor-{release}-{os.uname().machine}-gotrace{__version__}.json"


def cached_floor() -> Floor | None:
    try:
        doc = json.loads(cache_path().read_text())
        if doc.get("format") == FORMAT and isinstance(doc.get("floor_ns"), int) and doc["floor_ns"] > 0:
            return Floor(doc["floor_ns"], calls=int(doc.get("calls", 0)))
    except (OSError, ValueError, AttributeError):
        pass
    return None


def find_go() -> str | None:
    for candidate in (shutil.which("go"), "/usr/lib/go/bin/go", "/usr/local/go/bin/go"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


def build_floor_program(work: Path) -> Path:
    """The floor program built in `work`; GotraceError when there is no toolchain or the build fails."""
    go = find_go()
    if go is None:
        raise GotraceError("no Go toolchain to build the measuring program (install golang-go, then run gotrace floor)")
    (work / "main.go").write_text(FLOOR_PROGRAM)
    (work / "go.mod").write_text(GO_MOD)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GO", "CGO_"))}
    env.update(GOTOOLCHAIN="local", GOPROXY="off", GOFLAGS="-mod=mod", CGO_ENABLED="0",
               GOCACHE=str(cache_dir() / "gocache"), GOPATH=str(cache_dir() / "gopath"))
    out = work / "floorprog"
    try:
        proc = subprocess.run([go, "build", "-o", str(out), "."], cwd=work, env=env, capture_output=True, text=True,
                              timeout=BUILD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise GotraceError(f"building the measuring program failed: {e}") from None
    if proc.returncode != 0 or not out.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise GotraceError(f"building the measuring program with {go} failed: {last}")
    return out


def measure_floor_ns(binary: Path, calls: int = FLOOR_CALLS) -> int:
    """The median latency of main.empty over `calls` calls of the floor program, traced by the latency program."""
    with GoBinary.open(binary) as gobin:
        (fn,) = gobin.match([FLOOR_FUNCTION])
        functions = traced_functions(gobin, [gobin.probe_sites(fn)])
        target = Target(str(binary), str(binary), command=[str(binary), str(calls)])
        with attached(target, lambda: LatencyTracer(gobin, functions, pid=target.pid)) as (tracer, stop):
            deadline = time.monotonic() + RUN_TIMEOUT_S
            while target.alive() and not stop and time.monotonic() < deadline:
                time.sleep(0.02)
            counts = tracer.read(reset=False)[0]
    histogram = LatencyHistogram(dict(counts.buckets))
    if target.exit_status != 0 or histogram.count() < calls:
        raise GotraceError(f"the measuring program saw {histogram.count()} of {calls} calls "
                           f"(exit status {target.exit_status})")
    return histogram.percentiles((50.0,))[50.0]


def store(floor_ns: int, calls: int) -> None:
    """Write the cache file atomically; a cache directory that cannot be written is not an error."""
    path = cache_path()
    doc = {"format": FORMAT, "floor_ns": floor_ns, "calls": calls, "function": FLOOR_FUNCTION,
           "kernel": os.uname().release, "gotrace": __version__,
           "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=".floor.", dir=path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        os.replace(temp, path)
    except OSError:
        pass


def host_floor(*, measure: bool = True, again: bool = False) -> Floor:
    """This host's floor: the cached figure, else (with `measure`) measured now and cached. Never raises for a
    floor that cannot be measured: the Floor says why."""
    if not again:
        found = cached_floor()
        if found is not None:
            return found
    if not measure:
        return Floor(None, "not measured yet on this host (gotrace floor measures it)")
    kernel.check_can_trace()  # a host that cannot trace says so once, as the trace itself would
    try:
        with tempfile.TemporaryDirectory(prefix="gotrace-floor-") as work:
            binary = build_floor_program(Path(work))
            floor_ns = measure_floor_ns(binary)
    except GotraceError as e:
        if e.exit_code == 3:  # cannot trace at all: the caller's own attach says so
            raise
        return Floor(None, str(e))
    store(floor_ns, FLOOR_CALLS)
    return Floor(floor_ns, measured_now=True, calls=FLOOR_CALLS)
