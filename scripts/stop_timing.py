"""How long gotrace takes to stop: SIGINT to the final report, to gotrace's exit, and until its probes are gone.

Starts testdata/service (-forever, busy; or --idle: -wait), attaches `gotrace latency -p PID
PATTERN...` to it at the open-file limit this shell has (a production shell's
default is 1024), lets it trace for --trace-s seconds, sends SIGINT and
times what follows. "Probes gone" is read from the service's memory: every
probed instruction holds an int3 (0xcc) while a uprobe is registered on it.

Usage (root): .venv/bin/python scripts/stop_timing.py [--trace-s S] 'runtime.*'
In a VM:      scripts/vmtest 6.1 -- .venv/bin/python scripts/stop_timing.py 'runtime.*'
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from gotrace.binary.gobinary import GoBinary  # noqa: E402

GO_VERSION = "1.23.9"


def probed_vaddrs(binary: Path, patterns: list[str]) -> list[int]:
    vaddrs = []
    with GoBinary(binary) as gobin:
        for fn in gobin.match(patterns):
            probes = gobin.probe_sites(fn)
            if probes.traceable:
                vaddrs += [probes.sites.entry_vaddr, *probes.sites.return_vaddrs]
    return vaddrs


def int3_count(pid: int, vaddrs: list[int]) -> int:
    n = 0
    with open(f"/proc/{pid}/mem", "rb") as mem:
        for vaddr in vaddrs:
            mem.seek(vaddr)
            n += mem.read(1) == b"\xcc"
    return n


class Lines:
    """Collects a stream's lines with their arrival time, from a thread."""

    def __init__(self, stream) -> None:
        self.lines: list[tuple[float, str]] = []
        self.eof_at: float | None = None
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream) -> None:
        for line in stream:
            self.lines.append((time.monotonic(), line))
        self.eof_at = time.monotonic()

    def wait_for(self, text: str, timeout_s: float) -> float | None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for stamp, line in self.lines:
                if text in line:
                    return stamp
            if self.eof_at is not None:
                return None
            time.sleep(0.05)
        return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("patterns", nargs="+")
    parser.add_argument("--trace-s", type=float, default=5.0)
    parser.add_argument("--idle", action="store_true",
                        help="trace the service while it waits idle (-wait): gotrace's own costs, not the probes' hits")
    args = parser.parse_args(argv)

    from support import gobuild

    binary = gobuild.build("service", GO_VERSION, "default")
    vaddrs = probed_vaddrs(binary, args.patterns)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    out: dict = {"kernel": os.uname().release, "accel": os.environ.get("VMTEST_ACCEL", "host"),
                 "nofile_soft": soft, "nofile_hard": hard, "sites": len(vaddrs)}
    out["target"] = "idle" if args.idle else "busy"
    service = subprocess.Popen([str(binary), "-wait" if args.idle else "-forever"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        started = time.monotonic()
        gotrace = subprocess.Popen([sys.executable, "-m", "gotrace", "latency", "-p", str(service.pid), *args.patterns],
                                   cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        stdout, stderr = Lines(gotrace.stdout), Lines(gotrace.stderr)
        attached_at = stderr.wait_for("Tracing ", 1800)
        if attached_at is None:
            gotrace.wait()
            out["error"] = "".join(line for _, line in stderr.lines).strip()
            out["exit"] = gotrace.returncode
            print(json.dumps(out))
            return 1
        out["attach_s"] = attached_at - started
        out["int3_while_attached"] = int3_count(service.pid, vaddrs)
        time.sleep(args.trace_s)
        n_before = len(stdout.lines)
        sigint_at = time.monotonic()
        gotrace.send_signal(signal.SIGINT)
        code = gotrace.wait(1800)
        exited_at = time.monotonic()
        while stdout.eof_at is None and time.monotonic() - exited_at < 30:
            time.sleep(0.01)
        report = stdout.lines[n_before:]
        out["exit"] = code
        out["report_lines"] = len(report)
        out["sigint_to_report_s"] = report[0][0] - sigint_at if report else None
        out["sigint_to_report_end_s"] = report[-1][0] - sigint_at if report else None
        out["sigint_to_exit_s"] = exited_at - sigint_at
        out["stderr"] = [line.strip() for _, line in stderr.lines if not line.startswith("Tracing ")][-3:]
        out["int3_at_exit"] = int3_count(service.pid, vaddrs)
        while int3_count(service.pid, vaddrs) and time.monotonic() - sigint_at < 3600:
            time.sleep(0.1)
        out["sigint_to_probes_gone_s"] = time.monotonic() - sigint_at
        out["service_alive"] = service.poll() is None
    finally:
        service.kill()
        service.wait()
    print(json.dumps(out))
    return 0 if out.get("exit") == 0 and out.get("service_alive") else 1


if __name__ == "__main__":
    sys.exit(main())
